"""The workloads. Each returns a Result; none asserts anything (the smoke test does).

W3 connect        open every client through HAProxy; connections/s; RSS per connection
W1 fan-out        M broadcasts, as fast as the API accepts them; deliveries/s, latency, order
W2 push           M pushes to random users, one request each (--push-concurrency in flight);
                  pushes/s, latency, order
W2b push batches  the same M pushes, --push-batch per request (--concurrency in flight), where
                  the target has the batch endpoint
W4 storm          kill the replica holding most clients while broadcasting; time until all
                  are back and resumed; nothing may be lost
W5 churn          (only when named) short-lived sockets opened and closed, half without a close
                  handshake, while the pool receives; each replica's RSS and live per-socket
                  objects after a full collection, before and after: a soak for memory leaks
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from devtools.bench.clients import ClientPool, NoHello, open_briefly, wait_until
from devtools.bench.procstat import CpuWindow, rss_bytes
from devtools.bench.report import Progress, Result, percentiles
from devtools.bench.targets import Publisher, PublishError, Target
from devtools.bench.wire import HandshakeError

# How long deliveries may trail the last publish before the rest count as lost.
SETTLE_SECS = 30.0
# W4: broadcasts per second while a replica dies and its clients come back.
STORM_PUBLISH_PER_SEC = 50


@dataclass
class Context:
    target: Target
    pool: ClientPool
    progress: Progress
    concurrency: int  # publish requests in flight

    def cpu_window(self) -> CpuWindow:
        window = CpuWindow({**self.target.pids, "client": os.getpid()})
        window.start()
        return window

    def result(
        self,
        workload: str,
        messages: int,
        seconds: float,
        rate: float,
        unit: str,
        cpu: dict[str, float],
        **kwargs: object,
    ) -> Result:
        p50, p99, top = percentiles(self.pool.latencies)
        return Result(
            target=self.target.name,
            workload=workload,
            clients=len(self.pool.clients),
            messages=messages,
            seconds=round(seconds, 3),
            rate=round(rate, 1),
            rate_unit=unit,
            p50_ms=p50,
            p99_ms=p99,
            max_ms=top,
            cpu_secs=cpu,
            **kwargs,  # type: ignore[arg-type]
        )


Published = list[tuple[str, int]]  # (stream, seq) of each message one call published


async def publish_many(
    count: int, concurrency: int, publish: Callable[[int], Awaitable[Published]]
) -> tuple[dict[str, list[int]], list[str]]:
    """Call publish(0..count-1) with `concurrency` in flight; the seqs per stream, and errors."""
    numbers = iter(range(count))
    seqs: dict[str, list[int]] = {}
    errors: list[str] = []

    async def worker() -> None:
        for n in numbers:
            try:
                published = await publish(n)
            except (PublishError, OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
                errors.append(repr(exc)[:200])
                continue
            for stream, seq in published:
                seqs.setdefault(stream, []).append(seq)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return seqs, errors


def order_counts(pool: ClientPool, ranges: dict[str, tuple[int, int]]) -> tuple[int, int, int]:
    """(lost, dup, reorder) over every client's tracks of the streams in `ranges`."""
    lost = dup = reorder = 0
    for client in pool.clients:
        for stream, track in client.tracks.items():
            if stream in ranges:
                lost += track.lost_in(*ranges[stream])
                dup += track.dups
                reorder += track.reorders
    return lost, dup, reorder


def caught_up(pool: ClientPool, ranges: dict[str, tuple[int, int]]) -> Callable[[], bool]:
    subscribed = [
        (track, ranges[stream][1])
        for client in pool.clients
        for stream, track in client.tracks.items()
        if stream in ranges
    ]
    return lambda: all(track.last >= high and not track.missing for track, high in subscribed)


# --- W3 ----------------------------------------------------------------------------------------


