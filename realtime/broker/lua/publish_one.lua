-- One message's publish, as publish.lua and publish_many.lua run it: next seq, history entry,
-- trim, PUBLISH, and for an archived stream an entry in the archive queue.
-- KEYS: meta, log, members, idempotency key ('' for none), archive queue ('' for none)
-- ARGV: epoch candidate, body (envelope JSON without seq/epoch), maxlen (0: keep no history),
--       max age ms, pub/sub channel, stream name, idempotency ttl secs, message id,
--       trim ('=' exact, '~' whole nodes), archive queue cap (entries)
-- Returns {seq, epoch, receivers, sockets, duplicate (0/1), message id, archive queue length}.

-- Which history this Redis holds: its replication id, new when a replica is promoted by a
-- failover (or a Redis starts without the id of its data). Redis replicates asynchronously, so
-- a promoted replica may lack the last messages its old primary acknowledged and readers saw;
-- numbering on from its seq would give those seqs to other messages, and a reader resuming
-- past them would miss the new ones silently. So a stream last written under another
-- replication id starts a new epoch: its readers are told recovered: false, never a gap.
-- Read once per script call (INFO is the dearest command here).
local known_replid = nil
local function replication_id()
  if not known_replid then
    known_replid = string.match(redis.call('INFO', 'replication'), 'master_replid:(%w+)')
  end
  return known_replid
end

local function publish_one(KEYS, ARGV)
  if KEYS[4] ~= '' then
    local prior = redis.call('GET', KEYS[4])
    if prior then
      -- The first publish's seq, epoch and message id: a retry learns what it already sent.
      -- (Keys written before ids were stored have none: the id comes back empty.)
      local seq, epoch, id = string.match(prior, '^(%d+) (%S+) ?(%S*)$')
      return {tonumber(seq), epoch, 0, 0, 1, id, 0}
    end
  end
  -- A stream last written under another replication id starts a new epoch (replication_id).
  local replid = replication_id()
  local meta = redis.call('HMGET', KEYS[1], 'epoch', 'gen')
  local epoch = meta[1]
  if not epoch or (meta[2] and meta[2] ~= replid) then
    if epoch then
      -- The old epoch's log, count and delivery marks are not this epoch's.
      redis.call('DEL', KEYS[1], KEYS[2])
    end
    epoch = ARGV[1]
    redis.call('HSET', KEYS[1], 'epoch', epoch, 'gen', replid)
  elseif not meta[2] then
    redis.call('HSET', KEYS[1], 'gen', replid)  -- a stream from before ids were kept: adopt
  end
  local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
  local frame = '{"seq":' .. seq .. ',"epoch":"' .. epoch .. '",' .. string.sub(ARGV[2], 2)
  local now = redis.call('TIME')
  local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
  if tonumber(ARGV[3]) == 0 then
    -- A stream without history: the seq and epoch above are all it keeps. Whatever a log still
    -- holds from before its kind stopped keeping history goes, so nothing stale is replayed.
    redis.call('DEL', KEYS[2])
  else
    redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[9], ARGV[3], seq .. '-0', 'f', frame, 't', now_ms)
    -- Trim by age on every 16th publish, up to 128 entries (8 per publish on average): each
    -- entry is deleted once, so the cost stays flat, and the other 15 publishes skip the look-up
    -- (it was a third of the script's time). The oldest entry alone is read first: on a busy
    -- stream it is seldom old enough, and reading 128 entries into Lua only to keep them all
    -- cost ~270 us of Redis' time, ~17 us a publish (docs/performance.md, tenth round).
    if seq % 16 == 0 then
      local cutoff = now_ms - tonumber(ARGV[4])
      local first = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)[1]
      if first and tonumber(first[2][4]) < cutoff then
        local oldest = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 128)
        for _, entry in ipairs(oldest) do
          if tonumber(entry[2][4]) >= cutoff then break end
          redis.call('XDEL', KEYS[2], entry[1])
        end
      end
    end
    redis.call('PEXPIRE', KEYS[2], ARGV[4])
  end
  -- With its header (broker/frames.py): replicas route it without parsing the JSON.
  local message = 'F' .. seq .. ' ' .. epoch .. ' ' .. ARGV[6] .. '\n' .. frame
  local receivers = redis.call('PUBLISH', ARGV[5], message)
  local sockets = 0
  local members = redis.call('HGETALL', KEYS[3])
  for i = 2, #members, 2 do
    local count, expires = string.match(members[i], '^(%d+)@(%d+)$')
    if count and tonumber(expires) >= now_ms then sockets = sockets + tonumber(count) end
  end
  if KEYS[4] ~= '' then
    redis.call('SET', KEYS[4], seq .. ' ' .. epoch .. ' ' .. ARGV[8], 'EX', ARGV[7])
  end
  local queued = 0
  if KEYS[5] ~= '' then
    -- On its way to the database (realtime/archive.py), in the same step as the history entry,
    -- so no message is stored and published without being queued: the message as PUBLISHed,
    -- one field (the entry id's time is the publish time). Capped: archivers that stop (or a
    -- database that is down) cannot grow Redis without bound; the publisher warns when the
    -- queue nears the cap, from the length returned here.
    redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[10], '*', 'm', message)
    queued = redis.call('XLEN', KEYS[5])
  end
  return {seq, epoch, receivers, sockets, 0, ARGV[8], queued}
end
