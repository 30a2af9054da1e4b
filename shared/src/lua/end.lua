-- Ends a live session (logout, force-cleanup). A lease that already ran out is left to the sweep.
-- KEYS: leases, cfg, record. ARGV: sid, token hash ('' for an admin: no token check), reason, retention ms
local leases, cfg, rec = KEYS[1], KEYS[2], KEYS[3]
local r = redis.call('HMGET', rec, 'th', 'st', 'e', 'h')
if not r[1] then
  if redis.call('EXISTS', cfg) == 0 then
    return {'rebuild'}
  end
  return {'unknown'}
end
if ARGV[2] ~= '' and r[1] ~= ARGV[2] then
  return {'unknown'}
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
