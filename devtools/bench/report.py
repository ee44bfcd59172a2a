"""Results: one per workload and target, shown as progress lines, a table and JSON lines."""

from __future__ import annotations

import asyncio
import contextlib
import json
import statistics
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, TextIO

from devtools.cluster import is_replica_name


@dataclass
class Result:
    target: str  # ours, stock, limit, socketio
    workload: str  # W1, W2 (single pushes), W2b (batched pushes), W3, W4, W5
    clients: int
    messages: int
    seconds: float
    # deliveries/s (W1), pushes/s (W2, W2b), connections/s (W3), resumes/s (W4), churned sockets/s
    # (W5)
    rate: float
    rate_unit: str
    deliveries: int = 0
    expected: int = 0
    p50_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None
    lost: int = 0
    dup: int = 0
    reorder: int = 0
    cpu_secs: dict[str, float] = field(default_factory=dict)  # per process
    extra: dict[str, Any] = field(default_factory=dict)
    round: int = 1  # which of the run's rounds (bench --rounds) measured it

    @property
    def replica_cpu(self) -> float:
        # The raw ceiling's one process ("limit") is its replica.
        return sum(v for k, v in self.cpu_secs.items() if is_replica_name(k) or k == "limit")

    @property
    def replica_us_per_delivery(self) -> float | None:
        if not self.deliveries or not self.cpu_secs:
            return None
        return round(self.replica_cpu / self.deliveries * 1e6, 1)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["replica_cpu_secs"] = round(self.replica_cpu, 3)
        data["replica_cpu_us_per_delivery"] = self.replica_us_per_delivery
        return {"bench": "switchboard", **data}


