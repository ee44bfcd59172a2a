"""Switchboard settings. Every value a deployment may change is read here, from the environment.

Names carry their units (HEARTBEAT_SECS, MAX_CLIENT_FRAME_BYTES) so nobody has to guess.
"""

from __future__ import annotations

import os
import secrets
import socket
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from project.env import env_bool, env_float, env_int, env_list, env_str
from realtime.conf import DEFAULTS as SB
from realtime.conf import channel_layer

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(env_str("SWITCHBOARD_VAR_DIR", str(BASE_DIR / "var")))

DEBUG = env_bool("DEBUG", False)
# The login page's list of demo users and their passwords: development only.
SHOW_DEMO_LOGINS = env_bool("SHOW_DEMO_LOGINS", DEBUG)


def _private_var_dir() -> None:
    """Make VAR_DIR readable by its owner only: it holds the secret key, the SQLite database
    and the local cluster's logs. An existing one is tightened too, if it is ours to change."""
    VAR_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
    status = VAR_DIR.stat()
    if status.st_uid == os.geteuid() and status.st_mode & 0o077:
        VAR_DIR.chmod(0o700)


def _local_secret_key() -> str:
    """A key generated once per checkout in var/, so every local process shares it.

    Deployments set SECRET_KEY; a local cluster needs no setup and has no well-known key.
    """
    _private_var_dir()
    path = VAR_DIR / "secret_key"
    if not path.exists():
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process made it first
        else:
            with os.fdopen(fd, "w") as key_file:
                key_file.write(secrets.token_urlsafe(50))
    return path.read_text().strip()


# Every replica must share one key, or a session made on d1 would be rejected on d2.
SECRET_KEY = os.environ.get("SECRET_KEY") or _local_secret_key()

# Which replica this process is. Shown on every page and response so stickiness is visible.
# A management command run by hand is named after its host, as the origin of what it sends.
REPLICA_ID = env_str("REPLICA_ID", socket.gethostname())

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

# 6390 by default: the dev cluster runs its own redis-server there, beside any system Redis on
# 6379, so `manage.py push` reaches `make run`'s cluster without setting REDIS_URL.
REDIS_URL = env_str("REDIS_URL", "redis://127.0.0.1:6390/0")
# Redis Sentinel: with REDIS_SENTINELS (host:port,host:port,…) replicas, commands and the API
# reach the primary of the group REDIS_SENTINEL_MASTER and follow its failovers; REDIS_URL then
# gives only the database number and password (realtime/broker/connections.py).
REDIS_SENTINELS = env_list("REDIS_SENTINELS", [])
REDIS_SENTINEL_MASTER = env_str("REDIS_SENTINEL_MASTER", "switchboard" if REDIS_SENTINELS else "")
# Shards: REDIS_URLS (url,url,…) spreads streams over several Redis by the hash of their names
# (realtime/broker/redis_broker.py), in place of REDIS_URL; with Sentinel, REDIS_SENTINEL_MASTER
# names one group per shard instead (shard0,shard1,…). Every replica and command must list the
# same shards in the same order: the order is the layout.
REDIS_URLS = env_list("REDIS_URLS", [])

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "axes",
    "realtime",
    # The chat demo (/chat/, rooms and their lines): realtime's streams room:<slug> are its rooms.
    "chat",
    # The cluster runner, the benchmark and the seeds (manage.py cluster, bench, seed_demo).
    "devtools",
    # The transport lab (/lab/) and the cluster view (/cluster/, the replicas' reports).
    "lab",
    "ops",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "realtime.middleware.replica_header_middleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as axes asks: turns a refused locked-out login into its answer. Async-capable (a
    # flag check after the view), so it costs no thread hop on other requests.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "project.urls"
ASGI_APPLICATION = "project.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "realtime.context_processors.replica",
                "realtime.context_processors.demo_logins",
            ],
        },
    },
]

