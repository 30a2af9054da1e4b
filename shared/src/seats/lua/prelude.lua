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
--   u         hash: user -> the ids (32 characters each, concatenated) of that user's sessions with
--             a lease entry: per-user caps and device takeover read one user's sessions, never the
--             slot's, so a create costs the same at 10 live leases and at 10,000.
--   prov      sorted set: session id -> lease expiry, for sessions restored by a rebuild that have
--             not heartbeated since. They hold their seats against new creates, but only as many
--             as the limit allows are confirmed, first come first served, by their next heartbeat.
--   x:<id>    string: msgpack [user, device, token hash, created, last heartbeat, reason, ended ms,
--             lease expiry ms] of a session that is over, kept `retention` ms so late calls learn
--             why and the sweep can copy an end the ledger missed.
--   cfg       hash: the feature policy (limit, per_user, ttl, hb, res, on_limit) and its version
--             `ver` (only a newer version overwrites it); `revoked` once the feature was removed;
--             `rec` when the sweep last reconciled the slot member by member, `dirty` how many
--             ledger writes are known to have missed since (see mark.lua).
--             Its absence means this slot lost its data (or never had any): every script then asks
--             for a rebuild from the ledger.
--   rej       hash: minute (ms) -> refused creates in that minute, until the sweep moves them to
--             the ledger.
--   ob        stream: the slot's outbox, what changed its sessions, appended by the script that
--             made the change: `start` (a new session's ledger row, with the seats taken and the
--             limit then), `end` (why and when one ended) and `refused` (the first refused create
--             of a minute, for webhooks). Writers drain it into the ledger and delete only what committed, so history
--             is never lost nor blocks a seat; creates refuse (503) while it holds more than the
--             configured bound.
--   i:<key>   string: an idempotency key -> session id (32) .. sealed token secret (32 bytes) ..
--             user, for one lease length. The secret is sealed with the license key, which Redis
--             never sees: nothing in Redis can be used as a credential.

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

