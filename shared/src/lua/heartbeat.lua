-- Renews a lease; revives one that ran out less than the resurrect window ago if a seat is free.
-- KEYS: leases, cfg, sessions. ARGV: prefix, sid, token hash
local leases, cfg, prefix, sid = KEYS[1], KEYS[2], ARGV[1], ARGV[2]
local r, over = find_session(prefix, cfg, sid, ARGV[3])
if not r then
  return over
end
if over then
  return {'gone', r[REASON]}
end
local c = redis.call('HMGET', cfg, 'ttl', 'hb', 'res', 'limit', 'per_user')
if not c[1] then
  return {'rebuild'}
end
local now = now_ms()
local e, ttl, res = tonumber(redis.call('ZSCORE', leases, sid) or 0), tonumber(c[1]), tonumber(c[3])
local resurrected = 0
if e <= now then
  if now - e >= res then
    return {'gone', 'expired'}
  end
  local live = redis.call('ZRANGEBYSCORE', leases, '(' .. s(now), '+inf', 'WITHSCORES')
  if #live / 2 >= tonumber(c[4]) then
    return {'gone', 'expired'}
  end
  local per_user = tonumber(c[5])
  if per_user > 0 and user_live(prefix, live, r[U], false) >= per_user then
    return {'gone', 'expired'}
  end
  resurrected = 1
end
local exp = now + ttl
r[H] = now
put_live(prefix, sid, r)
redis.call('ZADD', leases, s(exp), sid)
return {'ok', exp, tonumber(c[2]), resurrected}
