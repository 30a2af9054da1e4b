-- The feature was removed from its license: ends up to `batch` of the slot's sessions (reason
-- `revoked`) and marks the slot so that every later call on it learns so; once none is left, drops
-- the slot's keys (the records of ended sessions stay for late calls).
-- KEYS: leases, cfg, sessions. ARGV: prefix, retention ms, batch.
-- Reply: flat (sid, last heartbeat ms) pairs of the sessions it ended; empty when done.
local leases, cfg, prefix = KEYS[1], KEYS[2], ARGV[1]
redis.call('HSET', cfg, 'revoked', '1')
local now = now_ms()
local batch = redis.call('ZRANGE', leases, 0, tonumber(ARGV[3]) - 1, 'WITHSCORES')
local out = {}
for i = 1, #batch, 2 do
  local r = get_live(prefix, batch[i])
  if r then
    end_session(prefix, batch[i], r, 'revoked', now, tonumber(batch[i + 1]), tonumber(ARGV[2]))
    out[#out + 1] = batch[i]
    out[#out + 1] = r[H]
  else
    redis.call('ZREM', leases, batch[i])
  end
end
if #out > 0 then
  trim_gone(prefix, tonumber(ARGV[2]))
end
if #batch == 0 then
  redis.call('DEL', cfg, leases, KEYS[3], prefix .. 'prov', prefix .. 'u')
end
return out
