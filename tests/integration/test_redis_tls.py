"""Redis over TLS: REDIS_URL=rediss://…?ssl_ca_certs=… reaches a redis-server that speaks only
TLS (its plain port off), for publishes, history and the layer's subscription alike; a client
that does not trust the server's certificate gets nothing."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
import redis

from devtools.cluster import ManagedProcess, free_port, wait_until
from devtools.tls import DevCertificate, dev_certificate
from realtime.broker import BrokerUnavailable, RedisBroker, StreamPolicy
from realtime.layer import StreamChannelLayer
from tests.conftest import require_binaries

POLICY = StreamPolicy(max_len=100, max_age_ms=60_000, idempotency_ttl_secs=60)


def _answers_tls(port: int, certificate: DevCertificate) -> bool:
    try:
        client = redis.Redis(
            port=port, ssl=True, ssl_ca_certs=str(certificate.cert), socket_timeout=1
        )
        return bool(client.ping())
    except redis.RedisError:
        return False


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[tuple[int, DevCertificate]]:
    require_binaries("redis-server")
    certificate = dev_certificate(tmp_path / "tls")
    port = free_port()
    argv = [
        "redis-server", "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
        "--tls-cert-file", str(certificate.cert), "--tls-key-file", str(certificate.key),
        "--tls-ca-cert-file", str(certificate.cert), "--tls-auth-clients", "no",
        "--save", "", "--appendonly", "no", "--dir", str(tmp_path),
    ]  # fmt: skip
    process = ManagedProcess(
        name="redis-tls", argv=argv, env=dict(os.environ), log_path=tmp_path / "redis.log",
        port=port,
    )  # fmt: skip
    process.start()
    try:
        wait_until(partial(_answers_tls, port, certificate), timeout=15, what="redis over TLS")
        yield port, certificate
    finally:
        process.stop()


async def test_publishes_history_and_subscriptions_go_over_tls(
    tls_redis: tuple[int, DevCertificate],
) -> None:
    port, certificate = tls_redis
    url = f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={certificate.cert}&ssl_cert_reqs=required"
    layer = StreamChannelLayer(hosts=[url], prefix=f"tls{uuid.uuid4().hex[:6]}", node="unit")
    received: asyncio.Queue[tuple[str, int]] = asyncio.Queue()

    class Sink:
        async def on_stream_frame(self, stream: str, seq: int, epoch: str, frame: str) -> None:
            received.put_nowait((stream, seq))

        async def on_resync(self, only: object = None) -> None:
            pass

    try:
        channel = await layer.new_channel()
        layer.add_sink(channel, Sink())
        await layer.group_add("user.5", channel)
        for n in (1, 2):
            await layer.broker.publish(
                stream="user:5",
                group="user.5",
                body=json.dumps({"type": "push", "stream": "user:5", "payload": n}),
                message_id=uuid.uuid4().hex,
                idempotency=None,
                policy=POLICY,
            )
        got = [await asyncio.wait_for(received.get(), 5) for _ in range(2)]
        assert got == [("user:5", 1), ("user:5", 2)]
        assert [seq for seq, _ in await layer.broker.read("user:5", after=0)] == [1, 2]
    finally:
        await layer.flush()


async def test_a_client_that_does_not_trust_the_certificate_gets_nothing(
    tls_redis: tuple[int, DevCertificate],
) -> None:
    port, certificate = tls_redis
    # The system's CA store, which does not hold the development certificate.
    broker = RedisBroker(f"rediss://127.0.0.1:{port}/0?ssl_cert_reqs=required")
    try:
        with pytest.raises(BrokerUnavailable, match="ConnectionError"):
            await broker.ping()
        # The handshake is what failed: the same server, trusted, answers.
        trusted = RedisBroker(
            f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={certificate.cert}&ssl_cert_reqs=required"
        )
        await trusted.ping()
        await trusted.close()
    finally:
        await broker.close()
