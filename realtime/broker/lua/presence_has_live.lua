-- "Is any live entry of this user left in the room?": prepended to the presence scripts.
local function has_live(key, prefix, now)
  for _, m in ipairs(redis.call('ZRANGEBYSCORE', key, now, '+inf')) do
    if string.sub(m, 1, #prefix) == prefix then return true end
  end
  return false
end
