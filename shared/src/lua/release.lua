-- Takes back a seat whose create could not be recorded in the ledger, as if it never was, and
-- brings back the sessions that create evicted or replaced, as they were. Also removes a seat the
-- ledger does not explain (an orphan).
-- KEYS: leases, sessions, idempotency key (or placeholder). ARGV: prefix, sid, create time ms
-- (0: none), then the ids of the sessions the create ended. Reply: how many sessions came back,
-- or -1 when a replay has answered for the session (nothing was changed).
local leases, sessions, prefix, sid = KEYS[1], KEYS[2], ARGV[1], ARGV[2]
-- A replay of this create has answered for the session (confirm.lua): the seat stands.
if redis.call('EXISTS', prefix .. 'kept:' .. sid) == 1 then
  return -1
end
local r = get_live(prefix, sid)
redis.call('ZREM', leases, sid)
redis.call('ZREM', prefix .. 'prov', sid)
redis.call('HDEL', sessions, sid)
if r then
  user_del(prefix, r[U], sid)
end
local v = redis.call('GET', KEYS[3])
if v and string.sub(v, 1, #sid) == sid then
  redis.call('DEL', KEYS[3])
end
local restored = 0
for i = 4, #ARGV do
  local x = redis.call('GET', prefix .. 'x:' .. ARGV[i])
  if x then
    local xr = cmsgpack.unpack(x)
    if xr[ENDED] == tonumber(ARGV[3]) and (xr[REASON] == 'evicted' or xr[REASON] == 'replaced')
        and redis.call('HEXISTS', sessions, ARGV[i]) == 0 then
      put_live(prefix, ARGV[i], xr)
      redis.call('ZADD', leases, s(xr[EXPIRY]), ARGV[i])
      user_add(prefix, xr[U], ARGV[i])
      redis.call('DEL', prefix .. 'x:' .. ARGV[i])
      restored = restored + 1
    end
  end
end
return restored