-- The ids of a user's sessions that hold a lease entry.
local function user_sids(prefix, user)
  local v = redis.call('HGET', prefix .. 'u', user)
  local out = {}
  if v then
    for i = 1, #v, 32 do
      out[#out + 1] = string.sub(v, i, i + 31)
    end
  end
  return out
end

local function user_add(prefix, user, sid)
  redis.call('HSET', prefix .. 'u', user, (redis.call('HGET', prefix .. 'u', user) or '') .. sid)
end

local function user_del(prefix, user, sid)
  local kept = {}
  for _, x in ipairs(user_sids(prefix, user)) do
    if x ~= sid then
      kept[#kept + 1] = x
    end
  end
  if #kept == 0 then
    redis.call('HDEL', prefix .. 'u', user)
  else
    redis.call('HSET', prefix .. 'u', user, table.concat(kept))
  end
end

-- Seats taken by `total` live leases of which `prov` are restored sessions not yet confirmed by a
-- heartbeat: those hold at most the seats the confirmed ones leave free. Which restored sessions
-- are counted is not fixed (the first to heartbeat keeps a seat), so removing one restored session
-- frees a seat only when every restored session was counted.
local function seats_taken(total, prov, limit)
  if prov == 0 then
    return total
  end
  local confirmed = total - prov
  return confirmed + math.min(prov, math.max(0, limit - confirmed))
end

-- Live leases and live restored leases of a slot at `now`.
local function live_leases(prefix, now)
  return redis.call('ZCOUNT', prefix .. 'leases', '(' .. s(now), '+inf'),
    redis.call('ZCOUNT', prefix .. 'prov', '(' .. s(now), '+inf')
end

-- Seats taken at `now`.
local function live_count(prefix, now, limit)
  local total, prov = live_leases(prefix, now)
  return seats_taken(total, prov, limit)
end

-- A user's live sessions, not counting those in the set `except`: how many, and the soonest
-- expiry among them. Reads that user's sessions only.
local function user_live(prefix, user, now, except)
  local n, soonest = 0, nil
  for _, x in ipairs(user_sids(prefix, user)) do
    if not except[x] then
      local e = tonumber(redis.call('ZSCORE', prefix .. 'leases', x) or '0')
      if e > now then
        n = n + 1
        if not soonest or e < soonest then
          soonest = e
        end
      end
    end
  end
  return n, soonest
end

-- How many records of ended sessions a slot keeps, beyond twice its limit: the newest ones, so
-- that memory follows the limit, not the traffic. A late call whose record was dropped learns why
-- from the ledger instead.
local GONE_SPARE = 64

-- Appends a session's end to the slot's outbox, for the ledger (and, for an operator's
-- force-end, with its user, for the webhook that tells of it).
local function outbox_end(prefix, sid, reason, at, last_heartbeat, user)
  if reason == 'force_ended' then
    redis.call('XADD', prefix .. 'ob', '*', 'k', 'end', 's', sid, 'r', reason, 'at', s(at), 'hb', s(last_heartbeat),
      'u', user)
  else
    redis.call('XADD', prefix .. 'ob', '*', 'k', 'end', 's', sid, 'r', reason, 'at', s(at), 'hb', s(last_heartbeat))
  end
end

-- Ends a session: frees its seat at once and keeps its record, with the reason and its lease
-- expiry, for `retention` (or until newer ends push it out: see `trim_gone`, which every script
-- that ends sessions calls once before it returns), and appends the end to the outbox.
local function end_session(prefix, sid, r, reason, at, expiry, retention)
  redis.call('ZREM', prefix .. 'leases', sid)
  redis.call('ZREM', prefix .. 'prov', sid)
  redis.call('HDEL', prefix .. 'sessions', sid)
  user_del(prefix, r[U], sid)
  redis.call('SET', prefix .. 'x:' .. sid, cmsgpack.pack({r[U], r[D], r[TH], r[C], r[H], reason, at, expiry}),
    'PX', s(retention))
  redis.call('ZADD', prefix .. 'gone', s(at), sid)
  outbox_end(prefix, sid, reason, at, r[H], r[U])
end

-- Drops the oldest records of ended sessions beyond 2 x limit + GONE_SPARE.
local function trim_gone(prefix, retention)
  local gone = prefix .. 'gone'
  local keep = 2 * tonumber(redis.call('HGET', prefix .. 'cfg', 'limit') or '0') + GONE_SPARE
  local over = redis.call('ZCARD', gone) - keep
  if over > 0 then
    local popped = redis.call('ZPOPMIN', gone, over)
    for i = 1, #popped, 2 do
      redis.call('DEL', prefix .. 'x:' .. popped[i])
    end
  end
  redis.call('PEXPIRE', gone, s(retention))
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

-- Writes a policy into cfg unless cfg already holds a newer one (a create that read the license
-- before a PUT must not write the old policy back). Returns the policy in force, or, with
-- `stale_if_older` and a newer one in cfg, `{stale = true}` and changes nothing.
-- `p`: limit, per_user, ttl ms, hb s, res ms, on_limit, version (strings).
local function apply_policy(cfg, p, stale_if_older)
  local ver = redis.call('HGET', cfg, 'ver')
  if stale_if_older and ver and tonumber(ver) > tonumber(p[7]) then
    return {stale = true}
  end
  if not ver or tonumber(ver) < tonumber(p[7]) then
    redis.call('HSET', cfg, 'limit', p[1], 'per_user', p[2], 'ttl', p[3], 'hb', p[4], 'res', p[5],
      'on_limit', p[6], 'ver', p[7])
  end
  local c = redis.call('HMGET', cfg, 'limit', 'per_user', 'ttl', 'hb', 'res', 'on_limit', 'revoked')
  return {limit = tonumber(c[1]), per_user = tonumber(c[2]), ttl = tonumber(c[3]), hb = tonumber(c[4]),
    res = tonumber(c[5]), on_limit = c[6] or 'reject', revoked = c[7]}
end
