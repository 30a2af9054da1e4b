-- Applies a changed feature policy to a live slot unless it holds a newer one (a slot without cfg
-- waits for its rebuild). Replies 'revoked' while the slot still holds sessions of the feature's
-- removal: the caller finishes the revocation first.
-- KEYS: cfg. ARGV: limit, per_user, ttl ms, hb s, res ms, on_limit, version
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 'absent'
end
if redis.call('HEXISTS', KEYS[1], 'revoked') == 1 then
  return 'revoked'
end
apply_policy(KEYS[1], ARGV)
return 'ok'
