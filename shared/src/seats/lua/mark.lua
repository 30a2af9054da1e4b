-- Reconciliation bookkeeping in a slot's cfg: `dirty` counts ledger writes known to have missed
-- (the next sweep reconciles the slot member by member), `rec` is when that was last done.
-- KEYS: cfg. ARGV: 'dirty' | 'reconciled', then for 'reconciled' the dirty count seen when the
-- reconciliation began ('' none): a miss marked since keeps the slot dirty.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
if ARGV[1] == 'dirty' then
  return redis.call('HINCRBY', KEYS[1], 'dirty', 1)
end
redis.call('HSET', KEYS[1], 'rec', s(now_ms()))
if ARGV[2] ~= '' and redis.call('HGET', KEYS[1], 'dirty') == ARGV[2] then
  redis.call('HDEL', KEYS[1], 'dirty')
end
return 1
