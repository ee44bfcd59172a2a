"""Switchboard's settings and their defaults: a project that installs the app sets only what it
wants to change.

`install_defaults()` runs when Django builds the app registry (RealtimeConfig.__init__, before
any model or consumer is imported) and puts every default the project did not set onto
`django.conf.settings`, as django-appconf does; the code then reads `settings.NAME` as usual and
`override_settings` works in tests. The project's own settings module (project/settings.py)
reads the same names from the environment and takes its defaults from DEFAULTS, so each number
is written once. README's limits table documents them.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from django.conf import settings

from realtime.broker.connections import shard_addresses

# Used when the project configures no channel layer: Redis on its standard local port.
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"

DEFAULTS: dict[str, Any] = {
    # --- delivery ---
    "HEARTBEAT_SECS": 10,  # a socket that sends nothing for 3 beats is closed
    "DELIVERY_QUEUE_MAX_FRAMES": 1000,  # per socket; past it frames are fetched from history
    "SOCKET_WRITE_HOLD_MS": 40,  # fan-out writes to one socket are batched this long at most
    "SOCKET_BACKLOG_MAX_BYTES": 1024 * 1024,  # a client that stops reading is dropped past it
    "GC_FULL_COLLECT_SECS": 60,  # full garbage collections on a timer (0: CPython's own)
    "HISTORY_MAXLEN": 10_000,  # per stream, unless its kind says otherwise
    "HISTORY_MAX_AGE_SECS": 24 * 3600,
    "IDEMPOTENCY_TTL_SECS": 24 * 3600,  # how long a publish's message id is remembered
    "REDIS_TIMEOUT_SECS": 3,  # then the API answers 503
    "PRESENCE_HEARTBEAT_SECS": 5.0,  # an entry lives three beats
    # A comment on a quiet SSE stream this often: keeps proxies from closing it, and is how a
    # replica behind HAProxy learns the client left (realtime/transport/sse.py).
    "SSE_HEARTBEAT_SECS": 5.0,
    "SESSION_CHECK_SECS": 60.0,  # expired or deleted sessions close their sockets this often
    # --- limits: what one client may make us hold or do (realtime/limits.py) ---
    "MAX_CLIENT_FRAME_BYTES": 64 * 1024,
    "MAX_PAYLOAD_BYTES": 64 * 1024,
    "SOCKET_FRAMES_PER_SEC": 50.0,
    "SOCKET_FRAME_BURST": 200,
    "SOCKET_RATE_LIMIT_STRIKES": 50,
    "SOCKET_PUBLISHES_PER_SEC": 10.0,
    "SOCKET_PUBLISH_BURST": 100,
    "SOCKET_TYPING_PER_SEC": 1.0,
    "SOCKET_TYPING_BURST": 10,
    "MAX_STREAMS_PER_SOCKET": 50,
    "MAX_SOCKETS_PER_USER": 20,
    # Per replica process: an open socket holds ~20 KiB (docs/performance.md), so 5 000 are
    # ~100 MiB, and HAProxy's per-server maxconn is 5 000 too. At the cap new sockets get 1013
    # and /readyz fails, so HAProxy sends them to another replica.
    "MAX_SOCKETS_PER_REPLICA": 5000,
    # New sockets a replica accepts per second (a burst of twice that): a reconnect storm is
    # spread over the cluster and over time instead of stalling one replica (1013 past it).
    # ~480/s is what 3 replicas accepted flat out in the bench.
    "MAX_CONNECTS_PER_SEC": 200.0,
    "SOCKET_REPLAY_BYTES_PER_MIN": 32 * 1024 * 1024,
    "REPLAY_BATCH_BYTES": 256 * 1024,
    # --- the history archive (realtime/archive.py), for kinds registered with archive=True ---
    # Messages queued in Redis for the database at most: a stopped archiver or a database that
    # is down cannot grow Redis past about this (~70 MB of chat lines: 340 bytes an entry);
    # past it the oldest unarchived ones are dropped, and publishers log a warning from 80 % on.
    "ARCHIVE_QUEUE_MAXLEN": 200_000,
    # Rows per database write (one INSERT): 200 hold the thread every database call of the
    # replica shares for ~20 ms on SQLite, and its event loop ~4 ms to read them from Redis.
    "ARCHIVE_BATCH_MESSAGES": 200,
    "ARCHIVE_POLL_SECS": 1.0,  # an archiver that found the queue empty looks again this often
    # Entries another replica read and did not write for this long are taken over: it died, or
    # its database connection hangs (writing twice is harmless: one row per message).
    "ARCHIVE_CLAIM_IDLE_SECS": 30.0,
    # --- access ---
    "API_TOKEN_CACHE_SECS": 5,  # revoking an API token takes up to this long
    # The push API remembers a username's id this long (realtime/user_directory.py): a user
    # renamed or deactivated on another replica is still found by the old name until then.
    "API_USER_CACHE_SECS": 60,
    # "host:port": each replica also serves the token publish API there, past Daphne
    # (realtime/transport/publish_port.py); HAProxy routes those requests to it. Empty: no port.
    "PUBLISH_PORT_BIND": "",
    # "host:port": each replica also serves WebSockets there, past Twisted and Autobahn
    # (realtime/transport/socket_port.py); HAProxy sends /ws/ upgrades to it. Empty: no port.
    "SOCKET_PORT_BIND": "",
    "CONNECT_TOKEN_TTL_SECS": 300,
    "CONNECT_TOKEN_KEY": "",  # empty: derived from SECRET_KEY
    "CONNECT_TOKEN_ORIGINS": [],  # origins besides the site's own that may use a token
    "SWITCHBOARD_STREAM_KINDS": {},  # the project's own stream kinds (realtime/streams.py)
    # The login page's demo users: the bundled demo's, never a project's.
    "SHOW_DEMO_LOGINS": False,
    # GET /metrics for a Prometheus on another host (Authorization: Bearer <token>); empty:
    # only callers on the replica's own host and staff sessions (realtime/views.py).
    "METRICS_TOKEN": "",
    # GET /readyz fails (HAProxy sends new clients elsewhere) while the event loop runs later
    # than this (realtime/readiness.py).
    "READY_MAX_LOOP_LAG_SECS": 1.0,
    # A draining replica's sockets get reconnect slots spread over this long (realtime/drain.py).
    "DRAIN_WINDOW_SECS": 10.0,
    # ["<id>:<base64 of 32 bytes>", …]: history sealed at rest in Redis and the archive with the
    # first (AES-256-GCM), opened with any (realtime/sealing.py). Empty: stored as sent.
    "HISTORY_ENCRYPTION_KEYS": [],
    "LOGIN_IP_MAX_FAILURES": 20,  # realtime/login_lockout.py, when django-axes uses it
}


def default_replica_id() -> str:
    """This process's name in the cluster: REPLICA_ID from the environment, else host and pid,
    so two replicas on one host never share a name (the channel layer addresses them by it)."""
    return os.environ.get("REPLICA_ID") or f"{socket.gethostname()}-{os.getpid()}"


def channel_layer(
    redis_url: str | list[str] = DEFAULT_REDIS_URL,
    *,
    prefix: str = "sb",
    node: str | None = None,
    capacity: int = DEFAULTS["DELIVERY_QUEUE_MAX_FRAMES"],
    heartbeat_secs: float = DEFAULTS["HEARTBEAT_SECS"],
    sentinels: list[str] | None = None,
    sentinel_master: str | list[str] = "",
) -> dict[str, Any]:
    """A CHANNEL_LAYERS entry for Switchboard's layer, for a settings module:
    `CHANNEL_LAYERS = {"default": channel_layer(os.environ["REDIS_URL"])}`. `node` names this
    replica in the layer's membership counts (None: settings.REPLICA_ID). A list of URLs shards
    the streams over those Redis (every process must list them in the same order). With
    `sentinels` (["host:port", …]) the layer follows the primary of the Sentinel group
    `sentinel_master` (several names, a list or comma-separated: one shard per group);
    `redis_url` then gives only the database number and credentials."""
    urls = [redis_url] if isinstance(redis_url, str) else list(redis_url)
    # Checked now, with the settings, rather than at the first connection.
    shard_addresses(urls, sentinels or [], sentinel_master)
    return {
        "BACKEND": "realtime.layer.StreamChannelLayer",
        "CONFIG": {
            "hosts": urls,
            "prefix": prefix,
            "node": node,
            "capacity": capacity,
            "heartbeat_secs": heartbeat_secs,
            "sentinels": list(sentinels or []),
            "sentinel_master": sentinel_master,
        },
    }


def install_defaults() -> None:
    """Every Switchboard setting the project left out, with its default."""
    for name, value in DEFAULTS.items():
        if not hasattr(settings, name):
            setattr(settings, name, value)
    if not hasattr(settings, "REPLICA_ID"):
        settings.REPLICA_ID = default_replica_id()
    if not getattr(settings, "CHANNEL_LAYERS", None):
        # REDIS_URLS (shards) if the project lists any, else its one REDIS_URL.
        redis: str | list[str] = getattr(settings, "REDIS_URLS", None) or DEFAULT_REDIS_URL
        if redis == DEFAULT_REDIS_URL:
            redis = getattr(settings, "REDIS_URL", DEFAULT_REDIS_URL)
        settings.CHANNEL_LAYERS = {
            "default": channel_layer(
                redis,
                capacity=settings.DELIVERY_QUEUE_MAX_FRAMES,
                heartbeat_secs=settings.HEARTBEAT_SECS,
                sentinels=getattr(settings, "REDIS_SENTINELS", None),
                sentinel_master=getattr(settings, "REDIS_SENTINEL_MASTER", ""),
            )
        }
