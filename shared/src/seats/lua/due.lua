-- Lists up to `batch` leases that ran out longer than the resurrect window ago, oldest first:
-- the sweep's work, read from the leases' own expiry index, so its cost follows what is due.
-- KEYS: leases, cfg, sessions. ARGV: prefix, batch. Reply: flat (sid, expiry ms, last heartbeat ms) triples.
local res = tonumber(redis.call('HGET', KEYS[2], 'res') or '0')
local now = now_ms()
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', s(now - res), 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[2]))
local out = {}
for i = 1, #due, 2 do
  local r = get_live(ARGV[1], due[i])
  out[#out + 1] = due[i]
  out[#out + 1] = tonumber(due[i + 1])
  out[#out + 1] = r and r[H] or tonumber(due[i + 1])
end
return out
