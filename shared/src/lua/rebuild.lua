-- Restores a slot that lost its data from the ledger's live sessions. Each restored session counts
-- as live for one more lease length, so a rebuild never admits beyond what the ledger holds live.
-- Sent in chunks; the last one (final = 1) writes cfg, which reopens the slot. Once cfg exists,
-- the slot is live again and later chunks of a concurrent rebuild change nothing.
-- KEYS: leases, cfg. ARGV: prefix, final, limit, per_user, ttl ms, hb s, res ms, retention ms,
--       then per session: sid, user, device, token hash, created ms, last heartbeat ms
local leases, cfg, prefix = KEYS[1], KEYS[2], ARGV[1]
if redis.call('EXISTS', cfg) == 1 then
  return 0
end
local now = now_ms()
local ttl, res, retention = tonumber(ARGV[5]), tonumber(ARGV[7]), tonumber(ARGV[8])
local exp = now + ttl
local n = 0
for i = 9, #ARGV, 6 do
  local rec = prefix .. 's:' .. ARGV[i]
  if redis.call('EXISTS', rec) == 0 then
    redis.call('HSET', rec, 'u', ARGV[i + 1], 'd', ARGV[i + 2], 'th', ARGV[i + 3], 'c', ARGV[i + 4],
      'h', ARGV[i + 5], 'e', s(exp), 'st', 'a')
    redis.call('PEXPIREAT', rec, s(exp + res + retention))
    redis.call('ZADD', leases, s(exp), ARGV[i])
    n = n + 1
  end
end
if ARGV[2] == '1' then
  redis.call('HSET', cfg, 'limit', ARGV[3], 'per_user', ARGV[4], 'ttl', ARGV[5], 'hb', ARGV[6], 'res', ARGV[7])
end
return n