# A SQLite file that every local replica shares by default; PostgreSQL in production (docker
# compose, `manage.py cluster up --db postgres`): DATABASE_URL=postgres://user:password@host/name.
DATABASES = {
    "default": dj_database_url.parse(
        env_str("DATABASE_URL", f"sqlite:///{VAR_DIR / 'db.sqlite3'}"), conn_max_age=0
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    if Path(DATABASES["default"]["NAME"]).parent == VAR_DIR:
        _private_var_dir()
    else:
        Path(DATABASES["default"]["NAME"]).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    # Several replica processes write the same file: WAL lets readers run beside a writer,
    # IMMEDIATE takes the write lock up front instead of failing on upgrade, and the timeout
    # waits out another process's short write instead of raising "database is locked".
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 20,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
elif DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # A pool of connections per process (Django's, psycopg_pool), not persistent connections
    # (CONN_MAX_AGE > 0), which are kept per thread: database calls from async code run in
    # asgiref's threads, and Django's ASGI handler gives each request a thread of its own, so
    # every request still opened a connection, and 50 concurrent ones ran PostgreSQL out of
    # connection slots. Without either (CONN_MAX_AGE=0), every database_sync_to_async call
    # (which closes the connection after it) and every request opened one: 14 ms per lookup
    # where the pool takes 1.8 ms (docs/architecture.md, "Database"). A pooled connection's
    # close() hands it back, so the consumers' calls and each request borrow one per call.
    DATABASE_POOL_MIN_SIZE = env_int("DATABASE_POOL_MIN_SIZE", 2, minimum=0)
    # Per process: keep replicas x this, plus a few for commands, under PostgreSQL's
    # max_connections (100 by default). A call past it waits for a connection to come back...
    DATABASE_POOL_MAX_SIZE = env_int(
        "DATABASE_POOL_MAX_SIZE", max(10, DATABASE_POOL_MIN_SIZE), minimum=DATABASE_POOL_MIN_SIZE
    )
    # ...this long, then fails (PoolTimeout) instead of queueing without bound.
    DATABASE_POOL_TIMEOUT_SECS = env_float("DATABASE_POOL_TIMEOUT_SECS", 10.0, minimum=0.1)
    DATABASES["default"]["OPTIONS"] = {
        **DATABASES["default"].get("OPTIONS", {}),
        "pool": {
            "min_size": DATABASE_POOL_MIN_SIZE,
            "max_size": DATABASE_POOL_MAX_SIZE,
            "timeout": DATABASE_POOL_TIMEOUT_SECS,
        },
    }
    # Each connection is tested as it leaves the pool (one round trip: 0.1-0.4 ms a call), so
    # one that PostgreSQL dropped (a restart, a failover) is replaced instead of failing a call.
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = env_bool("DATABASE_HEALTH_CHECKS", True)

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = BASE_DIR / "staticfiles"

LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/accounts/login/"

# --- Login attempts (django-axes; realtime/login_lockout.py) ----------------------------------
# Axes' backend refuses a locked-out login before the password is checked, on the site's login
# and the admin's alike.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
# Wrong passwords for one username from one client IP before that pair is locked out. The pair,
# not the username alone: then anyone could lock any user out from anywhere, while alice can
# still log in from another address. Not the IP alone at this strictness: one user's typos
# would lock out everyone behind the same NAT.
LOGIN_USER_IP_MAX_FAILURES = env_int("LOGIN_USER_IP_MAX_FAILURES", 5, minimum=1)
# Wrong passwords from one client IP over all usernames before the IP is locked out: stops one
# address trying a few passwords on each of many users. Looser, so a NAT's typos lock nobody.
LOGIN_IP_MAX_FAILURES = env_int("LOGIN_IP_MAX_FAILURES", SB["LOGIN_IP_MAX_FAILURES"], minimum=1)
# A failure counts until this long after the latest one for the same username, IP and browser,
# so a lockout lasts this long after the last attempt; attempts while locked out count too.
LOGIN_LOCKOUT_SECS = env_int("LOGIN_LOCKOUT_SECS", 15 * 60, minimum=1)
AXES_FAILURE_LIMIT = LOGIN_USER_IP_MAX_FAILURES
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]  # the per-IP limit: AXES_HANDLER
AXES_COOLOFF_TIME = timedelta(seconds=LOGIN_LOCKOUT_SECS)
AXES_HANDLER = "realtime.login_lockout.LoginLockoutHandler"
# REMOTE_ADDR only: Daphne (--proxy-headers) set it from HAProxy's X-Forwarded-For.
AXES_CLIENT_IP_CALLABLE = "realtime.login_lockout.client_ip"
AXES_LOCKOUT_CALLABLE = "realtime.login_lockout.lockout_response"
# A successful login clears that username-and-IP's failures (only its own rows).
AXES_RESET_ON_SUCCESS = True
# No row per successful login: nothing reads them, and the table would only grow.
AXES_DISABLE_ACCESS_LOG = True

SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
# Messages live in the session, on the server: the default cookie storage is signed but not
# encrypted, and a message may carry a secret (a new API token, realtime/admin.py).
MESSAGE_STORAGE = "django.contrib.messages.storage.session.SessionStorage"

# --- The TLS profile (SWITCHBOARD_TLS=1) --------------------------------------------------------
# For a deployment whose HAProxy terminates TLS: HTTPS only, secure cookies, HSTS. With it, DEBUG
# off and a long random SECRET_KEY, `manage.py check --deploy --fail-level WARNING` is clean.
# Off by default, so a local cluster on http://localhost works: a browser never sends a secure
# cookie back over plain HTTP.
SWITCHBOARD_TLS = env_bool("SWITCHBOARD_TLS", False)
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", SWITCHBOARD_TLS)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
if SWITCHBOARD_TLS:
    # Trusted because HAProxy sets X-Forwarded-Proto on every request, replacing the client's.
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = True
    # HAProxy checks the replicas directly over plain HTTP; a redirect would fail the check.
    SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]
    # A year: what browsers' HSTS preload lists ask for. Preloading is a promise for every
    # subdomain that is hard to take back; set SECURE_HSTS_PRELOAD=0 if that is not yours to give.
    SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 365 * 24 * 3600, minimum=0)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", True)
    SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", True)

