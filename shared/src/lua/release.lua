-- Takes back a seat whose create could not be recorded in the ledger, as if it never was; also
-- removes a seat the ledger does not explain (an orphan).
-- KEYS: leases, sessions, idempotency key (or placeholder). ARGV: sid
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
local v = redis.call('GET', KEYS[3])
if v and string.sub(v, 1, #ARGV[1] + 1) == ARGV[1] .. '\n' then
  redis.call('DEL', KEYS[3])
end
return 1
