"""Reading HAProxy's stats page when it asks for a password (compose's does)."""

from __future__ import annotations

import base64
import logging
import threading
import urllib.error
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from pytest_django.fixtures import Settings

from ops.reports import configured_haproxy_states, haproxy_states, haproxy_view

USER, PASSWORD = "stats", "p@ss:w/rd"
CSV = "# pxname,svname,scur,status,check_status,\nreplicas,d1,2,UP,L7OK,\n"


class StatsPage(BaseHTTPRequestHandler):
    """HAProxy's `stats auth`: 401 without the right basic-auth header."""

    expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    seen_paths: list[str] = []

    def do_GET(self) -> None:
        self.seen_paths.append(self.path)
        if self.headers.get("Authorization") != self.expected:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="HAProxy Statistics"')
            self.end_headers()
            return
        body = CSV.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def stats_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), StatsPage)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_stats_page_behind_a_password_is_read_with_basic_auth(stats_url: str) -> None:
    assert haproxy_states(stats_url, user=USER, password=PASSWORD) == {
        "d1": {"status": "UP", "check": "L7OK", "sessions": 2}
    }
    assert StatsPage.seen_paths[-1] == "/;csv"
    with pytest.raises(urllib.error.HTTPError) as refused:
        haproxy_states(stats_url)
    assert refused.value.code == 401


async def test_the_configured_credentials_are_used_and_never_logged(
    stats_url: str, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    # As project.settings leaves them after splitting http://stats:p%40ss%3Aw%2Frd@host/.
    settings.HAPROXY_STATS_URL = stats_url
    settings.HAPROXY_STATS_USER, settings.HAPROXY_STATS_PASSWORD = USER, PASSWORD
    assert configured_haproxy_states()["d1"]["status"] == "UP"

    settings.HAPROXY_STATS_PASSWORD = "wrong " + PASSWORD
    with caplog.at_level(logging.DEBUG, logger="ops.reports"):
        assert await haproxy_view() is None
    assert "401" in caplog.text
    assert PASSWORD not in caplog.text and USER + ":" not in caplog.text
