-- Shared prelude of every seat store script (prepended by seats.rs).
-- Every decision is taken here, on the Redis server's clock. All keys of one (license, feature)
-- share the hash tag in their prefix, so each script runs on one Redis Cluster slot.
--
-- Keys below the prefix `sk:{license/feature}:`:
--   leases    sorted set: session id -> lease expiry (ms). Live = score > now. Leases that ran out
--             stay until the sweep records them in the ledger, so the set is also the index of
--             what is due; nothing counts them.
--   sessions  hash: session id -> msgpack [user, device, token hash (16 bytes), created ms,
--             last heartbeat ms], for every session with a lease entry. One field per session, no
--             key of its own: small slots stay in Redis's compact encodings.
--   x:<id>    string: msgpack [user, device, token hash, created, last heartbeat, reason, ended ms,
--             expiry ms] of a session that is over, kept `retention` ms so late calls learn why
--             and the sweep can copy an end the ledger missed.
--   cfg       hash: the feature policy (limit, per_user, ttl, hb, res). Its absence means this slot
--             lost its data (or never had any): every script then asks for a rebuild from the ledger.
--   i:<key>   string: an idempotency key -> "session id \n token \n user", for one lease length.

local U, D, TH, C, H, REASON, ENDED, EXPIRY = 1, 2, 3, 4, 5, 6, 7, 8

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Integers as strings without exponent notation.
local function s(n)
  return string.format('%d', n)
end

-- The record of a session that holds a lease entry, or nil.
local function get_live(prefix, sid)
  local v = redis.call('HGET', prefix .. 'sessions', sid)
  if v then
    return cmsgpack.unpack(v)
  end
  return nil
end

local function put_live(prefix, sid, r)
  redis.call('HSET', prefix .. 'sessions', sid, cmsgpack.pack({r[U], r[D], r[TH], r[C], r[H]}))
end

-- Ends a session: frees its seat at once and keeps its record, with the reason, for `retention`.
local function end_session(prefix, sid, r, reason, at, expiry, retention)
  redis.call('ZREM', prefix .. 'leases', sid)
  redis.call('HDEL', prefix .. 'sessions', sid)
  redis.call('SET', prefix .. 'x:' .. sid, cmsgpack.pack({r[U], r[D], r[TH], r[C], r[H], reason, at, expiry}),
    'PX', s(retention))
end

-- Finds a session by id. Returns its record and whether it is over, or nil and the reply to give:
-- 'rebuild' when the slot lost its data, 'unknown' when there is no such session or the token hash
-- does not match ('' skips the token check, for admins and repairs).
local function find_session(prefix, cfg, sid, token_hash)
  local v = redis.call('HGET', prefix .. 'sessions', sid)
  local over = false
  if not v then
    v = redis.call('GET', prefix .. 'x:' .. sid)
    over = true
  end
  if not v then
    if redis.call('EXISTS', cfg) == 0 then
      return nil, {'rebuild'}
    end
    return nil, {'unknown'}
  end
  local r = cmsgpack.unpack(v)
  if token_hash ~= '' and r[TH] ~= token_hash then
    return nil, {'unknown'}
  end
  return r, over
end

-- Live sessions of `user` (flat id/score list from ZRANGEBYSCORE WITHSCORES), not counting `except`:
-- how many, and the soonest expiry among them.
local function user_live(prefix, live, user, except)
  local n, soonest = 0, nil
  for i = 1, #live, 2 do
    if live[i] ~= except then
      local r = get_live(prefix, live[i])
      if r and r[U] == user then
        n = n + 1
        if not soonest then
          soonest = tonumber(live[i + 1])
        end
      end
    end
  end
  return n, soonest
end
