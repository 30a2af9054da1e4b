-- Ends due leases (reason `expired`, their ends to the outbox); a lease renewed meanwhile is kept.
-- Idempotent: a second sweep (or a concurrent one) finds nothing left to do.
-- KEYS: leases, cfg, sessions. ARGV: prefix, retention ms, then session ids.
local res = tonumber(redis.call('HGET', KEYS[2], 'res') or '0')
local now = now_ms()
local n = 0
for i = 3, #ARGV do
  local score = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if score and tonumber(score) <= now - res then
    local r = get_live(ARGV[1], ARGV[i])
    if r then
      end_session(ARGV[1], ARGV[i], r, 'expired', tonumber(score), tonumber(score), tonumber(ARGV[2]))
    else
      redis.call('ZREM', KEYS[1], ARGV[i])
      redis.call('ZREM', ARGV[1] .. 'prov', ARGV[i])
    end
    n = n + 1
  end
end
if n > 0 then
  trim_gone(ARGV[1], tonumber(ARGV[2]))
end
return n
