-- KEYS: room set; ARGV: user prefix, member, now ms.
-- Returns 1 when that was the user's last entry.
if redis.call('ZREM', KEYS[1], ARGV[2]) == 0 then return 0 end
if has_live(KEYS[1], ARGV[1], ARGV[3]) then return 0 end
return 1
