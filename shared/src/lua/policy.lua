-- Applies a changed feature policy to a live slot (a slot without cfg waits for its rebuild).
-- KEYS: cfg. ARGV: limit, per_user, ttl ms, hb s, res ms
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
redis.call('HSET', KEYS[1], 'limit', ARGV[1], 'per_user', ARGV[2], 'ttl', ARGV[3], 'hb', ARGV[4], 'res', ARGV[5])
return 1
