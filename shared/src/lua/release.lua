-- Takes back a seat whose create could not be recorded in the ledger, as if it never was.
-- KEYS: leases, record, idempotency key (or placeholder). ARGV: sid
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2])
local v = redis.call('GET', KEYS[3])
if v and string.sub(v, 1, #ARGV[1] + 1) == ARGV[1] .. '\n' then
  redis.call('DEL', KEYS[3])
end
return 1