# Switchboard's own layer (realtime/layer.py): Redis pub/sub like channels_redis' pub/sub layer,
# which, measured with 1000 clients and 2000 unthrottled pushes, lost none where the default
# RedisChannelLayer silently lost 33-44% to its per-channel capacity; plus confirmed
# subscriptions, per-process fan-out of pre-encoded frames, and resync after a Redis outage.
HEARTBEAT_SECS = env_int("HEARTBEAT_SECS", SB["HEARTBEAT_SECS"], minimum=1)
# How long a replica trusts an API token it has checked: revoking one takes up to this long.
API_TOKEN_CACHE_SECS = env_int("API_TOKEN_CACHE_SECS", SB["API_TOKEN_CACHE_SECS"], minimum=0)
# How long a replica remembers a username's id for the push API (realtime/user_directory.py).
API_USER_CACHE_SECS = env_int("API_USER_CACHE_SECS", SB["API_USER_CACHE_SECS"], minimum=0)
# "host:port" where this replica also serves the token publish API, past Daphne (the runner sets
# it per replica; haproxy.cfg's `publishers` backend points there).
PUBLISH_PORT_BIND = env_str("PUBLISH_PORT_BIND", SB["PUBLISH_PORT_BIND"])
# "host:port" where this replica also serves WebSockets, past Twisted and Autobahn (the runner
# sets it per replica; haproxy.cfg's `sockets` backend points there).
SOCKET_PORT_BIND = env_str("SOCKET_PORT_BIND", SB["SOCKET_PORT_BIND"])
# Frames waiting for one socket before further ones are dropped and fetched from history later.
DELIVERY_QUEUE_MAX_FRAMES = env_int(
    "DELIVERY_QUEUE_MAX_FRAMES", SB["DELIVERY_QUEUE_MAX_FRAMES"], minimum=1
)
# A socket written to by a fan-out less than this long ago gets its next frames together, at most
# this much after that write (realtime/direct_send.py): under broadcast load, several frames per
# send() instead of one halve the CPU of replicas, HAProxy and clients per delivery. Sockets not
# reached by a fan-out are never held. 0 writes every frame on the next loop turn.
SOCKET_WRITE_HOLD_MS = env_int("SOCKET_WRITE_HOLD_MS", SB["SOCKET_WRITE_HOLD_MS"], minimum=0)
# A client that stops reading makes the kernel's buffers fill, then the replica's own: past this
# many bytes waiting for one socket, the replica drops the connection, so one stuck client costs
# bounded memory. The client reconnects and resumes from history; nothing is lost within it.
SOCKET_BACKLOG_MAX_BYTES = env_int(
    "SOCKET_BACKLOG_MAX_BYTES", SB["SOCKET_BACKLOG_MAX_BYTES"], minimum=64 * 1024
)
# A replica runs Python's full garbage collections this often instead of whenever CPython's
# thresholds say (realtime/gc_policy.py): each one holds the event loop for tens of ms with many
# sockets open. 0 leaves CPython's automatic full collections on.
GC_FULL_COLLECT_SECS = env_int("GC_FULL_COLLECT_SECS", SB["GC_FULL_COLLECT_SECS"], minimum=0)
CHANNEL_LAYERS = {
    "default": channel_layer(
        REDIS_URLS or REDIS_URL,
        node=REPLICA_ID,
        capacity=DELIVERY_QUEUE_MAX_FRAMES,
        heartbeat_secs=HEARTBEAT_SECS,
        sentinels=REDIS_SENTINELS,
        sentinel_master=REDIS_SENTINEL_MASTER,
    )
}

