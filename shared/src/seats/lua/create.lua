-- Admits a session if a seat is free, atomically. Costs the same whatever the slot's size: counts
-- from the lease index, one user's sessions from the user index.
-- KEYS: leases, cfg, sessions, idempotency key (a placeholder when none)
-- ARGV: prefix, sid, user, device ('' none), token hash, idempotency key ('' none), idempotency value,
--       limit, per_user (0 none), ttl ms, hb s, res ms, on_limit, policy version, retention ms,
--       deadline ms on the server's clock (0 none), '1' when the caller's license came from a cache,
--       the token hash as the ledger keeps it, metadata JSON ('' none), the outbox's bound
local leases, cfg, idem = KEYS[1], KEYS[2], KEYS[4]
local prefix, sid, user, device = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local retention = tonumber(ARGV[15])

if redis.call('EXISTS', cfg) == 0 then
  return {'rebuild'}
end
local now = now_ms()
-- The caller stops waiting at its deadline and answers 503: a script that runs later changes nothing.
if tonumber(ARGV[16]) > 0 and now > tonumber(ARGV[16]) then
  return {'late'}
end
-- A cached license may predate a change made through another instance (a new key, a removed
-- feature): when the slot holds a newer version, the caller reads the license again and comes back.
local p = apply_policy(cfg, {ARGV[8], ARGV[9], ARGV[10], ARGV[11], ARGV[12], ARGV[13], ARGV[14]}, ARGV[17] == '1')
if p.stale then
  return {'stale'}
end
if p.revoked then
  return {'revoked'}
end

if ARGV[6] ~= '' then
  local prior = redis.call('GET', idem)
  if prior then
    local psid, sealed, puser = string.sub(prior, 1, 32), string.sub(prior, 33, 64), string.sub(prior, 65)
    if puser ~= user then
      return {'idem_conflict'}
    end
    local r, over = find_session(prefix, cfg, psid, '')
    if r then
      local expiry = over and r[EXPIRY] or tonumber(redis.call('ZSCORE', leases, psid) or now)
      return {'replay', psid, sealed, r[C], expiry, r[D], live_count(prefix, now, p.limit), p.limit, p.hb}
    end
    -- The session it named is gone without a trace: the key is free again.
    redis.call('DEL', idem)
  end
end

-- Device takeover: a live or still resurrectable session of the same user and device gives its
-- seat to this one. Reads that user's sessions only.
local prov_key = prefix .. 'prov'
local replaced, is_replaced = {}, {}
-- Live leases and live restored leases, the sessions being replaced not counted.
local total, prov = live_leases(prefix, now)
if device ~= '' then
  for _, x in ipairs(user_sids(prefix, user)) do
    local e = tonumber(redis.call('ZSCORE', leases, x) or '0')
    local r = get_live(prefix, x)
    if r and r[D] == device and (e > now or now - e < p.res) then
      replaced[#replaced + 1] = {x, r, e}
      is_replaced[x] = true
      if e > now then
        total = total - 1
        if redis.call('ZSCORE', prov_key, x) then
          prov = prov - 1
        end
      end
    end
  end
end

-- A refusal is counted here, in the same step: a statistic no crash or frozen instance loses, and
-- no commit per refusal. The sweep moves the per-minute counts into the ledger.
-- The first of a minute also goes to the outbox (at most one entry a minute, however many are
-- refused), for the webhook that tells of that minute's refusals once it is over.
local function refused(scope, limit, active)
  local minute = s(math.floor(now / 60000) * 60000)
  if redis.call('HINCRBY', prefix .. 'rej', minute, 1) == 1 then
    redis.call('XADD', prefix .. 'ob', '*', 'k', 'refused', 'at', minute, 'sc', scope, 'l', s(limit), 'n', s(active))
    return 1
  end
  return 0
end

if p.per_user > 0 then
  local mine, soonest = user_live(prefix, user, now, is_replaced)
  if mine >= p.per_user then
    local first = refused('user', p.per_user, mine)
    return {'limit', 'user', p.per_user, mine, soonest - now, first}
  end
end

-- The least recently renewed live session in `key` (the sessions being replaced aside).
local function oldest_in(key)
  local first = redis.call('ZRANGEBYSCORE', key, '(' .. s(now), '+inf', 'WITHSCORES', 'LIMIT', 0, #replaced + 1)
  for i = 1, #first, 2 do
    if not is_replaced[first[i]] then
      return first[i], tonumber(first[i + 1])
    end
  end
  return nil
end

local active = seats_taken(total, prov, p.limit)
-- The outbox at its bound (the ledger has been away for long): no new seat whose history could
-- not be kept. Refusals and ends still go on; a full license still answers that it is full.
if (active < p.limit or p.on_limit == 'evict_idle') and redis.call('XLEN', prefix .. 'ob') >= tonumber(ARGV[20]) then
  return {'backlog'}
end
local evicted = {}
-- Evict only when that makes room: lowering a limit never cuts sessions to below it.
if active >= p.limit and p.on_limit == 'evict_idle' and active == p.limit then
  -- The least recently renewed first: restored sessions that never heartbeated since the rebuild,
  -- then the lowest lease expiry. Removing a restored session frees a seat only once every
  -- restored session is counted, so several of those may go (sessions that could not all have
  -- kept a seat); a confirmed one frees a seat by itself.
  while active >= p.limit do
    local victim, victim_exp = oldest_in(prov_key)
    local was_prov = victim ~= nil
    if not victim then
      victim, victim_exp = oldest_in(leases)
    end
    if not victim then
      break
    end
    local r = get_live(prefix, victim)
    if r then
      end_session(prefix, victim, r, 'evicted', now, victim_exp, retention)
    else
      redis.call('ZREM', leases, victim)
      redis.call('ZREM', prov_key, victim)
    end
    evicted[#evicted + 1] = victim
    total = total - 1
    if was_prov then
      prov = prov - 1
    end
    active = seats_taken(total, prov, p.limit)
  end
end
if active >= p.limit then
  local first = redis.call('ZRANGEBYSCORE', leases, '(' .. s(now), '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
  local wait = p.ttl
  if #first > 0 then
    wait = tonumber(first[2]) - now
  end
  local first = refused('license', p.limit, active)
  if #evicted > 0 then
    trim_gone(prefix, retention)
  end
  return {'limit', 'license', p.limit, active, wait, first}
end

local ids = {}
for _, v in ipairs(replaced) do
  end_session(prefix, v[1], v[2], 'replaced', now, v[3], retention)
  ids[#ids + 1] = v[1]
end

if #ids > 0 or #evicted > 0 then
  trim_gone(prefix, retention)
end

local exp = now + p.ttl
put_live(prefix, sid, {user, device, ARGV[5], now, now})
redis.call('ZADD', leases, s(exp), sid)
user_add(prefix, user, sid)
-- The session's ledger row, in the same step as its seat.
redis.call('XADD', prefix .. 'ob', '*', 'k', 'start', 's', sid, 'u', user, 'd', device, 'th', ARGV[18],
  'ik', ARGV[6], 'm', ARGV[19], 'c', s(now), 'e', s(exp), 'n', s(active + 1), 'l', s(p.limit))
if ARGV[6] ~= '' then
  redis.call('SET', idem, ARGV[7], 'PX', s(p.ttl))
end
return {'ok', now, exp, active + 1, table.concat(ids, ','), table.concat(evicted, ','), p.limit, p.hb}
