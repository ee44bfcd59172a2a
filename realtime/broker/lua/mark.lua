-- Raise delivery marks (delivered / acked) but never lower them, and only within the epoch
-- the client saw: a mark for a lost epoch must not land on the new one.
-- KEYS: one meta key per mark; ARGV: epoch, field, seq for each key, in the keys' order.
-- Returns how many marks found their epoch.
local landed = 0
for i, meta in ipairs(KEYS) do
  local epoch, field, wanted = ARGV[3 * i - 2], ARGV[3 * i - 1], tonumber(ARGV[3 * i])
  if redis.call('HGET', meta, 'epoch') == epoch then
    landed = landed + 1
    local current = tonumber(redis.call('HGET', meta, field) or '0')
    if wanted > current then redis.call('HSET', meta, field, wanted) end
  end
end
return landed
