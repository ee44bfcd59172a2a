"""The fault harness: many reliable clients, many publishers, and a way to count what arrived.

Clients are `switchboard_client.RealtimeClient`s (reconnect, resume, de-duplication) spread over
the replicas by the SERVERID cookie. Publishers POST through HAProxy with an Idempotency-Key and
retry until they get an answer, as a careful producer does; so every message is published
exactly once even when its replica dies mid-request. Afterwards `verify()` compares what every
client holds, per stream, with what the publishers were told (stream, seq, epoch).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import threading
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field

import httpx

from devtools.cluster import Cluster
from switchboard_client import ClientOptions, RealtimeClient
from tests.cluster.helpers import api_token, sessions_for
from tests.conftest import manage
from tests.support.clients import origin_of

# Reconnects in a test should be quick, but still jittered and backed off.
HARNESS_CLIENT_OPTIONS = ClientOptions(
    backoff_base_secs=0.1, backoff_cap_secs=2.0, min_uptime_secs=2.0
)


@dataclass
class Delivered:
    """What one stream's publishes were told: seq -> (epoch, payload key)."""

    by_seq: dict[tuple[str, int], str] = field(default_factory=dict)

    def add(self, epoch: str, seq: int, key: str) -> None:
        self.by_seq[(epoch, seq)] = key


@dataclass
class Report:
    clients: int
    published: int
    expected_deliveries: int
    received: int
    gaps: int
    duplicates: int  # the same seq twice in what a client's application saw
    duplicates_dropped: int  # frames the server sent twice and the client's de-duplication dropped
    reorders: int
    mismatched: int
    resets: int
    reconnects: int

    def line(self) -> str:
        return json.dumps(self.__dict__)


