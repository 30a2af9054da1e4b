-- Marks due leases expired once the ledger has recorded them; a lease renewed meanwhile is kept.
-- Idempotent: a second sweep (or a concurrent one) finds nothing left to do.
-- KEYS: leases, cfg. ARGV: prefix, retention ms, then session ids.
local res = tonumber(redis.call('HGET', KEYS[2], 'res') or '0')
local now = now_ms()
local n = 0
for i = 3, #ARGV do
  local score = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if score and tonumber(score) <= now - res then
    redis.call('ZREM', KEYS[1], ARGV[i])
    local rec = ARGV[1] .. 's:' .. ARGV[i]
    if redis.call('HGET', rec, 'st') == 'a' then
      redis.call('HSET', rec, 'st', 'expired', 'x', score)
      redis.call('PEXPIREAT', rec, s(now + tonumber(ARGV[2])))
    end
    n = n + 1
  end
end
return n
