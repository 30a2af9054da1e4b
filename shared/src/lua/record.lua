-- What the store remembers of one session, for repairs: status ('a' while it holds a lease entry,
-- else the end reason), end ms, last heartbeat ms; or nothing.
-- KEYS: cfg, sessions. ARGV: prefix, sid.
local r, over = find_session(ARGV[1], KEYS[1], ARGV[2], '')
if not r then
  return {}
end
if over then
  return {r[REASON], r[ENDED], r[H]}
end
return {'a', '', r[H]}