async def connect(ctx: Context, *, concurrency: int) -> Result:
    target, pool = ctx.target, ctx.pool
    before = {name: rss_bytes(pid) for name, pid in target.replica_pids.items()}
    cpu = ctx.cpu_window()
    done = itertools.count(1)
    opened = 0

    def tick() -> None:
        nonlocal opened
        opened = next(done)

    started = time.monotonic()
    async with ctx.progress.ticking(
        lambda: f"W3 {target.name}: {opened}/{len(pool.clients)} connected"
    ):
        failures = await pool.connect_all(concurrency=concurrency, progress=tick)
    seconds = time.monotonic() - started
    used = cpu.stop()
    per_replica = pool.by_replica()
    kib_per_conn = {}
    for name, pid in target.replica_pids.items():
        after, first = rss_bytes(pid), before.get(name)
        if after is not None and first is not None and per_replica.get(name):
            kib_per_conn[name] = round((after - first) / per_replica[name] / 1024, 1)
    connected = len(pool.connected())
    worst = max(kib_per_conn.values()) if kib_per_conn else None
    return ctx.result(
        "W3",
        0,
        seconds,
        connected / seconds,
        "conn/s",
        used,
        extra={
            "connected": connected,
            "failed": len(failures),
            "max_kib_per_conn": worst,
            "kib_per_conn": kib_per_conn,
            "per_replica": per_replica,
            "failures": failures[:5],
        },
    )


# --- W1 and W2 ---------------------------------------------------------------------------------


async def _measure(
    ctx: Context,
    workload: str,
    messages: int,
    unit: str,
    calls: int,
    publish: Callable[[int], Awaitable[Published]],
    publisher: Publisher,
    concurrency: int,  # publish requests in flight
    **extra: object,
) -> Result:
    pool = ctx.pool
    pool.reset_counters()
    writes_before = await ctx.target.write_counts()
    cpu = ctx.cpu_window()
    published = 0

    async def counted(n: int) -> Published:
        nonlocal published
        answer = await publish(n)
        published += len(answer)
        return answer

    started_ms = time.time() * 1000

    def status() -> str:
        return (
            f"{workload} {ctx.target.name}: "
            f"published {published}/{messages}, delivered {pool.delivered}"
        )

    async with ctx.progress.ticking(status):
        try:
            seqs, errors = await publish_many(calls, concurrency, counted)
        finally:
            await publisher.close()
        publish_secs = time.time() * 1000 - started_ms
        ranges = {stream: (min(s), max(s)) for stream, s in seqs.items()}
        settled = await wait_until(caught_up(pool, ranges), timeout=SETTLE_SECS)
    last_ms = max((c.last_rx for c in pool.clients), default=started_ms)
    seconds = max(last_ms - started_ms, publish_secs) / 1000
    used = cpu.stop()
    writes_after = await ctx.target.write_counts()
    if writes_before is not None and writes_after is not None:
        writes = writes_after[0] - writes_before[0]
        frames = writes + writes_after[1] - writes_before[1]
        # Frames per send() on the replicas' fast path: above 1 when messages arrived together
        # and each socket got them in one write (realtime/transport/daphne.py).
        extra = {**extra, "frames_per_write": round(frames / writes, 2) if writes else None}
    lost, dup, reorder = order_counts(pool, ranges)
    sent = sum(len(s) for s in seqs.values())
    deliveries = pool.delivered
    rate = (deliveries if unit == "dlv/s" else sent) / seconds if seconds else 0.0
    return ctx.result(
        workload,
        messages,
        seconds,
        rate,
        unit,
        used,
        deliveries=deliveries,
        expected=_expected(pool, ranges),
        lost=lost,
        dup=dup,
        reorder=reorder,
        extra={
            "published": sent,
            "publish_errors": len(errors),
            "publish_per_sec": round(sent / (publish_secs / 1000), 1) if publish_secs else None,
            "settled": settled,
            "errors": errors[:3],
            **extra,
        },
    )


def _expected(pool: ClientPool, ranges: dict[str, tuple[int, int]]) -> int:
    """Deliveries owed: each published seq once to every client subscribed to its stream."""
    total = 0
    for client in pool.clients:
        for stream in client.tracks:
            if stream in ranges:
                low, high = ranges[stream]
                total += high - low + 1
    return total


async def fan_out(ctx: Context, *, messages: int) -> Result:
    publisher = ctx.target.publisher(ctx.concurrency)

    async def one(n: int) -> Published:
        return [await publisher.broadcast(n)]

    return await _measure(ctx, "W1", messages, "dlv/s", messages, one, publisher, ctx.concurrency)


