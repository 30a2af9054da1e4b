-- Every lease of a slot with its record, for reconciliation and the admin views.
-- KEYS: leases, cfg, sessions. ARGV: prefix.
-- Reply: cfg exists (0/1), now ms, limit, then per lease: sid, expiry ms, user, created ms,
-- last heartbeat ms, device ('' where the record is gone, or no device), provisional (0/1).
local out = {redis.call('EXISTS', KEYS[2]), now_ms(), tonumber(redis.call('HGET', KEYS[2], 'limit') or '0')}
local all = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
for i = 1, #all, 2 do
  local r = get_live(ARGV[1], all[i]) or {}
  out[#out + 1] = all[i]
  out[#out + 1] = tonumber(all[i + 1])
  out[#out + 1] = r[U] or ''
  out[#out + 1] = r[C] or ''
  out[#out + 1] = r[H] or ''
  out[#out + 1] = r[D] or ''
  out[#out + 1] = redis.call('ZSCORE', ARGV[1] .. 'prov', all[i]) and 1 or 0
end
return out
