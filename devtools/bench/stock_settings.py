"""Settings of the stock baseline (`manage.py bench --baseline stock`): the project's own, with
channels_redis' default RedisChannelLayer and the stock publish path of devtools/bench/stock.py."""

from project.settings import *
from project.settings import REDIS_URL

# channels_redis' default layer, as its README configures it: one Redis list per channel.
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {"hosts": [REDIS_URL]},
    }
}
# The runner serves stock with realtime.serve too; CPython's own full collections, as stock has.
GC_FULL_COLLECT_SECS = 0
ROOT_URLCONF = "devtools.bench.stock"
ASGI_APPLICATION = "devtools.bench.stock_asgi.application"
