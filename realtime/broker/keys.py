"""Every Redis key and pub/sub channel name Switchboard uses, and nowhere else.

A stream's own keys carry the hash tag `{<stream>}`, so that they live in one Redis Cluster slot
and on one shard (redis_broker.py: a stream's shard follows from the same CRC16 slot). Keys
without a stream's tag say below which shard holds them. The prefix (`sb` by default) lets
several deployments, or tests, share one Redis.

  <p>:{<stream>}:meta          hash: seq (the last given), epoch, delivered, acked
  <p>:{<stream>}:log           Redis Stream: entry "<seq>-0", fields f (frame), t (ms); none
                               for a stream whose kind keeps no history
  <p>:{<stream>}:tally         hash: "d:<epoch>:<seq>" / "a:<epoch>:<seq>" -> sockets a message
                               was delivered to / acknowledged by, summed over the replicas
                               (delivery/tallies.py), for streams of a registered kind
  <p>:{<stream>}:presence      sorted set: "<user id>:<connection>" -> expiry ms (a stream whose
                               kind has presence: the chat's rooms, a project's own kinds)
  <p>:{<stream>}:idem:<token>  a publish's idempotency key -> "<seq> <epoch> <message id>"
  <p>:{<stream>}:members       hash: node -> "<local sockets>@<expiry ms>", the sockets of
                               the stream's group on each replica
  <p>:g:<group>                pub/sub channel of a channel-layer group, on its stream's shard
  <p>:p:<process id>           pub/sub channel of one process (Channels' send() to a channel),
                               on the shard its process id hashes to
  <p>:{user:<id>}:sockets      sorted set: "<connection>" -> expiry ms (also the socket count)
  <p>:presence:seen / :names   hashes: user id -> last seen ms / username, one on each shard
                               for the users whose user stream lives there
  <p>:limit:<key>              a fixed-window counter (realtime/limits.py), on <key>'s shard
  <p>:uname:<username>         an active user's id, for the push API (realtime/user_directory.py),
                               with a TTL; on its own name's shard
  <p>:archive:queue            Redis Stream, one on each shard: messages of that shard's
                               archived streams on their way to the database, field m (the
                               message as PUBLISHed: frames.py), read by the consumer group
                               "archivers" (realtime/archive.py)

A group's stream is the group's name with its first "." made a ":" (realtime/groups.py spells
`user:42` as `user.42`); a group that is no stream's (plain Channels code) is routed by its name.
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

    def idempotency(self, stream: str, token: str) -> str:
        """`token` is the publisher's scoped key (publish.idempotency_key): the same token on
        another stream is another publish."""
        return f"{self.prefix}:{{{stream}}}:idem:{token}"

    def group_channel(self, group: str) -> str:
        return f"{self.prefix}:g:{group}"

    def group_of_channel(self, channel: str) -> str:
        """The group a `group_channel` name carries (the inverse, without a lookup)."""
        return channel[len(self.prefix) + 3 :]

    def process_channel(self, process_id: str) -> str:
        return f"{self.prefix}:p:{process_id}"

    def members(self, stream: str) -> str:
        return f"{self.prefix}:{{{stream}}}:members"

    def stream_tally(self, stream: str) -> str:
        return f"{self.prefix}:{{{stream}}}:tally"

    def presence_stream(self, stream: str) -> str:
        return f"{self.prefix}:{{{stream}}}:presence"

    def presence_user(self, user_id: int) -> str:
        return f"{self.prefix}:{{user:{user_id}}}:sockets"

    def presence_seen(self) -> str:
        return f"{self.prefix}:presence:seen"

    def presence_names(self) -> str:
        return f"{self.prefix}:presence:names"

    def limit(self, key: str) -> str:
        return f"{self.prefix}:limit:{key}"

    def username(self, name: str) -> str:
        return f"{self.prefix}:uname:{name}"

    def archive_queue(self) -> str:
        # One queue per shard for all of its archived streams, so it carries no stream's hash
        # tag and the publish script that appends to it touches keys of two slots: fine on
        # separate Redis shards (the script runs on the stream's shard, where its queue is) and
        # under Sentinel. Redis Cluster, whose scripts may touch one slot only, would need a
        # queue per stream (`<p>:{<stream>}:archive`), read by archivers that find them.
        return f"{self.prefix}:archive:queue"


def stream_of_group(group: str) -> str:
    """The stream a group carries, by which the group's channel and counts are routed: groups.py
    makes a stream's group by turning its first ":" into "." (kinds never contain "."). For a
    group of plain Channels code, that just makes a routing name."""
    return group.replace(".", ":", 1)
