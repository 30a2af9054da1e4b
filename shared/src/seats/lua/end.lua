-- Ends a session (logout, force-cleanup, repairs).
-- KEYS: leases, cfg, sessions. ARGV: prefix, sid, token hash ('' for an admin: no token check), reason, retention ms
local leases, cfg, prefix, sid = KEYS[1], KEYS[2], ARGV[1], ARGV[2]
local r, over = find_session(prefix, cfg, sid, ARGV[3])
if not r then
  return over
end
if over then
  return {'over', r[REASON]}
end
local now = now_ms()
local e = tonumber(redis.call('ZSCORE', leases, sid) or 0)
local res = tonumber(redis.call('HGET', cfg, 'res') or '0')
-- A lease that ran out beyond its resurrect window expired: the sweep records it. One that could
-- still be revived ends here, so a logout sticks; an admin's force-end ends it whatever its state.
if e <= now and now - e >= res and ARGV[4] ~= 'force_ended' then
  return {'over', 'expired'}
end
end_session(prefix, sid, r, ARGV[4], now, e, tonumber(ARGV[5]))
trim_gone(prefix, tonumber(ARGV[5]))
return {'ended', now, r[H]}
