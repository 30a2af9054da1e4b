-- What the store remembers of one session, for repairs: status ('a' while it holds a lease entry,
-- else the end reason), end ms, last heartbeat ms; or {'unknown'} (no trace of it), or
-- {'rebuild'} (the slot lost its data: nothing is conclusive).
-- KEYS: cfg, sessions. ARGV: prefix, sid.
local r, over = find_session(ARGV[1], KEYS[1], ARGV[2], '')
if not r then
  return over
end
if over then
  return {r[REASON], r[ENDED], r[H]}
end
return {'a', '', r[H]}
