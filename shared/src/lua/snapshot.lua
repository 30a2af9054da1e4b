-- Every lease of a slot with its record, for reconciliation and the admin debug view.
-- KEYS: leases, cfg. ARGV: prefix.
-- Reply: cfg exists (0/1), now ms, then per lease: sid, expiry ms, user, created ms, last heartbeat ms
-- ('' where the record is gone).
local out = {redis.call('EXISTS', KEYS[2]), now_ms()}
local all = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
for i = 1, #all, 2 do
  local r = redis.call('HMGET', ARGV[1] .. 's:' .. all[i], 'u', 'c', 'h')
  out[#out + 1] = all[i]
  out[#out + 1] = tonumber(all[i + 1])
  out[#out + 1] = r[1] or ''
  out[#out + 1] = r[2] or ''
  out[#out + 1] = r[3] or ''
end
return out
