-- KEYS: user set, last-seen hash, names hash; ARGV: connection id, expiry ms, now ms, limit,
-- key ttl ms, user id, username. Admits a socket (adds its entry) unless the user already has
-- `limit` live ones, on any replica: the check and the add are one step, so a burst of connects
-- on several replicas cannot all slip past it. An admitted socket marks its user seen now and
-- names them (what the heartbeat's touch writes), so a new socket needs no write of its own
-- before the heartbeat's next beat.
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[3])
local known = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not known and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
redis.call('HSET', KEYS[2], ARGV[6], ARGV[3])
redis.call('HSET', KEYS[3], ARGV[6], ARGV[7])
return 1
