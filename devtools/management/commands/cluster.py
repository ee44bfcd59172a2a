"""manage.py cluster up|status|down — the whole cluster as local processes.

up      start redis-server, N Daphne replicas and HAProxy; wait until HAProxy reports every
        server UP; print every process's log lines prefixed by its name; Ctrl-C stops it all.
        --detach leaves it running and returns (stop it with `down`).
        --db postgres: a PostgreSQL of its own first (devtools/postgres.py, its data kept in
        <run-dir>/postgres), migrated and given the demo users; SQLite by default.
status  what a detached cluster is running, and HAProxy's view of each replica.
down    stop a detached cluster, by the PIDs it recorded, in reverse order (each replica
        drains first: SIGTERM moves its sockets away in slots).
drain dX    take dX out (HAProxy maintenance) and move its sockets to the other replicas in
            reconnect slots spread over --window seconds (devtools/rolling.py).
undrain dX  take dX back once it is ready.
restart --rolling  drain, restart and re-admit each replica of a detached cluster in turn.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connection

from devtools import rolling
from devtools.cluster import (
    Cluster,
    ClusterConfig,
    ClusterError,
    LogFollower,
    haproxy_command,
    read_state,
    record_runs,
    stop_detached,
)
from devtools.postgres import PostgresError


class Command(BaseCommand):
    help = "Run the cluster (Redis + Daphne replicas + HAProxy) as local processes."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "action", choices=["up", "status", "down", "drain", "undrain", "restart"]
        )
        parser.add_argument("replica", nargs="?", help="drain, undrain: the replica (d1…).")
        parser.add_argument(
            "--rolling",
            action="store_true",
            help="restart: one replica at a time, each drained first (the only kind there is).",
        )
        parser.add_argument(
            "--window",
            type=float,
            default=None,
            help="drain, restart: seconds the reconnect slots are spread over (DRAIN_WINDOW_SECS).",
        )
        parser.add_argument("--replicas", type=int, default=3)
        parser.add_argument("--port", type=int, default=8000, help="HAProxy's port.")
        parser.add_argument(
            "--redis-port",
            type=int,
            default=6390,
            help="6390, the default REDIS_URL, so `manage.py push` finds it.",
        )
        parser.add_argument("--stats-port", type=int, default=8404)
        parser.add_argument(
            "--tls",
            action="store_true",
            help="HAProxy terminates TLS (https, wss) with a development certificate on "
            "--https-port; plain HTTP redirects there; the replicas run SWITCHBOARD_TLS=1.",
        )
        parser.add_argument("--https-port", type=int, default=8443)
        parser.add_argument("--run-dir", type=Path, default=settings.VAR_DIR / "cluster")
        parser.add_argument(
            "--persist", action="store_true", help="Redis with an append-only file."
        )
        parser.add_argument(
            "--redis",
            choices=["single", "sentinel"],
            default="single",
            help="sentinel: a primary on --redis-port, its replica and three sentinels.",
        )
        parser.add_argument(
            "--redis-shards",
            type=int,
            default=1,
            help="N redis-servers from --redis-port on, streams spread over them by name "
            "(REDIS_URLS).",
        )
        parser.add_argument(
            "--db",
            choices=["sqlite", "postgres"],
            default="sqlite",
            help="postgres: a local PostgreSQL, started, migrated and stopped with the cluster.",
        )
        parser.add_argument(
            "--postgres-port",
            type=int,
            default=5442,
            help="5442: beside any system PostgreSQL on 5432.",
        )
        parser.add_argument(
            "--hosts",
            type=int,
            default=1,
            help="Simulated app hosts: replicas bind to 127.0.0.2, 127.0.0.3, … in turn.",
        )
        parser.add_argument("--access-log", action="store_true", help="Daphne access logs.")
        parser.add_argument("--detach", action="store_true", help="Return once the cluster is up.")

    def handle(self, *args: Any, **options: Any) -> None:
        run_dir: Path = options["run_dir"]
        if options["action"] == "status":
            self.status(run_dir)
        elif options["action"] == "down":
            if not stop_detached(run_dir, say=self.stdout.write):
                self.stdout.write(f"No detached cluster recorded in {run_dir}.")
        elif options["action"] in ("drain", "undrain", "restart"):
            self.operate(run_dir, options)
        else:
            self.up(options)

    def operate(self, run_dir: Path, options: dict[str, Any]) -> None:
        state = read_state(run_dir)
        if state is None:
            raise CommandError(f"No detached cluster recorded in {run_dir}.")
        window = options["window"] if options["window"] is not None else settings.DRAIN_WINDOW_SECS
        try:
            if options["action"] == "restart":
                if not options["rolling"]:
                    raise CommandError("restart needs --rolling: replicas go one at a time.")
                rolling.restart_detached(run_dir, window_secs=window, say=self.stdout.write)
                return
            name = options["replica"]
            if not name:
                raise CommandError(f"Name the replica to {options['action']}: d1, d2, …")
            url = rolling.replica_address(state, name)
            if options["action"] == "drain":
                answer = rolling.drain(state["admin_socket"], url, name, window_secs=window)
                self.stdout.write(
                    f"{name} is draining: {answer['sockets']} socket(s) reconnect to other "
                    f"replicas over {answer['window_secs']:g} s; `cluster undrain {name}` takes "
                    "it back."
                )
            else:
                rolling.undrain(state["admin_socket"], url, name)
                self.stdout.write(f"{name} takes sockets again (HAProxy admits it once ready).")
        except (ClusterError, OSError) as exc:
            raise CommandError(str(exc)) from None

    def up(self, options: dict[str, Any]) -> None:
        run_dir: Path = options["run_dir"]
        state = read_state(run_dir)
        if state is not None and any(record_runs(p) for p in state["processes"]):
            raise CommandError(
                f"A cluster is already running from {run_dir}; `cluster down` first."
            )
        if options["db"] == "sqlite":  # the runner migrates a PostgreSQL of its own
            call_command("migrate", interactive=False, verbosity=0)
        try:
            cluster = Cluster(
                ClusterConfig(
                    replicas=options["replicas"],
                    http_port=options["port"],
                    redis_port=options["redis_port"],
                    stats_port=options["stats_port"],
                    run_dir=run_dir,
                    redis_persistence=options["persist"],
                    redis_mode=options["redis"],
                    redis_shards=options["redis_shards"],
                    tls=options["tls"],
                    https_port=options["https_port"],
                    hosts=options["hosts"],
                    db=options["db"],
                    postgres_port=options["postgres_port"],
                    access_log=options["access_log"],
                )
            )
        except (ClusterError, PostgresError) as exc:
            raise CommandError(str(exc)) from None
        follower = LogFollower(cluster, self.stdout.write)
        if not options["detach"]:
            follower.start()
        try:
            cluster.start()
        except (ClusterError, PostgresError) as exc:
            follower.stop()
            raise CommandError(f"The cluster did not start: {exc}") from None
        if cluster.postgres is not None:
            self.seed_demo(cluster)
        self.stdout.write(self.style.SUCCESS(self.banner(cluster)))
        if options["detach"]:
            self.stdout.write(f"Detached. Logs: {run_dir}/*.log. Stop: manage.py cluster down")
            return
        stopping = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stopping.set())
        while not stopping.wait(1):
            for process in cluster.processes.values():
                if process.popen is not None and process.popen.poll() is not None:
                    self.stderr.write(f"{process.name} exited with code {process.popen.returncode}")
                    process.popen = None
            if all(process.popen is None for process in cluster.processes.values()):
                break  # `cluster down` from another terminal stopped everything
        self.stdout.write("Stopping the cluster…")
        cluster.stop()
        follower.stop()
        self.stdout.write("Stopped; nothing is left running.")

    def banner(self, cluster: Cluster) -> str:
        replicas = ", ".join(
            f"{n} {cluster.replica_hosts[n]}:{p}" for n, p in cluster.replica_ports.items()
        )
        ports = ", ".join(
            f"{n} sockets {cluster.socket_binds[n]}"
            + (f" publish {cluster.publish_binds[n]}" if n in cluster.publish_binds else "")
            for n in cluster.socket_binds
        )
        return "\n".join(
            [
                "",
                f"Switchboard is up: {cluster.url}/  (log in as alice / alice-pass)",
                f"  admin        {cluster.url}/admin/  (admin / admin-pass)",
                f"  HAProxy      stats {cluster.stats_url}  runtime socket {cluster.admin_socket}",
                f"  replicas     {replicas}",
                *([f"  their ports  {ports}"] if ports else []),
                f"  redis        {self.redis_line(cluster)}",
                f"  database     {self.database_line(cluster)}",
                f"  try          {self.try_line(cluster)}",
                *(
                    [
                        f"  tls          development certificate {cluster.certificate.cert} "
                        f"(curl --cacert it; a browser asks once); http://127.0.0.1:"
                        f"{cluster.http_port}/ redirects here"
                    ]
                    if cluster.certificate is not None
                    else []
                ),
                "",
            ]
        )

    def try_line(self, cluster: Cluster) -> str:
        """A command to run by hand, with the environment it needs to reach this cluster (the
        settings' defaults reach `make run`'s: Redis on 6390, the SQLite file in var/)."""
        env = cluster.command_env()
        as_now = {
            "REDIS_URL": settings.REDIS_URL,
            "REDIS_URLS": ",".join(settings.REDIS_URLS),
            "REDIS_SENTINELS": ",".join(settings.REDIS_SENTINELS),
            "REDIS_SENTINEL_MASTER": settings.REDIS_SENTINEL_MASTER,
            "DATABASE_URL": os.environ.get("DATABASE_URL", ""),
        }
        needed = [f"{name}={env[name]}" for name in as_now if env.get(name, "") != as_now[name]]
        return " ".join([*needed, ".venv/bin/python manage.py push --user alice 'hello'"])

    def redis_line(self, cluster: Cluster) -> str:
        group = cluster.sentinel_group
        if len(cluster.redis_urls) > 1:
            ports = ", ".join(f":{port}" for port in cluster.shard_ports)
            return f"{len(cluster.redis_urls)} shards {ports} (REDIS_URLS)"
        if group is None:
            return cluster.redis_url
        return (
            f"primary :{group.primary_port}, replica :{group.replica_port}, "
            f"sentinels {group.sentinels_setting} (REDIS_SENTINELS)"
        )

    def database_line(self, cluster: Cluster) -> str:
        if cluster.postgres is None:
            return f"{connection.vendor} {connection.settings_dict['NAME']}"
        # Commands run by hand reach it with this URL; it stays the same from run to run.
        return f"PostgreSQL :{cluster.postgres.port}  DATABASE_URL={cluster.postgres.url}"

    def seed_demo(self, cluster: Cluster) -> None:
        """The demo users in the runner's PostgreSQL, as `make install` makes them in SQLite."""
        done = subprocess.run(
            [sys.executable, "manage.py", "seed_demo"],
            cwd=settings.BASE_DIR,
            env=cluster.command_env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        if done.returncode != 0:
            self.stderr.write(f"seed_demo failed; no demo users:\n{done.stdout}{done.stderr}")

    def status(self, run_dir: Path) -> None:
        state = read_state(run_dir)
        if state is None:
            self.stdout.write(f"No detached cluster recorded in {run_dir}.")
            return
        self.stdout.write(f"{state['url']}  (stats {state['stats_url']})")
        for entry in state["processes"]:
            alive = "running" if record_runs(entry) else "NOT RUNNING"
            self.stdout.write(
                f"  {entry['name']:<8} pid {entry['pid']!s:<8} :{entry['port']:<6} {alive}"
            )
        try:
            answer = haproxy_command(state["admin_socket"], "show stat")
            self.stdout.write("HAProxy's view:")
            for line in answer.splitlines()[1:]:
                fields = line.split(",")
                if fields[0] == "replicas" and fields[1] not in ("BACKEND", "FRONTEND"):
                    self.stdout.write(f"  {fields[1]:<8} {fields[17]:<10} sessions {fields[4]}")
        except OSError as exc:
            self.stdout.write(f"HAProxy's admin socket did not answer: {exc}")
