-- KEYS: room set; ARGV: now ms. Removes expired entries; returns the user ids now gone.
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1])
if #expired == 0 then return {} end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1])
local gone, seen = {}, {}
for _, m in ipairs(expired) do
  local uid = string.match(m, '^(%d+):')
  if uid and not seen[uid] then
    seen[uid] = true
    if not has_live(KEYS[1], uid .. ':', ARGV[1]) then table.insert(gone, uid) end
  end
end
return gone
