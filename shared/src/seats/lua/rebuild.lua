-- Restores a slot that lost its data from the ledger's live sessions. Restored sessions hold their
-- seats against new creates for one lease length, but each must confirm by heartbeat, and only as
-- many as the limit are confirmed (first come, first served): a rebuild never admits beyond the
-- limit, even when the ledger still holds a session whose lease had quietly run out.
-- Sent in chunks; the last one (final = 1) writes cfg, which reopens the slot. Once cfg exists,
-- the slot is live again and later chunks of a concurrent rebuild change nothing.
-- KEYS: leases, cfg, sessions. ARGV: prefix, final, limit, per_user, ttl ms, hb s, res ms,
--       on_limit, version, then per session: sid, user, device, token hash, created ms, last heartbeat ms
local leases, cfg, sessions, prefix = KEYS[1], KEYS[2], KEYS[3], ARGV[1]
if redis.call('EXISTS', cfg) == 1 then
  return 0
end
local exp = now_ms() + tonumber(ARGV[5])
local n = 0
for i = 10, #ARGV, 6 do
  if redis.call('HEXISTS', sessions, ARGV[i]) == 0 then
    put_live(prefix, ARGV[i], {ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], tonumber(ARGV[i + 4]), tonumber(ARGV[i + 5])})
    redis.call('ZADD', leases, s(exp), ARGV[i])
    redis.call('ZADD', prefix .. 'prov', s(exp), ARGV[i])
    user_add(prefix, ARGV[i + 1], ARGV[i])
    n = n + 1
  end
end
if ARGV[2] == '1' then
  apply_policy(cfg, {ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9]})
  -- Rebuilt from the ledger: as reconciled as a slot gets.
  redis.call('HSET', cfg, 'rec', s(now_ms()))
end
return n
