-- Refused creates counted per minute, not yet in the ledger; with ARGV 'forget' and (minute,
-- count) pairs, takes those counts off once the ledger has them (counts added since stay).
-- KEYS: rej. ARGV: 'read' | 'forget', then pairs.
if ARGV[1] == 'read' then
  if redis.call('EXISTS', KEYS[1]) == 0 then
    return {}
  end
  return redis.call('HGETALL', KEYS[1])
end
for i = 2, #ARGV, 2 do
  if redis.call('HINCRBY', KEYS[1], ARGV[i], -tonumber(ARGV[i + 1])) <= 0 then
    redis.call('HDEL', KEYS[1], ARGV[i])
  end
end
return 0
