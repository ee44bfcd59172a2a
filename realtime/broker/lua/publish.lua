-- Publish one message to a stream, atomically (publish_one.lua, loaded before this).
-- KEYS and ARGV: as publish_one's.
return publish_one(KEYS, ARGV)
