-- KEYS: room set; ARGV: user prefix "<uid>:", member, expiry ms, now ms, key ttl ms
-- Returns 1 when the user was not in the room before (announce a join).
local was = has_live(KEYS[1], ARGV[1], ARGV[4])
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
if was then return 0 end
return 1