async def push(ctx: Context, *, messages: int, concurrency: int) -> Result:
    """W2: M pushes to random users, one `POST /api/push` each, `concurrency` in flight."""
    publisher = ctx.target.publisher(concurrency)
    users = [client.username for client in ctx.pool.connected()]

    async def one(n: int) -> Published:
        return [await publisher.push(n, random.choice(users))]

    return await _measure(
        ctx, "W2", messages, "push/s", messages, one, publisher, concurrency, batch=1
    )


async def push_batches(ctx: Context, *, messages: int, batch: int) -> Result:
    """W2b: the same M pushes, `batch` per `POST /api/push/batch` (the last request takes the
    remainder), `--concurrency` in flight; only where the target has the batch endpoint."""
    publisher = ctx.target.publisher(ctx.concurrency)
    users = [client.username for client in ctx.pool.connected()]
    batch = max(1, min(batch, messages))
    calls = -(-messages // batch)

    async def one(n: int) -> Published:
        size = min(batch, messages - n * batch)
        return await publisher.push_batch(n, [random.choice(users) for _ in range(size)])

    return await _measure(
        ctx, "W2b", messages, "push/s", calls, one, publisher, ctx.concurrency, batch=batch
    )


async def warm_up(ctx: Context, *, messages: int = 20) -> None:
    """A few unmeasured broadcasts and pushes first: the first requests to a replica load the
    publish script, open Redis and database connections, and would otherwise count as latency."""
    publisher = ctx.target.publisher(ctx.concurrency)
    users = [client.username for client in ctx.pool.connected()]

    async def one(n: int) -> Published:
        if ctx.target.can_batch:
            return [await publisher.broadcast(n), *await publisher.push_batch(n, users[:2])]
        if ctx.target.can_push:
            return [await publisher.broadcast(n), await publisher.push(n, random.choice(users))]
        return [await publisher.broadcast(n)]

    try:
        seqs, _ = await publish_many(messages, ctx.concurrency, one)
    finally:
        await publisher.close()
    ranges = {stream: (min(s), max(s)) for stream, s in seqs.items()}
    await wait_until(caught_up(ctx.pool, ranges), timeout=SETTLE_SECS)


# --- W4 ----------------------------------------------------------------------------------------


def peak_rate(times_ms: list[float], window_ms: float = 1000.0) -> int:
    """The most events in any `window_ms` window."""
    ordered = sorted(times_ms)
    best = first = 0
    for last, at in enumerate(ordered):
        while at - ordered[first] > window_ms:
            first += 1
        best = max(best, last - first + 1)
    return best


async def storm(ctx: Context, *, timeout: float = 60.0) -> Result:
    target, pool = ctx.target, ctx.pool
    assert target.cluster is not None, "W4 needs a cluster started by the bench"
    pool.reset_counters()
    holding = pool.by_replica()
    victim = max(holding, key=lambda name: holding[name])
    dropped = [c for c in pool.connected() if c.replica == victim]
    publisher = target.publisher(4)
    cpu = ctx.cpu_window()
    # Per stream: the Socket.IO peer numbers each publishing replica's broadcasts apart.
    seqs: dict[str, list[int]] = {}
    errors: list[str] = []
    stop_publishing = asyncio.Event()

    async def publish_steadily() -> None:
        for n in itertools.count():
            if stop_publishing.is_set():
                return
            try:
                stream, seq = await publisher.broadcast(n)
                seqs.setdefault(stream, []).append(seq)
            except (PublishError, OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
                errors.append(repr(exc)[:200])
            await asyncio.sleep(1 / STORM_PUBLISH_PER_SEC)
            cpu.sample()

    pool.reconnect_on_drop = True
    publishing = asyncio.get_running_loop().create_task(publish_steadily())

    def back() -> int:
        return sum(1 for c in dropped if c.ready.is_set() and c.reconnects)

    try:
        await asyncio.sleep(1.0)  # some traffic before the kill, to see it continue across
        killed_ms = time.time() * 1000
        target.cluster.kill_replica(victim)
        async with ctx.progress.ticking(lambda: f"W4 {target.name}: {back()}/{len(dropped)} back"):
            resumed = await wait_until(lambda: back() == len(dropped), timeout=timeout)
            await asyncio.sleep(1.0)  # and some traffic after everyone is back
            stop_publishing.set()
            await publishing
            ranges = {stream: (min(s), max(s)) for stream, s in seqs.items()}
            # Without resume, what a dropped client missed never comes: no use waiting long.
            settle = SETTLE_SECS if pool.resumable else 3.0
            settled = await wait_until(caught_up(pool, ranges), timeout=settle)
    finally:
        stop_publishing.set()
        pool.reconnect_on_drop = False
        await publishing
        await publisher.close()
    used = cpu.stop()
    back_times = [c.ready_at for c in dropped if c.reconnects]
    resume_secs = (max(back_times) - killed_ms) / 1000 if back_times and resumed else None
    lost, dup, reorder = order_counts(pool, ranges)
    new_homes: dict[str, list[float]] = {}
    for client in dropped:
        if client.reconnects:
            new_homes.setdefault(client.replica or "?", []).append(client.ready_at)
    result = ctx.result(
        "W4",
        sum(len(s) for s in seqs.values()),
        (time.time() * 1000 - killed_ms) / 1000,
        len(dropped) / resume_secs if resume_secs else 0.0,
        "resume/s",
        used,
        deliveries=pool.delivered,
        expected=_expected(pool, ranges),
        lost=lost,
        dup=dup,
        reorder=reorder,
        extra={
            "killed": victim,
            "dropped": len(dropped),
            "back": back(),
            "resume_secs": round(resume_secs, 2) if resume_secs is not None else None,
            "peak_conn_per_sec": {name: peak_rate(t) for name, t in new_homes.items()},
            "unrecovered": pool.unrecovered,
            # False for the Socket.IO peer: what its dropped clients missed counts as lost.
            "resumable": pool.resumable,
            "publish_errors": len(errors),
            "settled": settled,
        },
    )
    target.cluster.start_replica(victim)
    return result


# --- W5 ----------------------------------------------------------------------------------------

# Churn sockets of one user open at once. With the user's pool socket that is far below
# MAX_SOCKETS_PER_USER (20 across the cluster), so no churn socket is refused for its user.
CHURN_SOCKETS_PER_USER = 3
# Churn sockets open or opening at once, whatever the pool's size: a bound for stalled
# handshakes; a healthy cluster holds about rate x 1.2 s of them.
CHURN_MAX_OPEN = 500
CHURN_LIFETIME_SECS = (0.2, 2.0)
# How often a replica's /healthz is read while waiting for a collection or for closes.
HEALTH_POLL_SECS = 0.5
# How long the last churn sockets' closes may take to reach their replicas' counts.
CONNECTIONS_SETTLE_SECS = 30.0
PUBLISH_ERRORS = (PublishError, OSError, asyncio.IncompleteReadError, TimeoutError)


@dataclass
class ReplicaReading:
    """A replica's memory as its /healthz reported it; `collected`: right after one of its
    timed full collections, so no garbage of closed sockets is left to count."""

    rss: int | None
    live: dict[str, int] | None  # per-socket objects alive, where the replica counts them
    connections: int | None
    collected: bool


def _full_collections(health: dict[str, Any] | None) -> int | None:
    stats = (health or {}).get("stats") or {}
    count = stats.get("gc_full_collections")
    return int(count) if count is not None else None


async def read_after_full_collection(target: Target, name: str, gc_secs: int) -> ReplicaReading:
    """Wait for the replica's next timed full collection, then read it. A replica without
    timed collections (stock, or GC_FULL_COLLECT_SECS=0) is read at once: it has no moment
    when its garbage is known to be gone."""
    health = await target.replica_health(name)
    first = _full_collections(health)
    collected = False
    if first is not None and gc_secs > 0:
        deadline = time.monotonic() + 2 * gc_secs + 10
        while not collected and time.monotonic() < deadline:
            await asyncio.sleep(HEALTH_POLL_SECS)
            health = await target.replica_health(name)
            collected = (_full_collections(health) or 0) > first
    health = health or {}
    rss = health.get("rss_bytes")
    if rss is None and name in target.replica_pids:
        rss = rss_bytes(target.replica_pids[name])  # stock's /healthz does not tell
    return ReplicaReading(rss, health.get("live_objects"), health.get("connections"), collected)


async def read_replicas(target: Target, gc_secs: int) -> dict[str, ReplicaReading]:
    """Every replica read after its next full collection, all waited for at once."""
    names = list(target.replica_urls)
    readings = await asyncio.gather(
        *(read_after_full_collection(target, name, gc_secs) for name in names)
    )
    return dict(zip(names, readings, strict=True))


async def connections_back(target: Target, before: dict[str, ReplicaReading]) -> bool | None:
    """Wait until no replica holds more sockets than before the churn (the pool's share, and
    anyone else's who stayed connected); None where /healthz does not count them (stock)."""
    wanted = {name: r.connections for name, r in before.items() if r.connections is not None}
    if not wanted:
        return None
    deadline = time.monotonic() + CONNECTIONS_SETTLE_SECS
    while True:
        now = [(await target.replica_health(name) or {}).get("connections") for name in wanted]
        if all(n is not None and n <= count for n, count in zip(now, wanted.values(), strict=True)):
            return True
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(HEALTH_POLL_SECS)


async def paced(per_sec: float, until: float) -> AsyncIterator[int]:
    """0, 1, 2… at `per_sec` until the monotonic time `until`. A late tick is made up by the
    next ones for at most a second: after a longer stall, no burst to catch up."""
    next_at = time.monotonic()
    for n in itertools.count():
        if (delay := next_at - time.monotonic()) > 0:
            await asyncio.sleep(delay)
        if time.monotonic() >= until:
            return
        yield n
        next_at = max(next_at + 1 / per_sec, time.monotonic() - 1.0)


class Churn:
    """Short-lived sockets through HAProxy at a pace, logged in as the pool's users in turn."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.churned = self.failed = self.aborted = self.open_now = 0
        self.landed: dict[str, int] = {}  # churn sockets per replica, as their hellos say
        self.failures: list[str] = []
        # Each user's session key CHURN_SOCKETS_PER_USER times, round-robin: a socket takes the
        # next free one and gives it back once closed, which bounds one user's churn sockets and
        # all of them together.
        self.slots: asyncio.Queue[str] = asyncio.Queue()
        keys = list(target.sessions.values()) * CHURN_SOCKETS_PER_USER
        for key in keys[:CHURN_MAX_OPEN]:
            self.slots.put_nowait(key)

    async def run(self, *, per_sec: float, until: float) -> None:
        """Open sockets at `per_sec` until `until`; return once the last has closed."""
        living: set[asyncio.Task[None]] = set()
        async for n in paced(per_sec, until):
            if self.slots.empty():
                try:  # every slot taken: handshakes are slow; the achieved rate shows it
                    key = await asyncio.wait_for(self.slots.get(), until - time.monotonic())
                except TimeoutError:
                    continue  # the pace ends at `until`
            else:
                key = self.slots.get_nowait()
            # Every other socket goes without a close handshake, as a crashed client's does.
            task = asyncio.get_running_loop().create_task(self._one(key, abort=n % 2 == 1))
            living.add(task)
            task.add_done_callback(living.discard)
        await asyncio.gather(*living)

    async def _one(self, key: str, *, abort: bool) -> None:
        self.open_now += 1
        try:
            replica = await open_briefly(
                self.target.ws_url,
                origin=self.target.origin,
                session_key=key,
                lifetime=random.uniform(*CHURN_LIFETIME_SECS),
                abort=abort,
            )
        except (OSError, HandshakeError, NoHello, TimeoutError) as exc:
            self.failed += 1
            if len(self.failures) < 5:
                self.failures.append(repr(exc)[:200])
        else:
            self.churned += 1
            self.aborted += abort
            self.landed[replica or "?"] = self.landed.get(replica or "?", 0) + 1
        finally:
            self.open_now -= 1
            self.slots.put_nowait(key)


async def publish_paced(
    publisher: Publisher, *, per_sec: float, until: float, users: list[str]
) -> tuple[dict[str, list[int]], list[str]]:
    """`per_sec` broadcasts a second until `until`, and as many pushes to random users; each
    call on a task of its own, so one slow answer delays no other (the publisher bounds the
    requests in flight). The seqs per stream, and errors."""
    seqs: dict[str, list[int]] = {}
    errors: list[str] = []

    async def one(call: Awaitable[tuple[str, int]]) -> None:
        try:
            stream, seq = await call
        except PUBLISH_ERRORS as exc:
            errors.append(repr(exc)[:200])
            return
        seqs.setdefault(stream, []).append(seq)

    calls: list[asyncio.Task[None]] = []
    if per_sec > 0:
        loop = asyncio.get_running_loop()
        async for n in paced(per_sec, until):
            calls.append(loop.create_task(one(publisher.broadcast(n))))
            if users:
                calls.append(loop.create_task(one(publisher.push(n, random.choice(users)))))
    await asyncio.gather(*calls)
    return seqs, errors


def live_growth(
    before: dict[str, int] | None, after: dict[str, int] | None
) -> dict[str, int] | None:
    """The kinds of per-socket object more numerous after than before (empty: every count is
    back); None where the replica does not count them."""
    if before is None or after is None:
        return None
    return {kind: n - before.get(kind, 0) for kind, n in after.items() if n > before.get(kind, 0)}


def replica_churn(landed: int, before: ReplicaReading, after: ReplicaReading) -> dict[str, Any]:
    growth = None
    if before.rss is not None and after.rss is not None:
        growth = after.rss - before.rss
    return {
        "churned": landed,
        "rss_growth_bytes": growth,
        "bytes_per_socket": round(growth / landed) if growth is not None and landed else None,
        "live_before": before.live,
        "live_after": after.live,
        "live_growth": live_growth(before.live, after.live),
        "collected": before.collected and after.collected,
    }


async def churn(
    ctx: Context, *, per_sec: float, secs: float, publish_per_sec: float, gc_secs: int
) -> Result:
    """W5. `gc_secs`: the replicas' GC_FULL_COLLECT_SECS, which bounds each wait for one."""
    target, pool = ctx.target, ctx.pool
    churner = Churn(target)
    phase = "waiting for every replica's next full collection (before)"

    def status() -> str:
        return (
            f"W5 {target.name}: {phase}; churned {churner.churned} (failed {churner.failed}, "
            f"open {churner.open_now}), delivered {pool.delivered}"
        )

    pool.reset_counters()
    async with ctx.progress.ticking(status):
        before = await read_replicas(target, gc_secs)
        cpu = ctx.cpu_window()
        publisher = target.publisher(ctx.concurrency)
        users = [client.username for client in pool.connected()] if target.can_push else []
        phase = "churning"
        until = time.monotonic() + secs
        try:
            (seqs, errors), _ = await asyncio.gather(
                publish_paced(publisher, per_sec=publish_per_sec, until=until, users=users),
                churner.run(per_sec=per_sec, until=until),
            )
        finally:
            await publisher.close()
        phase = "waiting for deliveries"
        ranges = {stream: (min(s), max(s)) for stream, s in seqs.items()}
        settled = await wait_until(caught_up(pool, ranges), timeout=SETTLE_SECS)
        used = cpu.stop()
        phase = "waiting for the churn sockets to be closed on the replicas"
        back = await connections_back(target, before)
        phase = "waiting for every replica's next full collection (after)"
        after = await read_replicas(target, gc_secs)
    per_replica = {
        name: replica_churn(churner.landed.get(name, 0), before[name], after[name])
        for name in before
    }
    growths = [r["live_growth"] for r in per_replica.values()]
    lost, dup, reorder = order_counts(pool, ranges)
    return ctx.result(
        "W5",
        sum(len(s) for s in seqs.values()),
        secs,
        churner.churned / secs,
        "sock/s",
        used,
        deliveries=pool.delivered,
        expected=_expected(pool, ranges),
        lost=lost,
        dup=dup,
        reorder=reorder,
        extra={
            "churned": churner.churned,
            "failed": churner.failed,
            "aborted": churner.aborted,
            "connections_back": back,
            "live_back": None if None in growths else not any(growths),
            "collected": all(r["collected"] for r in per_replica.values()),
            "publish_errors": len(errors),
            "settled": settled,
            "per_replica": per_replica,
            "failures": churner.failures,
        },
    )
