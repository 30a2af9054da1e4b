-- A replay of a create answers 201 only while the create it repeats still holds its seat; this
-- marks the seat kept, so that the create (whose reply may have been lost, and which then gives
-- the seat back: release.lua) leaves it alone from now on.
-- KEYS: sessions. ARGV: prefix, sid, how long the mark lasts (ms).
-- Reply: 1 when the session is held (live, or recorded over); 0 when its create was undone.
if redis.call('HEXISTS', KEYS[1], ARGV[2]) == 0 and redis.call('EXISTS', ARGV[1] .. 'x:' .. ARGV[2]) == 0 then
  return 0
end
redis.call('SET', ARGV[1] .. 'kept:' .. ARGV[2], '1', 'PX', ARGV[3])
return 1
