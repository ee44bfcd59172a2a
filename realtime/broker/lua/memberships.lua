-- KEYS: streams' members hashes; ARGV: node, "<count>@<expiry ms>" suffix (the expiry), key ttl
-- ms, then each key's local socket count. Writes a process's counts for many streams in one call
-- (a connect storm changes one per socket): a count of 0 removes the node's entry.
for i, key in ipairs(KEYS) do
  local count = ARGV[3 + i]
  if count == '0' then
    redis.call('HDEL', key, ARGV[1])
  else
    redis.call('HSET', key, ARGV[1], count .. '@' .. ARGV[2])
    redis.call('PEXPIRE', key, ARGV[3])
  end
end
return #KEYS
