"""`manage.py bench`: load workloads against a real cluster, and the numbers they produce.

wire.py       lean WebSocket and HTTP/1.1 clients (cheap enough for 1000 sockets on one core)
clients.py    the client pool: sockets that connect, resume and count what they receive
procstat.py   CPU seconds and RSS of processes, from /proc
targets.py    what is measured: our cluster, the stock Channels cluster, the raw ceiling
workloads.py  W1 broadcast fan-out, W2 per-user push, W3 connect, W4 reconnect storm,
              W5 churn (a memory soak; only when named)
report.py     progress lines, the final table, one JSON line per workload
stock.py      the stock Channels configuration (`--baseline stock`)
limit.py      the raw `websockets` broadcast server (`--limit`)
"""
