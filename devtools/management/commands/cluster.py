"""manage.py cluster up|status|down — the whole cluster as local processes.

up      start redis-server, N Daphne replicas and HAProxy; wait until HAProxy reports every
        server UP; print every process's log lines prefixed by its name; Ctrl-C stops it all.
        --detach leaves it running and returns (stop it with `down`).
status  what a detached cluster is running, and HAProxy's view of each replica.
down    stop a detached cluster, by the PIDs it recorded, in reverse order.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser

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


class Command(BaseCommand):
    help = "Run the cluster (Redis + Daphne replicas + HAProxy) as local processes."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("action", choices=["up", "status", "down"])
        parser.add_argument("--replicas", type=int, default=3)
        parser.add_argument("--port", type=int, default=8000, help="HAProxy's port.")
        parser.add_argument(
            "--redis-port",
            type=int,
            default=6390,
            help="6390, the default REDIS_URL, so `manage.py push` finds it.",
        )
        parser.add_argument("--stats-port", type=int, default=8404)
        parser.add_argument("--run-dir", type=Path, default=settings.VAR_DIR / "cluster")
        parser.add_argument(
            "--persist", action="store_true", help="Redis with an append-only file."
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
        else:
            self.up(options)

    def up(self, options: dict[str, Any]) -> None:
        run_dir: Path = options["run_dir"]
        state = read_state(run_dir)
        if state is not None and any(record_runs(p) for p in state["processes"]):
            raise CommandError(
                f"A cluster is already running from {run_dir}; `cluster down` first."
            )
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
                    access_log=options["access_log"],
                )
            )
        except ClusterError as exc:
            raise CommandError(str(exc)) from None
        follower = LogFollower(cluster, self.stdout.write)
        if not options["detach"]:
            follower.start()
        try:
            cluster.start()
        except ClusterError as exc:
            follower.stop()
            raise CommandError(f"The cluster did not start: {exc}") from None
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
        replicas = ", ".join(f"{n} :{p}" for n, p in cluster.replica_ports.items())
        return "\n".join(
            [
                "",
                f"Switchboard is up: {cluster.url}/  (log in as alice / alice-pass)",
                f"  admin        {cluster.url}/admin/  (admin / admin-pass)",
                f"  HAProxy      stats {cluster.stats_url}  runtime socket {cluster.admin_socket}",
                f"  replicas     {replicas}",
                f"  redis        {cluster.redis_url}",
                "  try          .venv/bin/python manage.py push --user alice 'hello'",
                "",
            ]
        )

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
