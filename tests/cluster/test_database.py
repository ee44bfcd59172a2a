"""The replicas share one database: the runner's own PostgreSQL under CI=true or
SB_TEST_DB=postgres (`cluster up --db postgres`), else the SQLite file in its var dir."""

from __future__ import annotations

import sqlite3
import uuid

import httpx
import psycopg

from devtools.cluster import Cluster, read_state, record_runs
from tests.cluster.helpers import sessions_for


def test_a_row_written_through_one_replica_is_read_through_another(
    healthy_cluster: Cluster,
) -> None:
    cluster = healthy_cluster
    key = sessions_for(cluster, 1, "dbcheck")["dbcheck0"]
    csrf = "c" * 32
    slug = f"db-{uuid.uuid4().hex[:8]}"
    cookies = f"sessionid={key}; csrftoken={csrf}; SERVERID="
    with httpx.Client(base_url=cluster.url, timeout=10) as client:
        made = client.post(
            "/chat/create/",
            data={"slug": slug, "title": "Written on d1", "csrfmiddlewaretoken": csrf},
            headers={"Cookie": cookies + "d1"},
        )
        assert made.status_code == 302 and made.headers["X-Replica"] == "d1", made.text
        seen = client.get(f"/chat/{slug}/", headers={"Cookie": cookies + "d2"})
        assert seen.status_code == 200 and seen.headers["X-Replica"] == "d2"
        assert "Written on d1" in seen.text

    query = "SELECT title FROM realtime_room WHERE slug = %s"
    if cluster.postgres is not None:
        state = read_state(cluster.run_dir)
        assert state is not None
        (server,) = [p for p in state["processes"] if p["name"] == "postgres"]
        assert record_runs(server) and server["port"] == cluster.postgres.port
        with psycopg.connect(cluster.postgres.url) as database:
            assert database.execute(query, [slug]).fetchall() == [("Written on d1",)]
    else:
        path = cluster.config.env["SWITCHBOARD_VAR_DIR"] + "/db.sqlite3"
        with sqlite3.connect(path) as database:
            assert database.execute(query.replace("%s", "?"), [slug]).fetchall() == [
                ("Written on d1",)
            ]
