"""Every Redis key and pub/sub channel name Switchboard uses, and nowhere else.

A stream's own keys carry the hash tag `{<stream>}`, so that they live in one Redis Cluster slot
(and, later, on one shard). The prefix (`sb` by default) lets several deployments, or tests,
share one Redis.

  <p>:{<stream>}:meta          hash: seq (the last given), epoch, delivered, acked
  <p>:{<stream>}:log           Redis Stream: entry "<seq>-0", fields f (frame), t (ms); none
                               for a stream whose kind keeps no history
  <p>:{<stream>}:presence      sorted set: "<user id>:<connection>" -> expiry ms (a stream whose
                               kind has presence: the chat's rooms, a project's own kinds)
  <p>:idem:<scope>:<key>       a publish's idempotency key -> "<seq> <epoch> <message id>"
  <p>:g:<group>                pub/sub channel of a channel-layer group
  <p>:p:<process id>           pub/sub channel of one process (Channels' send() to a channel)
  <p>:members:<group>          hash: node -> "<local sockets>@<expiry ms>"
  <p>:presence:user:<id>       sorted set: "<connection>" -> expiry ms (also the socket count)
  <p>:presence:seen / :names   hashes: user id -> last seen ms / username
  <p>:limit:<key>              a fixed-window counter (realtime/limits.py)
  <p>:archive:queue            Redis Stream: messages of archived streams on their way to the
                               database, field m (the message as PUBLISHed: frames.py), read
                               by the consumer group "archivers" (realtime/archive.py)
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Keys:
    prefix: str = "sb"

    def stream_meta(self, stream: str) -> str:
        return f"{self.prefix}:{{{stream}}}:meta"

    def stream_log(self, stream: str) -> str:
        return f"{self.prefix}:{{{stream}}}:log"

    def idempotency(self, scope: str, key: str) -> str:
        return f"{self.prefix}:idem:{scope}:{key}"

    def group_channel(self, group: str) -> str:
        return f"{self.prefix}:g:{group}"

    def group_of_channel(self, channel: str) -> str:
        """The group a `group_channel` name carries (the inverse, without a lookup)."""
        return channel[len(self.prefix) + 3 :]

    def process_channel(self, process_id: str) -> str:
        return f"{self.prefix}:p:{process_id}"

    def members(self, group: str) -> str:
        return f"{self.prefix}:members:{group}"

    def presence_stream(self, stream: str) -> str:
        return f"{self.prefix}:{{{stream}}}:presence"

    def presence_user(self, user_id: int) -> str:
        return f"{self.prefix}:presence:user:{user_id}"

    def presence_seen(self) -> str:
        return f"{self.prefix}:presence:seen"

    def presence_names(self) -> str:
        return f"{self.prefix}:presence:names"

    def limit(self, key: str) -> str:
        return f"{self.prefix}:limit:{key}"

    def archive_queue(self) -> str:
        # One queue for every archived stream, so it carries no stream's hash tag and the
        # publish script that appends to it touches keys of two slots. Fine on one Redis and
        # under Sentinel (one primary holds everything). Shards chosen by stream hash would keep
        # one queue on each shard, read by the same archivers; Redis Cluster, whose scripts may
        # touch one slot only, would need a queue per stream (`<p>:{<stream>}:archive`).
        return f"{self.prefix}:archive:queue"
