-- Shared prelude of every seat store script (prepended by seats.rs).
-- Every decision is taken here, on the Redis server's clock. All keys of one (license, feature)
-- share the hash tag in their prefix, so each script runs on one Redis Cluster slot.
--
-- Keys below the prefix `sk:{license/feature}:`:
--   leases   sorted set: session id -> lease expiry (ms). Live = score > now. Leases that ran out
--            stay until the sweep records them in the ledger, so the set is also the index of
--            what is due; nothing counts them.
--   cfg      hash: the feature policy (limit, per_user, ttl, hb, res). Its absence means this slot
--            lost its data (or never had any): every script then asks for a rebuild from the ledger.
--   s:<id>   hash: one session (u user, d device, th token hash, c created, h last heartbeat,
--            e expiry, st 'a' for active or the end reason, x end time).
--   i:<key>  string: an idempotency key -> "session id \n token \n user", for one lease length.

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Integers as strings without exponent notation.
local function s(n)
  return string.format('%d', n)
end

-- Ends a live session: frees its seat at once and keeps its record to answer late calls.
local function end_session(leases, rec, sid, reason, now, retention)
  redis.call('HSET', rec, 'st', reason, 'x', s(now))
  redis.call('ZREM', leases, sid)
  redis.call('PEXPIREAT', rec, s(now + retention))
end

-- Live sessions of `user` (flat id/score list from ZRANGEBYSCORE WITHSCORES), not counting `except`:
-- how many, and the soonest expiry among them.
local function user_live(prefix, live, user, except)
  local n, soonest = 0, nil
  for i = 1, #live, 2 do
    if live[i] ~= except and redis.call('HGET', prefix .. 's:' .. live[i], 'u') == user then
      n = n + 1
      if not soonest then soonest = tonumber(live[i + 1]) end
    end
  end
  return n, soonest
end

-- Reads a session's record: 'th' first, then the fields asked for. Returns them, or nil and the
-- reply to give: 'rebuild' when the slot lost its data, 'unknown' when the record is gone or the
-- token hash does not match ('' skips the token check, for admins).
local function load_session(cfg, rec, token_hash, ...)
  local r = redis.call('HMGET', rec, 'th', ...)
  if not r[1] then
    if redis.call('EXISTS', cfg) == 0 then
      return nil, {'rebuild'}
    end
    return nil, {'unknown'}
  end
  if token_hash ~= '' and r[1] ~= token_hash then
    return nil, {'unknown'}
  end
  return r
end
