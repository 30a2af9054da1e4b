-- Restores a slot that lost its data from the ledger's live sessions. Each restored session counts
-- as live for one more lease length, so a rebuild never admits beyond what the ledger holds live.
-- Sent in chunks; the last one (final = 1) writes cfg, which reopens the slot. Once cfg exists,
-- the slot is live again and later chunks of a concurrent rebuild change nothing.
-- KEYS: leases, cfg, sessions. ARGV: prefix, final, limit, per_user, ttl ms, hb s, res ms,
--       then per session: sid, user, device, token hash, created ms, last heartbeat ms
local leases, cfg, sessions, prefix = KEYS[1], KEYS[2], KEYS[3], ARGV[1]
if redis.call('EXISTS', cfg) == 1 then
  return 0
end
local exp = now_ms() + tonumber(ARGV[5])
local n = 0
for i = 8, #ARGV, 6 do
  if redis.call('HEXISTS', sessions, ARGV[i]) == 0 then
    put_live(prefix, ARGV[i], {ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], tonumber(ARGV[i + 4]), tonumber(ARGV[i + 5])})
    redis.call('ZADD', leases, s(exp), ARGV[i])
    n = n + 1
  end
end
if ARGV[2] == '1' then
  redis.call('HSET', cfg, 'limit', ARGV[3], 'per_user', ARGV[4], 'ttl', ARGV[5], 'hb', ARGV[6], 'res', ARGV[7])
end
return n
