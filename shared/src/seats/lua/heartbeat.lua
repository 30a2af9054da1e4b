-- Renews a lease; revives one that ran out less than the resurrect window ago if a seat is free;
-- confirms a session restored by a rebuild while the limit has room for it.
-- KEYS: leases, cfg, sessions. ARGV: prefix, sid, token hash, retention ms
local leases, cfg, prefix, sid = KEYS[1], KEYS[2], ARGV[1], ARGV[2]
local r, over = find_session(prefix, cfg, sid, ARGV[3])
if not r then
  return over
end
if over then
  return {'gone', r[REASON]}
end
local c = redis.call('HMGET', cfg, 'ttl', 'hb', 'res', 'limit', 'per_user', 'revoked')
if not c[1] then
  return {'rebuild'}
end
local now = now_ms()
local e, ttl, res = tonumber(redis.call('ZSCORE', leases, sid) or 0), tonumber(c[1]), tonumber(c[3])
local limit, per_user = tonumber(c[4]), tonumber(c[5])
if c[6] then
  end_session(prefix, sid, r, 'revoked', now, e, tonumber(ARGV[4]))
  trim_gone(prefix, tonumber(ARGV[4]))
  return {'gone', 'revoked'}
end
local resurrected = 0
if e > now and redis.call('ZSCORE', prefix .. 'prov', sid) then
  -- Restored by a rebuild: it keeps its seat if the sessions confirmed so far leave one.
  local confirmed = redis.call('ZCOUNT', leases, '(' .. s(now), '+inf')
    - redis.call('ZCOUNT', prefix .. 'prov', '(' .. s(now), '+inf')
  if confirmed >= limit then
    end_session(prefix, sid, r, 'expired', now, e, tonumber(ARGV[4]))
    trim_gone(prefix, tonumber(ARGV[4]))
    return {'gone', 'expired'}
  end
elseif e <= now then
  if now - e >= res or live_count(prefix, now, limit) >= limit then
    return {'gone', 'expired'}
  end
  if per_user > 0 and user_live(prefix, r[U], now, {[sid] = true}) >= per_user then
    return {'gone', 'expired'}
  end
  resurrected = 1
end
redis.call('ZREM', prefix .. 'prov', sid)
local exp = now + ttl
r[H] = now
put_live(prefix, sid, r)
redis.call('ZADD', leases, s(exp), sid)
return {'ok', exp, tonumber(c[2]), resurrected}
