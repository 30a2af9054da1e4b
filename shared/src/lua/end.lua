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
-- A lease that ran out is the sweep's to record, except for an admin's force-end: that also
-- closes a lease still inside its resurrect window, so nothing the admin ended comes back.
if e <= now and ARGV[4] ~= 'force_ended' then
  return {'over', 'expired'}
end
end_session(prefix, sid, r, ARGV[4], now, math.min(e, now), tonumber(ARGV[5]))
return {'ended', now, r[H]}
