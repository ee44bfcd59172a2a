"""manage.py bench — measure the cluster: fan-out, pushes, connects, a reconnect storm, and
(when named) a connection-churn soak.

Starts a cluster with the one runner (or uses --url), opens N real WebSocket clients through
HAProxy, runs the workloads (see devtools/bench/workloads.py), and prints progress on stderr,
then a table (and W5's verdict line) and one JSON line per workload on stdout. --baseline
stock, --limit and --peer socketio measure the same workloads against stock Channels, a raw
`websockets` server and a Socket.IO cluster (Redis adapter, behind the same HAProxy), as ratios.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from devtools.bench import inprocess, sealing, shards, workloads
from devtools.bench.clients import ClientPool
from devtools.bench.report import Progress, Result, churn_lines, json_line, ratios, table
from devtools.bench.socketio_peer import PeerUnavailable, start_socketio
from devtools.bench.targets import Target, external_cluster, start_cluster, start_limit
from devtools.cluster import read_state

logger = logging.getLogger(__name__)

WORKLOADS = ("W1", "W2", "W3", "W4", "W5")
# Other realtime servers measured with the same clients and workloads (--peer).
PEERS = ("socketio",)


class Command(BaseCommand):
    help = (
        "Benchmark the cluster: broadcast fan-out, pushes, connects, a reconnect storm and "
        "(W5, when named) a connection-churn memory soak."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--clients", type=int, default=1000, help="WebSocket clients (N).")
        parser.add_argument(
            "--messages", type=int, default=1000, help="Broadcasts in W1, pushes in W2 (M)."
        )
        parser.add_argument("--replicas", type=int, default=3)
        parser.add_argument(
            "--workloads",
            default="W1,W2,W3,W4",
            help="Comma-separated, of W1..W5. W5 (connection churn, a memory soak that waits for "
            "the replicas' full collections) runs only when named.",
        )
        parser.add_argument(
            "--concurrency", type=int, default=4, help="Publish requests in flight."
        )
        parser.add_argument(
            "--push-concurrency",
            type=int,
            default=16,
            help="W2: single pushes (one POST /api/push each) in flight.",
        )
        parser.add_argument(
            "--push-batch",
            type=int,
            default=20,
            help="W2b, after W2's single pushes: the same pushes, this many per POST "
            "/api/push/batch (--concurrency in flight); 1: no W2b.",
        )
        parser.add_argument(
            "--connect-concurrency", type=int, default=100, help="Handshakes in flight."
        )
        parser.add_argument(
            "--url", help="Measure the cluster at this URL instead of starting one."
        )
        parser.add_argument(
            "--cluster-dir",
            type=Path,
            default=settings.VAR_DIR / "cluster",
            help="With --url: the runner's run dir, whose cluster.json names the PIDs to measure.",
        )
        parser.add_argument("--baseline", choices=["stock"], help="Also measure stock Channels.")
        parser.add_argument(
            "--limit", action="store_true", help="Also measure a raw websockets server."
        )
        parser.add_argument(
            "--peer",
            action="append",
            choices=PEERS,
            default=[],
            help="Also measure this peer (repeatable): socketio is Socket.IO 4 with its Redis "
            "adapter, node replicas behind the same HAProxy (needs node and npm; W5 is skipped).",
        )
        parser.add_argument(
            "--rounds",
            type=int,
            default=1,
            help="Measure every target this many times, the targets taking turns (ours, then "
            "each other, then ours again), and give each ratio's median and range: on a "
            "shared machine one round's ratios move by a fifth from run to run.",
        )
        parser.add_argument(
            "--churn-rate",
            type=float,
            default=50.0,
            help="W5: short-lived sockets opened per second, across the cluster.",
        )
        parser.add_argument(
            "--churn-secs", type=float, default=60.0, help="W5: how long the churn runs."
        )
        parser.add_argument(
            "--churn-publish-rate",
            type=float,
            default=10.0,
            help="W5: broadcasts per second during the churn, and as many pushes to random users.",
        )
        parser.add_argument("--var-dir", type=Path, default=settings.VAR_DIR / "bench")
        parser.add_argument(
            "--redis-shards",
            default="",
            help="Also measure Redis CPU per publish per shard with these shard counts (1,3): "
            "redis-servers of the bench's own, the broker's publish script.",
        )
        parser.add_argument(
            "--inprocess",
            action="store_true",
            help="Also measure publishing from Django code in this process: sync and async calls "
            "per second and CPU per call (a redis-server of the bench's own).",
        )
        parser.add_argument(
            "--inprocess-calls", type=int, default=5000, help="With --inprocess: calls per row."
        )
        parser.add_argument(
            "--sealing",
            action="store_true",
            help="Also measure what HISTORY_ENCRYPTION_KEYS costs per message (in-process).",
        )
        parser.add_argument(
            "--shard-publishes",
            type=int,
            default=20_000,
            help="With --redis-shards: publishes per shard count.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["inprocess"]:
            self.stderr.write("measuring in-process publishing …")
            rows = inprocess.measure(options["inprocess_calls"], options["var_dir"] / "inprocess")
            for line in inprocess.lines(rows):
                self.stdout.write(line)
        if options["sealing"]:
            for line in sealing.lines(sealing.measure()):
                self.stdout.write(line)
        if options["redis_shards"]:
            self._shards(options)
        side = options["sealing"] or options["redis_shards"] or options["inprocess"]
        if side and options["workloads"] == "":
            return
        wanted = [w.strip().upper() for w in options["workloads"].split(",") if w.strip()]
        if unknown := set(wanted) - set(WORKLOADS):
            raise CommandError(
                f"Unknown workload(s) {sorted(unknown)}; pick from {', '.join(WORKLOADS)}."
            )
        if options["url"] and "W4" in wanted:
            raise CommandError(
                "W4 kills a replica, so it needs a cluster the bench starts (drop --url)."
            )
        if options["churn_rate"] <= 0 or options["churn_secs"] <= 0:
            raise CommandError("--churn-rate and --churn-secs must be above 0.")
        if options["concurrency"] < 1 or options["push_concurrency"] < 1:
            raise CommandError("--concurrency and --push-concurrency must be 1 or more.")
        if options["rounds"] < 1:
            raise CommandError("--rounds must be 1 or more.")
        if options["churn_publish_rate"] < 0:
            raise CommandError("--churn-publish-rate must be 0 or more.")
        names = (
            ["ours"]
            + (["stock"] if options["baseline"] else [])
            + (["limit"] if options["limit"] else [])
            + list(dict.fromkeys(options["peer"]))
        )
        results: list[Result] = []
        rounds = options["rounds"]
        for round_number in range(1, rounds + 1):
            if rounds > 1:
                self.stderr.write(f"round {round_number} of {rounds}")
            for name in list(names):
                try:
                    target = self._start(name, options)
                except PeerUnavailable as exc:
                    # A missing node must not cost the rest of the run (ours is already
                    # measured), nor be tried again each round.
                    self.stderr.write(f"skipping the {name} peer: {exc}")
                    names.remove(name)
                    continue
                try:
                    measured = asyncio.run(self._run(target, wanted, options))
                finally:
                    target.stop()
                for result in measured:
                    result.round = round_number
                results += measured
        self.stdout.write(table(results))
        for line in ratios(results) + churn_lines(results):
            self.stdout.write(line)
        for result in results:
            self.stdout.write(json_line(result))

    def _shards(self, options: dict[str, Any]) -> None:
        try:
            counts = [int(n) for n in options["redis_shards"].split(",") if n.strip()]
        except ValueError:
            raise CommandError("--redis-shards takes shard counts: 1,3") from None
        if not counts or min(counts) < 1:
            raise CommandError("--redis-shards takes shard counts of 1 or more: 1,3")
        self.stderr.write(f"measuring Redis per publish with {counts} shard(s) …")
        runs = shards.run(
            counts,
            publishes=options["shard_publishes"],
            in_flight=max(16, options["concurrency"]),
            var_dir=options["var_dir"] / "shards",
        )
        for line in shards.table(runs):
            self.stdout.write(line)

    def _start(self, name: str, options: dict[str, Any]) -> Target:
        clients, var_dir = options["clients"], options["var_dir"] / name
        self.stderr.write(f"starting {name} ({clients} clients) …")
        started = time.monotonic()
        if name == "limit":
            target: Target = start_limit(clients=clients, var_dir=var_dir)
        elif name == "socketio":
            target = start_socketio(replicas=options["replicas"], clients=clients, var_dir=var_dir)
        elif name == "ours" and options["url"]:
            state = read_state(options["cluster_dir"])
            if state is None:
                self.stderr.write(
                    f"no cluster.json in {options['cluster_dir']}: the cluster's CPU is not "
                    "measured (--cluster-dir names the runner's run dir)"
                )
            target = external_cluster(options["url"], clients=clients, state=state)
        else:
            target = start_cluster(
                name,
                replicas=options["replicas"],
                clients=clients,
                var_dir=var_dir,
                stock=name == "stock",
            )
        self.stderr.write(f"{name} is up in {time.monotonic() - started:.1f}s")
        return target

    async def _run(
        self, target: Target, wanted: list[str], options: dict[str, Any]
    ) -> list[Result]:
        pool = ClientPool(
            ws_url=target.ws_url,
            origin=target.origin,
            sessions=target.sessions,
            resumable=target.resumable,
            client_class=target.client_class,
        )
        if "W5" in wanted and target.name == "ours" and not target.replica_urls:
            raise CommandError(
                "W5 reads every replica's /healthz directly, not through HAProxy: with --url, "
                "--cluster-dir must hold the runner's cluster.json for that cluster."
            )
        ctx = workloads.Context(target, pool, Progress(), options["concurrency"])
        results = []
        try:
            connected = await workloads.connect(ctx, concurrency=options["connect_concurrency"])
            if "W3" in wanted:
                results.append(connected)
            if not pool.connected():
                raise CommandError(
                    f"{target.name}: no client could connect: {connected.extra['failures']}"
                )
            messages = options["messages"]
            await workloads.warm_up(ctx)
            if "W1" in wanted:
                results.append(await workloads.fan_out(ctx, messages=messages))
            if "W2" in wanted and target.can_push:
                # Single pushes first, then the same number batched: two rows, W2 and W2b.
                results.append(
                    await workloads.push(
                        ctx, messages=messages, concurrency=options["push_concurrency"]
                    )
                )
                if target.can_batch and options["push_batch"] > 1:
                    results.append(
                        await workloads.push_batches(
                            ctx, messages=messages, batch=options["push_batch"]
                        )
                    )
            # Before W4, which kills a replica and starts another in its place.
            if "W5" in wanted and target.name in PEERS:
                self.stderr.write(f"W5 skipped for {target.name}: it reads our replicas' /healthz")
            elif "W5" in wanted and target.replica_urls:
                results.append(
                    await workloads.churn(
                        ctx,
                        per_sec=options["churn_rate"],
                        secs=options["churn_secs"],
                        publish_per_sec=options["churn_publish_rate"],
                        # The replicas' setting, which bounds each wait for a collection: the
                        # ones the bench starts inherit this environment, and a --url cluster
                        # shares it (`make up` from this checkout).
                        gc_secs=settings.GC_FULL_COLLECT_SECS,
                    )
                )
            if "W4" in wanted and target.cluster is not None:
                results.append(await workloads.storm(ctx))
        finally:
            await pool.close()
        return results
