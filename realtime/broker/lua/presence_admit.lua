-- KEYS: user set; ARGV: connection id, expiry ms, now ms, limit, key ttl ms. Admits a socket
-- (adds its entry) unless the user already has `limit` live ones, on any replica: the check and
-- the add are one step, so a burst of connects on several replicas cannot all slip past it.
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[3])
local known = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not known and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 1
