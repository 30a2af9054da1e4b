-- Admits a session if a seat is free, atomically.
-- KEYS: leases, cfg, record of the new session, idempotency key (a placeholder when none)
-- ARGV: prefix, sid, user, device ('' none), token hash, idempotency key ('' none), idempotency value,
--       limit, per_user (0 none), ttl ms, heartbeat s, resurrect window ms, on_limit, retention ms
local leases, cfg, rec, idem = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local prefix, sid, user, device = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local limit, per_user = tonumber(ARGV[8]), tonumber(ARGV[9])
local ttl, res, retention = tonumber(ARGV[10]), tonumber(ARGV[12]), tonumber(ARGV[14])

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
    local r = redis.call('HMGET', prefix .. 's:' .. psid, 'c', 'e', 'd')
    local active = redis.call('ZCOUNT', leases, '(' .. s(now), '+inf')
    return {'replay', psid, ptoken, tonumber(r[1]) or now, tonumber(r[2]) or now, r[3] or '', active}
  end
end

local live = redis.call('ZRANGEBYSCORE', leases, '(' .. s(now), '+inf', 'WITHSCORES')

-- Device takeover: a live session of the same user and device gives its seat to this one.
local replaced = false
if device ~= '' then
  for i = 1, #live, 2 do
    local r = redis.call('HMGET', prefix .. 's:' .. live[i], 'u', 'd')
    if r[1] == user and r[2] == device then
      replaced = live[i]
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

local active = #live / 2
if replaced then
  active = active - 1
end

local evicted = false
if active >= limit then
  -- The least recently renewed live session has the lowest expiry.
  local oldest, oldest_exp = false, false
  for i = 1, #live, 2 do
    if live[i] ~= replaced then
      oldest, oldest_exp = live[i], tonumber(live[i + 1])
      break
    end
  end
  -- Evict only when that makes room: lowering a limit never cuts sessions to below it.
  if ARGV[13] == 'evict_idle' and oldest and active == limit then
    end_session(leases, prefix .. 's:' .. oldest, oldest, 'evicted', now, retention)
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
  end_session(leases, prefix .. 's:' .. replaced, replaced, 'replaced', now, retention)
end

local exp = now + ttl
redis.call('HSET', rec, 'u', user, 'd', device, 'th', ARGV[5], 'c', s(now), 'h', s(now), 'e', s(exp), 'st', 'a')
redis.call('PEXPIREAT', rec, s(exp + res + retention))
redis.call('ZADD', leases, s(exp), sid)
if ARGV[6] ~= '' then
  redis.call('SET', idem, ARGV[7], 'PX', ARGV[10])
end
return {'ok', now, exp, active + 1, replaced or '', evicted or ''}