class Harness:
    def __init__(self, cluster: Cluster, *, clients: int, rooms: int, prefix: str) -> None:
        self.cluster = cluster
        self.prefix = prefix
        self.client_count = clients
        self.room_streams = [f"room:{prefix}-{n}" for n in range(rooms)]
        self.clients: list[RealtimeClient] = []
        self.user_streams: list[str] = []
        self.published: dict[str, Delivered] = defaultdict(Delivered)
        self.start_positions: list[dict[str, tuple[str | None, int]]] = []
        self.token = api_token(cluster)
        self.rng = random.Random(1234)
        self.publish_failures = 0
        self._publishing: asyncio.Task[None] | None = None

    # --- setup -----------------------------------------------------------------------------------

    async def open_clients(self) -> None:
        slugs = [stream.split(":", 1)[1] for stream in self.room_streams]
        code = (
            "from chat.models import Room\n"
            f"for slug in {slugs!r}:\n"
            "    Room.objects.get_or_create(slug=slug, defaults={'title': slug})"
        )
        await asyncio.to_thread(manage, self.cluster, "shell", "-c", code)
        sessions = await asyncio.to_thread(
            sessions_for, self.cluster, self.client_count, self.prefix
        )
        replicas = self.cluster.replica_names
        for index, session in enumerate(sessions.values()):
            cookie = f"sessionid={session}; SERVERID={replicas[index % len(replicas)]}"
            self.clients.append(
                RealtimeClient(
                    self.cluster.ws_url,
                    cookie=cookie,
                    origin=origin_of(self.cluster.url),
                    streams=self.room_streams,
                    options=HARNESS_CLIENT_OPTIONS,
                    rng=random.Random(index),
                )
            )
        for batch in range(0, len(self.clients), 25):
            await asyncio.gather(*(c.start(timeout=30) for c in self.clients[batch : batch + 25]))
        wanted = 2 + len(self.room_streams)
        for client in self.clients:
            await client.wait_for(
                lambda c: len(c.positions) == wanted, timeout=20, what="subscriptions"
            )
        self.user_streams = [f"user:{client.user_id}" for client in self.clients]
        self.start_positions = [
            {stream: (pos.epoch, pos.seq) for stream, pos in client.positions.items()}
            for client in self.clients
        ]

    def plan(self, *, pushes: int, broadcasts: int, room_messages: int) -> list[str]:
        """A shuffled list of target streams: pushes to random users, broadcasts, room messages."""
        targets = [self.rng.choice(self.user_streams) for _ in range(pushes)]
        targets += ["broadcast"] * broadcasts
        targets += [self.room_streams[n % len(self.room_streams)] for n in range(room_messages)]
        self.rng.shuffle(targets)
        return targets

    # --- publishing ------------------------------------------------------------------------------

    def start_publishing(self, targets: list[str], *, via_manage: int = 0) -> Progress:
        """Publish in the background (see publish_all); `close()` stops it if a test fails."""
        progress = Progress()
        self._publishing = asyncio.create_task(
            self.publish_all(targets, via_manage=via_manage, progress=progress)
        )
        return progress

    async def publishing_done(self, *, timeout: float = 180) -> None:
        assert self._publishing is not None, "start_publishing() first"
        await asyncio.wait_for(self._publishing, timeout)

    async def publish_all(
        self,
        targets: list[str],
        *,
        concurrency: int = 8,
        via_manage: int = 0,
        progress: Progress | None = None,
        round_name: str = "",
    ) -> None:
        """Publish one message per target through random replicas (and `via_manage` of them with
        `manage.py publish` in a process of its own), each retried until it is answered. A
        further round of publishes needs a `round_name` of its own: the idempotency keys are
        the prefix, the round and the index."""
        queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        for index, stream in enumerate(targets):
            queue.put_nowait((stream, f"{self.prefix}{round_name}-{index}"))
        done = progress or Progress()

        async def http_worker(client: httpx.AsyncClient) -> None:
            while not queue.empty():
                stream, key = queue.get_nowait()
                await self._publish_http(client, stream, key)
                await done.advance()

        async def manage_worker(count: int) -> None:
            for _ in range(count):
                if queue.empty():
                    return
                stream, key = queue.get_nowait()
                await self._publish_manage(stream, key)
                await done.advance()

        async with httpx.AsyncClient(base_url=self.cluster.url, timeout=10) as client:
            await asyncio.gather(
                *(http_worker(client) for _ in range(concurrency)), manage_worker(via_manage)
            )

    async def _publish_http(self, client: httpx.AsyncClient, stream: str, key: str) -> None:
        deadline = time.monotonic() + 60
        replica = self.rng.choice(self.cluster.replica_names)
        headers = {
            "Authorization": f"Bearer {self.token}",
            "Idempotency-Key": key,
            "Cookie": f"SERVERID={replica}",
        }
        body = json.dumps({"stream": stream, "payload": {"k": key}})
        while True:
            try:
                response = await client.post("/api/publish", content=body, headers=headers)
                if response.status_code == 200:
                    answer = response.json()
                    self.published[stream].add(answer["epoch"], answer["seq"], key)
                    return
                assert response.status_code in (502, 503, 504), response.text
            except httpx.TransportError:
                pass
            self.publish_failures += 1
            if time.monotonic() > deadline:
                raise AssertionError(f"{stream} {key}: not published within 60 s")
            await asyncio.sleep(0.1)  # a replica or Redis is coming back: retry shortly

    async def _publish_manage(self, stream: str, key: str) -> None:
        result = await asyncio.to_thread(
            manage,
            self.cluster,
            "publish",
            "--stream",
            stream,
            "--idempotency-key",
            key,
            "--json",
            json.dumps({"k": key}),
        )
        answer = json.loads(result.stdout)
        self.published[stream].add(answer["epoch"], answer["seq"], key)

    # --- checking --------------------------------------------------------------------------------

    def heads(self) -> dict[str, tuple[str, int]]:
        """The live (epoch, last seq) per stream that was published to."""
        out = {}
        for stream, delivered in self.published.items():
            # The epoch of the publish answered last is the live one: publishes are recorded in
            # the order they were answered, and dicts keep insertion order.
            epoch = list(delivered.by_seq)[-1][0]
            out[stream] = (epoch, max(seq for e, seq in delivered.by_seq if e == epoch))
        return out

    @staticmethod
    def told_lost(client: RealtimeClient) -> set[str]:
        """The streams `client` was told it lost messages of (`resumed`, `recovered: false`)."""
        return {
            e["stream"]
            for e in client.events
            if e.get("type") == "resumed" and e.get("recovered") is False
        }

    def streams_of(self, index: int) -> list[str]:
        return [self.user_streams[index], "broadcast", *self.room_streams]

    async def wait_delivered(self, *, timeout: float = 60) -> None:
        heads = self.heads()

        def caught_up(client: RealtimeClient, index: int) -> bool:
            for stream in self.streams_of(index):
                if stream in heads:
                    position = client.positions.get(stream)
                    if position is None or (position.epoch, position.seq) != heads[stream]:
                        return False
            return True

        for index, client in enumerate(self.clients):
            await client.wait_for(
                lambda c, i=index: caught_up(c, i),
                timeout=timeout,
                what=f"client {index} (on {client.replica}) to catch up with "
                f"{[(s, heads.get(s)) for s in self.streams_of(index)]}; it holds "
                f"{[(s, client.positions.get(s)) for s in self.streams_of(index)]}, last events "
                f"{client.events[-4:]}",
            )

    def verify(self, *, epochs: str = "one") -> Report:
        """Count, per client and stream, gaps, duplicates, reorders and payload mismatches in
        the frames of the live epoch (`epochs="last"`) or of the one epoch there is."""
        heads = self.heads()
        expected = received = gaps = duplicates = reorders = mismatched = 0
        for index, client in enumerate(self.clients):
            for stream in self.streams_of(index):
                if stream not in heads:
                    continue
                epoch, head = heads[stream]
                start_epoch, start_seq = self.start_positions[index][stream]
                first = start_seq + 1 if start_epoch == epoch else 1
                frames = [f for f in client.received.get(stream, []) if f.get("epoch") == epoch]
                seqs = [int(f["seq"]) for f in frames]
                received += len(seqs)
                expected += head - first + 1
                duplicates += len(seqs) - len(set(seqs))
                reorders += sum(1 for a, b in itertools.pairwise(seqs) if b < a)
                gaps += len(set(range(first, head + 1)) - set(seqs))
                for frame in frames:
                    key = self.published[stream].by_seq.get((epoch, int(frame["seq"])))
                    if key is not None and frame["payload"] != {"k": key}:
                        mismatched += 1
                    if key is None and int(frame["seq"]) >= first:
                        mismatched += 1  # a message nobody in this test published
        return Report(
            clients=len(self.clients),
            published=sum(len(d.by_seq) for d in self.published.values()),
            expected_deliveries=expected,
            received=received,
            gaps=gaps,
            duplicates=duplicates,
            duplicates_dropped=sum(c.stats.duplicates_dropped for c in self.clients),
            reorders=reorders,
            mismatched=mismatched,
            resets=sum(c.stats.resets for c in self.clients),
            reconnects=sum(c.stats.connects - 1 for c in self.clients),
        )

    async def close(self) -> None:
        if self._publishing is not None:
            self._publishing.cancel()
        await asyncio.gather(*(client.close() for client in self.clients))


