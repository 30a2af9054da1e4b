-- Every lease of a slot with its record, for reconciliation and the admin debug view.
-- KEYS: leases, cfg, sessions. ARGV: prefix.
-- Reply: cfg exists (0/1), now ms, then per lease: sid, expiry ms, user, created ms, last heartbeat ms
-- ('' where the record is gone).
local out = {redis.call('EXISTS', KEYS[2]), now_ms()}
local all = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
for i = 1, #all, 2 do
  local r = get_live(ARGV[1], all[i]) or {}
  out[#out + 1] = all[i]
  out[#out + 1] = tonumber(all[i + 1])
  out[#out + 1] = r[U] or ''
  out[#out + 1] = r[C] or ''
  out[#out + 1] = r[H] or ''
end
return out
