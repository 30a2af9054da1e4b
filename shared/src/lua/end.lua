-- Ends a live session (logout, force-cleanup). A lease that already ran out is left to the sweep.
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
if tonumber(r[3]) <= now then
  return {'over', 'expired'}
end
end_session(leases, rec, ARGV[1], ARGV[3], now, tonumber(ARGV[4]))
return {'ended', now, tonumber(r[4])}