# Stream history: at least this many messages per stream (Redis trims in whole nodes, so a
# few more may stay), and none older than this. A client away for longer resumes with
# recovered: false and reloads its state.
HISTORY_MAXLEN = env_int("HISTORY_MAXLEN", SB["HISTORY_MAXLEN"], minimum=10)
HISTORY_MAX_AGE_SECS = env_int("HISTORY_MAX_AGE_SECS", SB["HISTORY_MAX_AGE_SECS"], minimum=10)
# How long a publish's idempotency key (a client's message id) is remembered.
IDEMPOTENCY_TTL_SECS = env_int("IDEMPOTENCY_TTL_SECS", SB["IDEMPOTENCY_TTL_SECS"], minimum=60)

# --- Realtime tunables -------------------------------------------------------------------------
# 64 KiB: a chat line or a notification is far smaller; a larger client frame is refused with an
# error frame. Daphne itself closes the socket (1009) above 1 MiB.
MAX_CLIENT_FRAME_BYTES = env_int(
    "MAX_CLIENT_FRAME_BYTES", SB["MAX_CLIENT_FRAME_BYTES"], minimum=1024
)
# 64 KiB of JSON per published payload keeps one message from monopolising every socket.
MAX_PAYLOAD_BYTES = env_int("MAX_PAYLOAD_BYTES", SB["MAX_PAYLOAD_BYTES"], minimum=1024)
# How long a Redis call may take before the API gives up and answers 503.
REDIS_TIMEOUT_SECS = env_int("REDIS_TIMEOUT_SECS", SB["REDIS_TIMEOUT_SECS"], minimum=1)

