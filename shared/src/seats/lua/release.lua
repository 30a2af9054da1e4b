-- Takes back a seat whose create could not be recorded in the ledger, as if it never was, and
-- brings back the sessions that create evicted or replaced, as they were, as far as that keeps the
-- promise: only when the create still held its seat (a later create may have evicted or replaced
-- it, and admitted itself in its place), and each only while a seat is free, its user is under the
-- per-user cap and no live session holds its device. Also removes a seat the ledger does not
-- explain (an orphan).
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
if not r then
  return 0
end
local c = redis.call('HMGET', prefix .. 'cfg', 'limit', 'per_user')
local limit, per_user = tonumber(c[1] or '0'), tonumber(c[2] or '0')
local now = now_ms()
-- Whether a live session of `user` holds `device`.
local function device_held(user, device)
  if device == '' then
    return false
  end
  for _, x in ipairs(user_sids(prefix, user)) do
    local xr = get_live(prefix, x)
    if xr and xr[D] == device and tonumber(redis.call('ZSCORE', leases, x) or '0') > now then
      return true
    end
  end
  return false
end
local restored = 0
for i = 4, #ARGV do
  local x = redis.call('GET', prefix .. 'x:' .. ARGV[i])
  if x then
    local xr = cmsgpack.unpack(x)
    if xr[ENDED] == tonumber(ARGV[3]) and (xr[REASON] == 'evicted' or xr[REASON] == 'replaced')
        and redis.call('HEXISTS', sessions, ARGV[i]) == 0
        and live_count(prefix, now, limit) < limit
        and (per_user == 0 or user_live(prefix, xr[U], now, {}) < per_user)
        and not device_held(xr[U], xr[D]) then
      put_live(prefix, ARGV[i], xr)
      redis.call('ZADD', leases, s(xr[EXPIRY]), ARGV[i])
      user_add(prefix, xr[U], ARGV[i])
      redis.call('DEL', prefix .. 'x:' .. ARGV[i])
      redis.call('ZREM', prefix .. 'gone', ARGV[i])
      restored = restored + 1
    end
  end
end
return restored
