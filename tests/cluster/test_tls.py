"""`cluster up --tls`: HAProxy terminates TLS with a development certificate. Pages, the API
and sockets work over https and wss (the client trusting that certificate and no other), plain
HTTP is redirected, and the replicas answer as a TLS deployment does: HSTS, Secure cookies."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Iterator

import httpx
import pytest
from websockets.asyncio.client import connect

from devtools.cluster import Cluster
from tests.cluster.helpers import api_token, sessions_for
from tests.conftest import cluster_of_its_own

# One worker runs this module (make test: --dist loadgroup), so its module fixture starts once.
pytestmark = [pytest.mark.timeout(180), pytest.mark.xdist_group("tls")]


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with cluster_of_its_own(tmp_path_factory, "tls", replicas=1, tls=True) as cluster:
        yield cluster


def test_plain_http_is_redirected_and_https_answers_as_a_tls_deployment(
    tls_cluster: Cluster,
) -> None:
    cluster = tls_cluster
    assert cluster.certificate is not None and cluster.url.startswith("https://")
    plain = httpx.get(f"http://127.0.0.1:{cluster.http_port}/accounts/login/?next=/chat/")
    assert plain.status_code == 301
    assert plain.headers["location"] == f"{cluster.url}/accounts/login/?next=/chat/"
    trust = ssl.create_default_context(cafile=str(cluster.certificate.cert))
    page = httpx.get(f"{cluster.url}/accounts/login/", verify=trust)
    assert page.status_code == 200
    assert page.headers["strict-transport-security"].startswith("max-age=300")
    assert "secure" in page.headers["set-cookie"].lower()
    # Anyone's certificate store does not know it: only a client told to trust it connects.
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{cluster.url}/accounts/login/")


async def test_a_socket_over_wss_gets_a_push_sent_over_https(tls_cluster: Cluster) -> None:
    cluster = tls_cluster
    assert cluster.certificate is not None
    trust = ssl.create_default_context(cafile=str(cluster.certificate.cert))
    session = next(iter((await asyncio.to_thread(sessions_for, cluster, 1, "tls")).values()))
    token = await asyncio.to_thread(api_token, cluster)
    async with connect(
        cluster.ws_url,
        ssl=trust,
        origin=cluster.url,  # type: ignore[arg-type]
        additional_headers={"Cookie": f"sessionid={session}"},
    ) as socket:
        hello = json.loads(await socket.recv())
        assert hello["type"] == "hello"
        async with httpx.AsyncClient(verify=trust) as http:
            answer = await http.post(
                f"{cluster.url}/api/push",
                json={"user": hello["user"], "payload": "over tls"},
                headers={"Authorization": f"Bearer {token}"},
            )
        assert answer.status_code == 200, answer.text
        push = json.loads(await asyncio.wait_for(socket.recv(), 10))
        assert (push["type"], push["payload"]) == ("push", "over tls")