class Progress:
    """How many messages have been published: tests wait for a count, never for time."""

    def __init__(self) -> None:
        self.count = 0
        self._changed = asyncio.Condition()

    async def advance(self) -> None:
        async with self._changed:
            self.count += 1
            self._changed.notify_all()

    async def reached(self, count: int, *, timeout: float = 60) -> None:
        try:
            async with asyncio.timeout(timeout), self._changed:
                await self._changed.wait_for(lambda: self.count >= count)
        except TimeoutError:
            raise AssertionError(f"only {self.count} of {count} published in {timeout}s") from None


def unique_prefix(name: str) -> str:
    return f"{name}{uuid.uuid4().hex[:6]}"


class ConnectRateSampler:
    """Each replica's accepted connects, read from its /healthz ten times a second in a thread
    of its own: the busiest second any replica saw (a restarted replica's count starts again)."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.samples: dict[str, list[tuple[float, int]]] = defaultdict(list)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="connect-rate", daemon=True)

    def __enter__(self) -> ConnectRateSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            for name in self.cluster.replica_names:
                try:
                    stats = self.cluster.replica_health(name)["stats"]
                except (OSError, ValueError, KeyError):
                    continue  # down or restarting
                self.samples[name].append((time.monotonic(), int(stats["connections_total"])))  # type: ignore[index]

    def peak_per_sec(self) -> dict[str, int]:
        """Per replica, the most connects it accepted within any one second."""
        peaks = {}
        for name, series in self.samples.items():
            peak, start = 0, 0
            for end in range(len(series)):
                while series[end][0] - series[start][0] > 1.0:
                    start += 1
                gained = series[end][1] - series[start][1]
                peak = max(peak, gained)  # negative across a restart: not counted
            peaks[name] = peak
        return peaks