def percentiles(latencies: Sequence[float]) -> tuple[float | None, float | None, float | None]:
    if not latencies:
        return None, None, None
    ordered = sorted(latencies)
    last = len(ordered) - 1
    return (
        round(ordered[last // 2], 1),
        round(ordered[min(last, int(last * 0.99))], 1),
        round(ordered[last], 1),
    )


class Progress:
    """One status line per second on stderr while a workload runs."""

    def __init__(self, stream: TextIO = sys.stderr) -> None:
        self.stream = stream
        self.tty = stream.isatty()

    def say(self, text: str) -> None:
        if self.tty:
            self.stream.write("\r\033[K" + text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def done(self) -> None:
        if self.tty:
            self.stream.write("\n")

    @contextlib.asynccontextmanager
    async def ticking(self, status: Callable[[], str], every: float = 1.0) -> AsyncIterator[None]:
        started = time.monotonic()

        async def tick() -> None:
            while True:
                await asyncio.sleep(every)
                self.say(f"[{time.monotonic() - started:5.1f}s] {status()}")

        task = asyncio.get_running_loop().create_task(tick())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            self.done()


def _num(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def table(results: list[Result]) -> str:
    header = (
        f"{'target':<8} {'wl':<3} {'clients':>7} {'msgs':>6} {'secs':>6} {'rate':>9} {'unit':<8} "
        f"{'p50ms':>7} {'p99ms':>7} {'maxms':>7} {'lost':>5} {'dup':>4} {'reord':>5} "
        f"{'cpu:repl':>8} {'redis':>6} {'hapx':>6} {'client':>6} {'us/dlv':>7}  notes"
    )
    lines = [header, "-" * len(header)]
    several_rounds = any(r.round > 1 for r in results)
    for r in results:
        notes = " ".join(f"{k}={v}" for k, v in r.extra.items() if not isinstance(v, dict | list))
        if several_rounds:
            notes = f"round={r.round} {notes}"
        lines.append(
            f"{r.target:<8} {r.workload:<3} {r.clients:>7} {r.messages:>6} {r.seconds:>6.2f} "
            f"{_num(r.rate):>9} {r.rate_unit:<8} {_num(r.p50_ms, 1):>7} {_num(r.p99_ms, 1):>7} "
            f"{_num(r.max_ms, 1):>7} {r.lost:>5} {r.dup:>4} {r.reorder:>5} "
            f"{r.replica_cpu:>8.2f} {r.cpu_secs.get('redis', 0):>6.2f} "
            f"{r.cpu_secs.get('haproxy', 0):>6.2f} {r.cpu_secs.get('client', 0):>6.2f} "
            f"{_num(r.replica_us_per_delivery, 1):>7}  {notes}"
        )
    return "\n".join(lines)


def ratios(results: list[Result]) -> list[str]:
    """Ours as a ratio to stock, the limit and the Socket.IO peer, for the figures the issue's
    targets name. Each ratio pairs the two targets' rows of the same round (bench --rounds: the
    targets take turns, so a round's two rows ran closest in time); with several rounds, the
    line gives each ratio's median and its lowest and highest round."""
    found = {(r.target, r.workload, r.round): r for r in results}
    rounds = sorted({r.round for r in results})
    lines = []
    for other in ("stock", "limit", "socketio"):
        for workload in ("W1", "W2", "W2b", "W3"):
            pairs = [
                (ours, them)
                for n in rounds
                if (ours := found.get(("ours", workload, n))) is not None
                and (them := found.get((other, workload, n))) is not None
                and them.rate
            ]
            if not pairs:
                continue
            if len(rounds) == 1:
                [(ours, them)] = pairs
                figures = ", ".join(
                    f"{label} x{value:.2f}{detail}" for label, value, detail in _figures(ours, them)
                )
                lines.append(f"ours/{other} {workload}: {figures}")
                continue
            by_label: dict[str, list[float]] = {}
            for ours, them in pairs:
                for label, value, _ in _figures(ours, them):
                    by_label.setdefault(label, []).append(value)
            figures = ", ".join(
                f"{label} x{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"
                for label, values in by_label.items()
            )
            lines.append(
                f"ours/{other} {workload}, median of {len(pairs)} round"
                f"{'s' if len(pairs) > 1 else ''} (lowest-highest): " + figures
            )
    return lines


def _figures(ours: Result, them: Result) -> list[tuple[str, float, str]]:
    """(label, ours/them, the two values when worth showing) for one pair of rows."""
    figures = [("rate", ours.rate / them.rate, "")]
    if ours.replica_us_per_delivery and them.replica_us_per_delivery:
        cpu_ratio = ours.replica_us_per_delivery / them.replica_us_per_delivery
        figures.append(("server CPU per delivery", cpu_ratio, ""))
    if ours.p99_ms is not None and them.p99_ms:
        figures.append(("p99", ours.p99_ms / them.p99_ms, ""))
    if ours.workload == "W3":
        figures += _connect_figures(ours, them)
    return figures


def _connect_figures(ours: Result, them: Result) -> list[tuple[str, float, str]]:
    """W3's server CPU per connect and memory per socket (the busiest replica's)."""
    figures = []
    connected: tuple[int, int] = (
        ours.extra.get("connected") or 0,
        them.extra.get("connected") or 0,
    )
    if all(connected) and ours.replica_cpu and them.replica_cpu:
        per_connect = [r.replica_cpu / n for r, n in zip((ours, them), connected, strict=True)]
        detail = f" ({per_connect[0] * 1000:.2f} ms against {per_connect[1] * 1000:.2f} ms)"
        figures.append(("server CPU per connect", per_connect[0] / per_connect[1], detail))
    kib: tuple[float, float] = (
        ours.extra.get("max_kib_per_conn") or 0.0,
        them.extra.get("max_kib_per_conn") or 0.0,
    )
    if all(kib):
        detail = f" ({kib[0]} KiB against {kib[1]} KiB)"
        figures.append(("memory per socket", kib[0] / kib[1], detail))
    return figures


def churn_lines(results: list[Result]) -> list[str]:
    """W5 in one line per target: what the churn left on the replicas, and what it cost the
    pool. The table's columns are about throughput; this is the soak's verdict."""
    return [_churn_line(r) for r in results if r.workload == "W5"]


def _churn_line(result: Result) -> str:
    extra = result.extra
    replicas = list(extra.get("per_replica", {}).items())
    measured = [r for _, r in replicas if r["rss_growth_bytes"] is not None]
    if measured:
        growth = sum(r["rss_growth_bytes"] for r in measured)
        churned = sum(r["churned"] for r in measured)
        rss = f"RSS {growth / len(measured) / 2**20:+.2f} MiB/replica"
        if churned:
            rss += f" ({growth / churned:+,.0f} B/socket)"
    else:
        rss = "RSS not reported"
    if extra.get("live_back") is None:
        live = "not counted"
    elif extra["live_back"]:
        live = "yes"
    else:
        grown = [
            f"{name} {kind} +{count}"
            for name, r in replicas
            for kind, count in (r["live_growth"] or {}).items()
        ]
        live = f"no ({', '.join(grown)})"
    notes = []
    if extra.get("connections_back") is False:
        notes.append("connections not back")
    if not extra.get("collected", True):
        notes.append("no full collection seen: RSS includes garbage")
    return (
        f"W5 {result.target} churn: {extra['churned']:,} sockets ({extra['failed']} failed), "
        f"{rss}, live objects back: {live}, "
        f"lost {result.lost} dup {result.dup} reorder {result.reorder}"
        + "".join(f"; {note}" for note in notes)
    )


def json_line(result: Result) -> str:
    return json.dumps(result.as_dict(), separators=(",", ":"))