# --- Limits: what one client may make us hold or do (realtime/limits.py) ------------------------
# Each is refused with a clear error frame or status; nobody else notices. Defaults are sized for
# the bundled pages and clients with room to spare, not for a flood.
# Frames a socket may send: 50 a second on average, bursts of 200 (a page with 50 streams acks
# each about once a second; a reconnect resends up to 100 unacknowledged publishes at once).
# A refused frame gets `rate_limited`; a socket that keeps sending past
# SOCKET_RATE_LIMIT_STRIKES refusals (one forgiven per second) is closed with 1008.
SOCKET_FRAMES_PER_SEC = env_float("SOCKET_FRAMES_PER_SEC", SB["SOCKET_FRAMES_PER_SEC"], minimum=1)
SOCKET_FRAME_BURST = env_int("SOCKET_FRAME_BURST", SB["SOCKET_FRAME_BURST"], minimum=1)
SOCKET_RATE_LIMIT_STRIKES = env_int(
    "SOCKET_RATE_LIMIT_STRIKES", SB["SOCKET_RATE_LIMIT_STRIKES"], minimum=1
)
# Publishes from one socket (a chat line, an app message): 10 a second, bursts of 100 (the
# bundled clients keep up to 100 unacknowledged publishes and resend them all on reconnect).
SOCKET_PUBLISHES_PER_SEC = env_float(
    "SOCKET_PUBLISHES_PER_SEC", SB["SOCKET_PUBLISHES_PER_SEC"], minimum=0.1
)
SOCKET_PUBLISH_BURST = env_int("SOCKET_PUBLISH_BURST", SB["SOCKET_PUBLISH_BURST"], minimum=1)
# Typing frames fanned out from one socket: one a second on average, bursts of 10 (the chat page
# sends one per 2.5 s while keys are pressed, and one as each new line starts). The rest are
# refused, not fanned out.
SOCKET_TYPING_PER_SEC = env_float(
    "SOCKET_TYPING_PER_SEC", SB["SOCKET_TYPING_PER_SEC"], minimum=0.01
)
SOCKET_TYPING_BURST = env_int("SOCKET_TYPING_BURST", SB["SOCKET_TYPING_BURST"], minimum=1)
# Streams one socket may hold (its own user stream and broadcast included): each costs a cursor,
# a group membership and presence entries.
MAX_STREAMS_PER_SOCKET = env_int("MAX_STREAMS_PER_SOCKET", SB["MAX_STREAMS_PER_SOCKET"], minimum=2)
# Open sockets of one user across the whole cluster (tabs, devices); the next is closed with
# 4429 (`too_many_sockets`), and clients retry later.
MAX_SOCKETS_PER_USER = env_int("MAX_SOCKETS_PER_USER", SB["MAX_SOCKETS_PER_USER"], minimum=1)
# Chat lines one user may post per minute, across every socket and replica.
CHAT_LINES_PER_MIN = env_int("CHAT_LINES_PER_MIN", 30, minimum=1)
# Rooms one (non-staff) user may have created: rows kept for good.
MAX_ROOMS_PER_USER = env_int("MAX_ROOMS_PER_USER", 20, minimum=1)
# History one socket may have replayed to it (resumes, subscribes from a position, repaired
# gaps): 32 MiB a minute, as a burst too. Past it, the replay goes on at that pace (nothing is
# lost) and the client is told once (`replay_limited`).
SOCKET_REPLAY_BYTES_PER_MIN = env_int(
    "SOCKET_REPLAY_BYTES_PER_MIN", SB["SOCKET_REPLAY_BYTES_PER_MIN"], minimum=1024 * 1024
)
# A replay reads history in batches of at most this many bytes (and 500 entries): with the
# socket's backlog (SOCKET_BACKLOG_MAX_BYTES) that is what a stuck replay can hold.
REPLAY_BATCH_BYTES = env_int("REPLAY_BATCH_BYTES", SB["REPLAY_BATCH_BYTES"], minimum=64 * 1024)
# How often each replica checks that its sockets' sessions still exist and have not expired
# (logout and deleted sessions close sockets at once; expiry is found by this timer).
SESSION_CHECK_SECS = env_float("SESSION_CHECK_SECS", SB["SESSION_CHECK_SECS"], minimum=1)

# --- The cluster view --------------------------------------------------------------------------
# Each replica publishes its stats to the staff-only `ops` stream this often; 0 turns it off.
OPS_INTERVAL_SECS = env_float("OPS_INTERVAL_SECS", 1.0)
# Presence: each socket refreshes its entries this often; an entry lives three beats, so a
# replica that dies without saying goodbye lets its users go offline within 15 s.
PRESENCE_HEARTBEAT_SECS = env_float("PRESENCE_HEARTBEAT_SECS", SB["PRESENCE_HEARTBEAT_SECS"])
SSE_HEARTBEAT_SECS = env_float("SSE_HEARTBEAT_SECS", SB["SSE_HEARTBEAT_SECS"])
# HAProxy's read-only stats page (CSV at <url>;csv): how a replica learns what HAProxy thinks of
# every replica (UP, DRAIN, MAINT, DOWN). Empty: the cluster view shows the state as unknown.
# With `http://user:password@host:port/` (percent-encoded), the replica logs in with basic auth.
# The credentials are taken out of the URL here, into settings that Django's error pages and
# reports hide by name (…PASS…), so the URL carries none wherever it is shown or logged.
_stats_url = urlsplit(env_str("HAPROXY_STATS_URL", ""))
HAPROXY_STATS_URL = _stats_url._replace(netloc=_stats_url.netloc.rpartition("@")[2]).geturl()
HAPROXY_STATS_USER = unquote(_stats_url.username or "")
HAPROXY_STATS_PASSWORD = unquote(_stats_url.password or "")

LOG_LEVEL = env_str("LOG_LEVEL", "INFO")
# "line" (readable) or "json" (one object a line, for a log pipeline).
LOG_FORMAT = env_str("LOG_FORMAT", "line")
if LOG_FORMAT not in ("line", "json"):
    raise ImproperlyConfigured(f"LOG_FORMAT is line or json, not {LOG_FORMAT!r}")
