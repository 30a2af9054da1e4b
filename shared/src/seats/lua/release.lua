-- Takes back a seat whose create's reply was lost (the client heard 503), as if it never was: the
-- seat, its idempotency key, and its `start` in the outbox while no writer has taken it (else an
-- end follows it, so the ledger row does not stay active). Also removes a seat the ledger does not
-- explain (an orphan). Sessions the create ended stay ended: their ends are history already.
-- KEYS: leases, sessions, idempotency key (or placeholder). ARGV: prefix, sid.
-- Reply: 1 when a seat was taken back, 0 when there was none, -1 when a replay has answered for
-- the session (nothing was changed).
local leases, sessions, prefix, sid = KEYS[1], KEYS[2], ARGV[1], ARGV[2]
-- A replay of this create has answered for the session (confirm.lua): the seat stands.
if redis.call('EXISTS', prefix .. 'kept:' .. sid) == 1 then
  return -1
end
local r = get_live(prefix, sid)
redis.call('ZREM', leases, sid)
redis.call('ZREM', prefix .. 'prov', sid)
redis.call('HDEL', sessions, sid)
local v = redis.call('GET', KEYS[3])
if v and string.sub(v, 1, #sid) == sid then
  redis.call('DEL', KEYS[3])
end
if not r then
  return 0
end
user_del(prefix, r[U], sid)
-- A create's start is among the newest entries; one found is deleted, one already drained is
-- answered by an end.
local ob = prefix .. 'ob'
local recent = redis.call('XREVRANGE', ob, '+', '-', 'COUNT', 512)
for _, entry in ipairs(recent) do
  local f = entry[2]
  if f[1] == 'k' and f[2] == 'start' and f[4] == sid then
    redis.call('XDEL', ob, entry[1])
    return 1
  end
end
outbox_end(prefix, sid, 'ended', now_ms(), r[H], r[U])
return 1
