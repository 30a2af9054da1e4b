-- Renews a lease; revives one that ran out less than the resurrect window ago if a seat is free.
-- KEYS: leases, cfg, record. ARGV: prefix, sid, token hash, retention ms
local leases, cfg, rec = KEYS[1], KEYS[2], KEYS[3]
local r, reply = load_session(cfg, rec, ARGV[3], 'st', 'e', 'u')
if not r then
  return reply
end
if r[2] ~= 'a' then
  return {'gone', r[2]}
end
local c = redis.call('HMGET', cfg, 'ttl', 'hb', 'res', 'limit', 'per_user')
if not c[1] then
  return {'rebuild'}
end
local now = now_ms()
local e, ttl, res = tonumber(r[3]), tonumber(c[1]), tonumber(c[3])
local resurrected = 0
if e <= now then
  if now - e >= res then
    return {'gone', 'expired'}
  end
  local live = redis.call('ZRANGEBYSCORE', leases, '(' .. s(now), '+inf', 'WITHSCORES')
  if #live / 2 >= tonumber(c[4]) then
    return {'gone', 'expired'}
  end
  local per_user = tonumber(c[5])
  if per_user > 0 and user_live(ARGV[1], live, r[4], false) >= per_user then
    return {'gone', 'expired'}
  end
  resurrected = 1
end
local exp = now + ttl
redis.call('HSET', rec, 'h', s(now), 'e', s(exp))
redis.call('PEXPIREAT', rec, s(exp + res + tonumber(ARGV[4])))
redis.call('ZADD', leases, s(exp), ARGV[2])
return {'ok', exp, tonumber(c[2]), resurrected}
