-- KEYS: each user's set of connections, then the last-seen hash and the names hash.
-- ARGV: now ms, key ttl ms, then for each user: user id, username, how many connections, and
-- that many (connection id, expiry ms) pairs.
-- Marks the connections alive (their expiries), drops the user's expired ones, and marks each
-- user seen now and named: the heartbeat's write for a batch of sockets, one command where it
-- was three per user and two hash fields.
local now = ARGV[1]
local seen, names = KEYS[#KEYS - 1], KEYS[#KEYS]
local a = 3
for k = 1, #KEYS - 2 do
  local uid, name, n = ARGV[a], ARGV[a + 1], tonumber(ARGV[a + 2])
  a = a + 3
  local scored = {}
  for _ = 1, n do
    scored[#scored + 1] = ARGV[a + 1]
    scored[#scored + 1] = ARGV[a]
    a = a + 2
  end
  redis.call('ZADD', KEYS[k], unpack(scored))
  redis.call('ZREMRANGEBYSCORE', KEYS[k], '-inf', '(' .. now)
  redis.call('PEXPIRE', KEYS[k], ARGV[2])
  redis.call('HSET', seen, uid, now)
  redis.call('HSET', names, uid, name)
end
return #KEYS - 2
