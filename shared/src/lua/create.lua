-- Admits a session if a seat is free, atomically.
-- KEYS: leases, cfg, sessions, idempotency key (a placeholder when none)
-- ARGV: prefix, sid, user, device ('' none), token hash, idempotency key ('' none), idempotency value,
--       limit, per_user (0 none), ttl ms, heartbeat s, resurrect window ms, on_limit, retention ms
local leases, cfg, idem = KEYS[1], KEYS[2], KEYS[4]
local prefix, sid, user, device = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local limit, per_user = tonumber(ARGV[8]), tonumber(ARGV[9])
local ttl, retention = tonumber(ARGV[10]), tonumber(ARGV[14])

if redis.call('EXISTS', cfg) == 0 then
  return {'rebuild'}
end
local now = now_ms()
redis.call('HSET', cfg, 'limit', ARGV[8], 'per_user', ARGV[9], 'ttl', ARGV[10], 'hb', ARGV[11], 'res', ARGV[12])

if ARGV[6] ~= '' then
  local prior = redis.call('GET', idem)
  if prior then
    local psid, ptoken, puser = string.match(prior, '^([^\n]*)\n([^\n]*)\n(.*)$')
    if puser ~= user then
      return {'idem_conflict'}
    end
    local r, over = find_session(prefix, cfg, psid, '')
    local active = redis.call('ZCOUNT', leases, '(' .. s(now), '+inf')
    if not r then
      return {'replay', psid, ptoken, now, now, '', active}
    end
    local expiry = over and r[EXPIRY] or tonumber(redis.call('ZSCORE', leases, psid) or now)
    return {'replay', psid, ptoken, r[C], expiry, r[D], active}
  end
end

-- Device takeover and the per-user cap need each live session's owner: only then is the slot's
-- live set read whole. Otherwise a count and, at the limit, the oldest lease are enough.
local live
if device ~= '' or per_user > 0 then
  live = redis.call('ZRANGEBYSCORE', leases, '(' .. s(now), '+inf', 'WITHSCORES')
end

-- Device takeover: a live session of the same user and device gives its seat to this one.
local replaced, replaced_rec = false, nil
if device ~= '' then
  for i = 1, #live, 2 do
    local r = get_live(prefix, live[i])
    if r and r[U] == user and r[D] == device then
      replaced, replaced_rec = live[i], r
      break
    end
  end
end

if per_user > 0 then
  local n, soonest = user_live(prefix, live, user, replaced)
  if n >= per_user then
    return {'limit', 'user', per_user, n, soonest - now}
  end
end

local active
if live then
  active = #live / 2
else
  active = redis.call('ZCOUNT', leases, '(' .. s(now), '+inf')
end
if replaced then
  active = active - 1
end

local evicted = false
if active >= limit then
  -- The least recently renewed live session has the lowest expiry (the one being replaced aside).
  local oldest, oldest_exp = false, false
  local first = redis.call('ZRANGEBYSCORE', leases, '(' .. s(now), '+inf', 'WITHSCORES', 'LIMIT', 0, 2)
  for i = 1, #first, 2 do
    if first[i] ~= replaced then
      oldest, oldest_exp = first[i], tonumber(first[i + 1])
      break
    end
  end
  -- Evict only when that makes room: lowering a limit never cuts sessions to below it.
  if ARGV[13] == 'evict_idle' and oldest and active == limit then
    end_session(prefix, oldest, get_live(prefix, oldest), 'evicted', now, oldest_exp, retention)
    evicted = oldest
    active = active - 1
  else
    local wait = ttl
    if oldest then
      wait = oldest_exp - now
    end
    return {'limit', 'license', limit, active, wait}
  end
end

if replaced then
  end_session(prefix, replaced, replaced_rec, 'replaced', now, tonumber(redis.call('ZSCORE', leases, replaced)), retention)
end

local exp = now + ttl
put_live(prefix, sid, {user, device, ARGV[5], now, now})
redis.call('ZADD', leases, s(exp), sid)
if ARGV[6] ~= '' then
  redis.call('SET', idem, ARGV[7], 'PX', ARGV[10])
end
return {'ok', now, exp, active + 1, replaced or '', evicted or ''}
