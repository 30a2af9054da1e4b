-- The webhook queue, beside the slots: deliveries by due time (on this server's clock), their
-- bodies and their failed attempts. Deliveries are added while a slot's outbox is drained, before
-- its entries are deleted, so a writer killed in between adds them again: an id still queued is
-- not added twice, and each id says which change it tells of, so a receiver dedupes the rest.
-- KEYS: q (sorted set: id -> due ms), e (hash: id -> body), a (hash: id -> failed attempts).
-- ARGV[1]: the operation, then its arguments.
local q, e, a = KEYS[1], KEYS[2], KEYS[3]
local op = ARGV[1]

if op == 'add' then
  -- (id, due ms or '' for now, body) triples; answers how many were new.
  local added, now = 0, now_ms()
  for i = 2, #ARGV, 3 do
    if redis.call('HSETNX', e, ARGV[i], ARGV[i + 2]) == 1 then
      local due = ARGV[i + 1]
      if due == '' then
        due = s(now)
      end
      redis.call('ZADD', q, due, ARGV[i])
      added = added + 1
    end
  end
  return added
elseif op == 'claim' then
  -- Up to ARGV[2] due deliveries, each hidden for ARGV[3] ms: a sender that dies with one in
  -- hand leaves it to come due again, and two senders never hold one at once.
  local now = now_ms()
  local ids = redis.call('ZRANGEBYSCORE', q, '-inf', s(now), 'LIMIT', 0, tonumber(ARGV[2]))
  local out = {}
  for _, id in ipairs(ids) do
    local body = redis.call('HGET', e, id)
    if body then
      redis.call('ZADD', q, s(now + tonumber(ARGV[3])), id)
      out[#out + 1] = id
      out[#out + 1] = body
      out[#out + 1] = tonumber(redis.call('HGET', a, id) or '0')
    else
      redis.call('ZREM', q, id)
    end
  end
  return out
elseif op == 'done' then
  -- Delivered, or given up on.
  redis.call('ZREM', q, ARGV[2])
  redis.call('HDEL', e, ARGV[2])
  redis.call('HDEL', a, ARGV[2])
  return 1
elseif op == 'retry' then
  -- A failed attempt: due again in ARGV[3] ms, with the body as it was sent (ARGV[4]), so that
  -- every attempt carries the same event.
  if not redis.call('ZSCORE', q, ARGV[2]) then
    return 0
  end
  redis.call('HINCRBY', a, ARGV[2], 1)
  redis.call('HSET', e, ARGV[2], ARGV[4])
  redis.call('ZADD', q, s(now_ms() + tonumber(ARGV[3])), ARGV[2])
  return 1
elseif op == 'len' then
  -- How many wait, and how long the oldest due one has been due (ms; 0 when none is).
  local n = redis.call('ZCARD', q)
  local first = redis.call('ZRANGE', q, 0, 0, 'WITHSCORES')
  local late = 0
  if #first > 0 then
    late = math.max(0, now_ms() - tonumber(first[2]))
  end
  return {n, late}
end
return redis.error_reply('unknown webhook queue operation ' .. tostring(op))
