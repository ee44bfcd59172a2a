-- INCR, and start the window's clock on its first hit: a fixed window per key. One script, so
-- a crash between the two can never leave a counter without an expiry.
-- KEYS: counter; ARGV: window ms
local count = redis.call('INCR', KEYS[1])
if count == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return count
