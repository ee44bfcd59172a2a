-- Publish several messages, each atomically as publish.lua does, in the order given
-- (publish_one.lua, loaded before this): one call for a batch of pushes to many users.
-- KEYS: five per message, ARGV: ten per message, as publish_one's; returns their replies, seven
-- values per message, one after another.
local out = {}
for m = 0, #KEYS / 5 - 1 do
  local keys, args = {}, {}
  for i = 1, 5 do keys[i] = KEYS[5 * m + i] end
  for i = 1, 10 do args[i] = ARGV[10 * m + i] end
  local reply = publish_one(keys, args)
  for i = 1, 7 do out[#out + 1] = reply[i] end
end
return out
