-- Raise a delivery mark (delivered / acked) but never lower it, and only within the epoch
-- the client saw: a mark for a lost epoch must not land on the new one.
-- KEYS: meta; ARGV: epoch, field, seq
if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[1] then return 0 end
local current = tonumber(redis.call('HGET', KEYS[1], ARGV[2]) or '0')
local wanted = tonumber(ARGV[3])
if wanted > current then redis.call('HSET', KEYS[1], ARGV[2], wanted) end
return 1