LOGGING: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "line": {"format": f"%(asctime)s %(levelname)s [{REPLICA_ID}] %(name)s: %(message)s"},
        # LOG_FORMAT=json: one JSON object a line, key=value pairs as fields (log_format.py).
        "json": {"()": "realtime.log_format.JsonLines", "replica": REPLICA_ID},
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "django.channels.server": {"level": "WARNING"},
        "daphne": {"level": "WARNING"},
        # Axes logs every login and logout at INFO; its failures and lockouts are WARNING.
        "axes": {"level": "WARNING"},
    },
}

# A project's own stream kinds (realtime/streams.py): {"order": {"key": r"[0-9]{1,18}",
# "can_read": "shop.realtime.can_watch_order", "can_publish": "…"}}; apps may also register
# theirs in AppConfig.ready() (the chat registers room:<slug>).
SWITCHBOARD_STREAM_KINDS: dict[str, dict[str, str]] = {}

# Connection tokens (realtime/connect_tokens.py): how long one is valid, the key it is signed
# with (empty: derived from SECRET_KEY) and the origins besides this site's own that may open a
# socket with one (a client with no Origin header, not a browser, always may).
CONNECT_TOKEN_TTL_SECS = env_int("CONNECT_TOKEN_TTL_SECS", SB["CONNECT_TOKEN_TTL_SECS"], minimum=10)
CONNECT_TOKEN_KEY = env_str("CONNECT_TOKEN_KEY", SB["CONNECT_TOKEN_KEY"])
CONNECT_TOKEN_ORIGINS = env_list("CONNECT_TOKEN_ORIGINS", [])

# --- Operating: metrics, readiness, drain, overload (docs/architecture.md, Replicas and HAProxy)
# GET /metrics (Prometheus) from another host needs `Authorization: Bearer <METRICS_TOKEN>`;
# empty, only this host and staff may read it (docs/monitoring.md).
METRICS_TOKEN = env_str("METRICS_TOKEN", SB["METRICS_TOKEN"])
# /readyz fails while the event loop runs later than this: HAProxy sends new clients elsewhere.
READY_MAX_LOOP_LAG_SECS = env_float("READY_MAX_LOOP_LAG_SECS", SB["READY_MAX_LOOP_LAG_SECS"])
# Draining (SIGTERM, `cluster drain`): sockets leave in slots spread over this many seconds.
DRAIN_WINDOW_SECS = env_float("DRAIN_WINDOW_SECS", SB["DRAIN_WINDOW_SECS"])
# Overload: sockets per replica process, and new sockets it accepts per second (1013 past them).
MAX_SOCKETS_PER_REPLICA = env_int(
    "MAX_SOCKETS_PER_REPLICA", SB["MAX_SOCKETS_PER_REPLICA"], minimum=1
)
MAX_CONNECTS_PER_SEC = env_float("MAX_CONNECTS_PER_SEC", SB["MAX_CONNECTS_PER_SEC"])
# History encrypted at rest: "k2:<base64 32 bytes>,k1:<…>", the first seals, any opens
# (realtime/sealing.py). A secret: from the environment only, never in a committed file.
HISTORY_ENCRYPTION_KEYS = env_list("HISTORY_ENCRYPTION_KEYS", [])

# The history archive (realtime/archive.py): messages of archived kinds (the chat's rooms) on
# their way to the database wait in a Redis queue of at most this many (publishers warn from
# 80 %); each replica's archiver writes them in INSERTs of ARCHIVE_BATCH_MESSAGES, looks every
# ARCHIVE_POLL_SECS when idle, and takes over a dead replica's after ARCHIVE_CLAIM_IDLE_SECS.
ARCHIVE_QUEUE_MAXLEN = env_int("ARCHIVE_QUEUE_MAXLEN", SB["ARCHIVE_QUEUE_MAXLEN"], minimum=1000)
ARCHIVE_BATCH_MESSAGES = env_int("ARCHIVE_BATCH_MESSAGES", SB["ARCHIVE_BATCH_MESSAGES"], minimum=1)
ARCHIVE_POLL_SECS = env_float("ARCHIVE_POLL_SECS", SB["ARCHIVE_POLL_SECS"], minimum=0.05)
ARCHIVE_CLAIM_IDLE_SECS = env_float(
    "ARCHIVE_CLAIM_IDLE_SECS", SB["ARCHIVE_CLAIM_IDLE_SECS"], minimum=1
)
