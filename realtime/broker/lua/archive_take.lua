-- Take entries of the archive queue for one consumer of its group, packed into one string, so
-- that a batch costs the client one bulk reply to read rather than a parse of every entry (a
-- replica's event loop spent 25-60 ms on 500 entries with redis-py's pure-Python parser).
-- KEYS: queue; ARGV: group, consumer, count, what ('>' new entries, '0' the consumer's own
--       pending ones, 'claim' others' pending entries idle for min idle ms), min idle ms, start
-- Returns "<next start>\n" then per entry "<id> <length>\n<message>" (length 0: the cap dropped
-- the entry after it was read). The group is made on first use, from the queue's start.
local function take()
  if ARGV[4] == 'claim' then
    return redis.pcall('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[5], ARGV[6],
      'COUNT', ARGV[3])
  end
  return redis.pcall('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', ARGV[3],
    'STREAMS', KEYS[1], ARGV[4])
end
local reply = take()
if type(reply) == 'table' and reply.err then
  if not string.find(reply.err, 'NOGROUP', 1, true) then return redis.error_reply(reply.err) end
  redis.call('XGROUP', 'CREATE', KEYS[1], ARGV[1], '0', 'MKSTREAM')
  reply = take()
  if type(reply) == 'table' and reply.err then return redis.error_reply(reply.err) end
end
local next_start, entries = '0-0', {}
if ARGV[4] == 'claim' then
  next_start, entries = reply[1], reply[2]
elseif reply then
  entries = reply[1][2]
end
local out = {next_start, '\n'}
for _, entry in ipairs(entries) do
  local fields = entry[2]
  local message = (type(fields) == 'table' and fields[2]) or ''
  out[#out + 1] = entry[1] .. ' ' .. #message .. '\n' .. message
end
return table.concat(out)
