-- Ends a session (logout, force-cleanup, repairs).
-- KEYS: leases, cfg, record. ARGV: sid, token hash ('' for an admin: no token check), reason, retention ms
local leases, cfg, rec = KEYS[1], KEYS[2], KEYS[3]
local r, reply = load_session(cfg, rec, ARGV[2], 'st', 'e', 'h')
if not r then
  return reply
end
if r[2] ~= 'a' then
  return {'over', r[2]}
end
local now = now_ms()
-- A lease that ran out is the sweep's to record, except for an admin's force-end: that also
-- closes a lease still inside its resurrect window, so nothing the admin ended comes back.
if tonumber(r[3]) <= now and ARGV[3] ~= 'force_ended' then
  return {'over', 'expired'}
end
end_session(leases, rec, ARGV[1], ARGV[3], now, tonumber(ARGV[4]))
return {'ended', now, tonumber(r[4])}
