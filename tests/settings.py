"""Settings for the test process itself (the cluster's replicas use project.settings)."""

import os

os.environ.setdefault("SECRET_KEY", "tests-only-secret-key")
os.environ.setdefault("SWITCHBOARD_VAR_DIR", "/tmp/switchboard-tests-var")

from project.settings import *

# Unit tests run consumers against the in-memory layer; integration and cluster tests point
# their own layers and processes at a real redis-server started by a fixture.
CHANNEL_LAYERS = {
    "default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}
}  # overridden per test
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # fast hashing in tests
LOGGING["loggers"].update({"httpx": {"level": "WARNING"}, "httpcore": {"level": "WARNING"}})
REPLICA_ID = "unit"
# The test process opens sockets as fast as its tests go: no per-process connect rate here
# (tests/integration/test_overload.py sets one).
MAX_CONNECTS_PER_SEC = 1_000_000.0
