"""Switchboard as a project installs it: the wheels built from this repository, installed into a
fresh virtualenv with examples/shop (a `django-admin startproject` plus one app), two replicas
started from that virtualenv, and a message delivered from one replica to a socket on the other.

Nothing from the repository is importable there: the replicas and the client run outside it, so
a module, template, Lua script or migration left out of a wheel fails here.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import venv
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from devtools.cluster import ManagedProcess, free_port, wait_until
from tests.conftest import BASE_DIR
from tests.support.clients import WsClient

# One worker runs this module (make test: --dist loadgroup), so its module fixture starts once.
pytestmark = pytest.mark.xdist_group("package")

EXAMPLE = BASE_DIR / "examples" / "shop"
REPLICAS = ("r1", "r2")

# Run by the fresh virtualenv's Python: a token holder's socket on one replica, printing what it
# receives on `stream` as JSON lines ("ready" once subscribed, so the test publishes after).
WATCHER = """
import asyncio, json, sys
from switchboard_client import RealtimeClient

async def main():
    url, token, stream, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    client = RealtimeClient(url, token=token, streams=[stream])
    await client.start()
    subscribed = lambda c: any(
        e.get("type") == "subscribed" and e.get("stream") == stream for e in c.events
    )
    await client.wait_for(subscribed, timeout=20)
    print(json.dumps({"ready": client.replica}), flush=True)
    await client.wait_for(lambda c: len(c.received[stream]) >= count, timeout=30)
    for frame in client.received[stream]:
        print(json.dumps(frame), flush=True)
    await client.close()

asyncio.run(main())
"""


@dataclass
class InstalledShop:
    python: Path
    project: Path
    env: dict[str, str]
    urls: dict[str, str]  # replica -> http://127.0.0.1:<port>

    def manage(self, *args: str) -> str:
        done = subprocess.run(
            [str(self.python), "manage.py", *args],
            cwd=self.project,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, f"manage.py {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
        return done.stdout


# What a build needs none of: copying them would be slow, and some change while other tests run.
_NOT_COPIED = shutil.ignore_patterns(
    ".git", ".venv", "node_modules", "__pycache__", "var", "test-artifacts", "build", "dist",
    "*.egg-info", ".mypy_cache", ".ruff_cache", ".pytest_cache",
)  # fmt: skip


def _build_wheels(out: Path) -> list[Path]:
    """The two wheels, each built from a copy of its sources: setuptools writes its work folders
    (build/, *.egg-info) next to the sources, and in the repository another test worker's
    imports and builds meet them (a manifest vanished under a build there)."""
    copies = out.parent / "sources"
    shutil.copytree(BASE_DIR, copies / "realtime", ignore=_NOT_COPIED)
    # --no-isolation: the build backend (setuptools) comes from our virtualenv, no download.
    for source in (copies / "realtime", copies / "realtime" / "clients" / "python"):
        done = subprocess.run(
            [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out)],
            cwd=source,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert done.returncode == 0, done.stdout + done.stderr
    return sorted(out.glob("*.whl"))


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[InstalledShop]:
    root = tmp_path_factory.mktemp("installed")
    wheels = _build_wheels(root / "wheels")
    names = sorted(wheel.name.split("-")[0] for wheel in wheels)
    assert names == ["switchboard_client", "switchboard_realtime"]
    venv.create(root / "venv", with_pip=True)
    python = root / "venv" / "bin" / "python"
    # Our pinned versions as constraints: the packages' own ranges decide what is allowed, this
    # run stays reproducible. --no-compile: Python compiles what it imports anyway, and compiling
    # every module of Django and Twisted up front was a third of the install's time.
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-compile",
         "-c", str(BASE_DIR / "requirements.txt"), *map(str, wheels)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert install.returncode == 0, install.stdout + install.stderr
    project = root / "shop"
    shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns("db.sqlite3", "__pycache__"))
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(root),
        "SECRET_KEY": "package-test-" + os.urandom(16).hex(),
        "REDIS_URL": redis_url,
        "SHOP_DB": str(root / "shop.sqlite3"),
        "DJANGO_SETTINGS_MODULE": "shop.settings",
    }
    urls = {replica: f"http://127.0.0.1:{free_port()}" for replica in REPLICAS}
    installed = InstalledShop(python, project, env, urls)
    installed.manage("migrate", "--noinput", "-v0")
    replicas = []
    for replica, url in urls.items():
        port = int(url.rsplit(":", 1)[1])
        process = ManagedProcess(
            name=replica,
            argv=[str(python), "-m", "realtime.serve", "--port", str(port),
                  "--bind", "127.0.0.1", "shop.asgi:application"],
            env={**env, "REPLICA_ID": replica},
            log_path=root / f"{replica}.log",
            port=port,
            cwd=project,
        )  # fmt: skip
        process.start()
        replicas.append(process)
    try:
        for replica, url in urls.items():
            wait_until(lambda url=url: _healthy(url), timeout=60, what=f"{replica} /healthz")
        yield installed
    finally:
        for process in replicas:
            process.stop()


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _connect_token(shop: InstalledShop, api_token: str, user: str, replica: str) -> str:
    answer = httpx.post(
        f"{shop.urls[replica]}/api/connect-token",
        json={"user": user},
        headers={"Authorization": f"Bearer {api_token}"},
        timeout=10,
    )
    assert answer.status_code == 200, answer.text
    return str(answer.json()["token"])


def test_the_wheels_hold_the_app_and_not_the_demo(shop: InstalledShop) -> None:
    code = (
        "import importlib.util as u, realtime, switchboard_client;"
        "print(realtime.__file__);"
        "print([m for m in ('chat', 'lab', 'ops', 'devtools', 'project') if u.find_spec(m)])"
    )
    done = subprocess.run(
        [str(shop.python), "-c", code], cwd="/", capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    location, demo_modules = done.stdout.splitlines()
    assert "site-packages" in location
    assert demo_modules == "[]"


async def test_a_message_published_on_one_replica_reaches_a_socket_on_the_other(
    shop: InstalledShop,
) -> None:
    await asyncio.to_thread(
        shop.manage,
        "shell",
        "-c",
        "from django.contrib.auth.models import User; from orders.models import Order;"
        "alice = User.objects.create_user('alice', password='alice-pass-123');"
        "User.objects.create_user('bob', password='bob-pass-123');"
        "User.objects.create_user('clerk', password='clerk-pass-123', is_staff=True);"
        "print(Order.objects.create(owner=alice).pk)",
    )
    api_token = (await asyncio.to_thread(shop.manage, "apitoken", "create", "shop-backend")).strip()
    alice_token = await asyncio.to_thread(_connect_token, shop, api_token, "alice", "r2")
    ws_r1 = shop.urls["r1"].replace("http://", "ws://") + "/ws/"

    # Alice watches order:1 with the installed client, connected to r1 with a token from r2.
    watcher = await asyncio.create_subprocess_exec(
        str(shop.python), "-c", WATCHER, ws_r1, alice_token, "order:1", "2",
        cwd=shop.project.parent, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert watcher.stdout is not None
        ready = json.loads(await asyncio.wait_for(watcher.stdout.readline(), timeout=40) or "{}")
        assert ready == {"ready": "r1"}, await _stderr_of(watcher)

        # Bob is not the order's owner: his subscribe is refused, on the same replica.
        bob_token = await asyncio.to_thread(_connect_token, shop, api_token, "bob", "r1")
        bob = await WsClient.open(f"{ws_r1}?token={bob_token}")
        await bob.wait_type("hello", timeout=10)
        await bob.send_json({"type": "subscribe", "stream": "order:1"})
        (refused,) = await bob.wait_type("error", timeout=10)
        assert (refused["code"], refused["message"]) == (
            "forbidden_stream",
            "You may not read order:1.",
        )
        await bob.close()

        # 1) The publish API on r2; 2) the example's view (staff marks it shipped), run in a
        # management shell: a process that is neither replica, publishing on commit.
        answer = await asyncio.to_thread(
            httpx.post,
            f"{shop.urls['r2']}/api/publish",
            json={"stream": "order:1", "payload": {"status": "packed"}},
            headers={"Authorization": f"Bearer {api_token}"},
            timeout=10,
        )
        assert answer.status_code == 200, answer.text
        await asyncio.to_thread(
            shop.manage,
            "shell",
            "-c",
            "from django.contrib.auth.models import User; from django.test import Client;"
            "c = Client(); c.force_login(User.objects.get(username='clerk'));"
            "r = c.post('/orders/1/ship', HTTP_HOST='localhost');"
            "assert r.status_code == 200, r.content",
        )
        out, _ = await asyncio.wait_for(watcher.communicate(), timeout=40)
    finally:
        if watcher.returncode is None:
            watcher.kill()
            await watcher.wait()
    frames = [json.loads(line) for line in out.decode().splitlines()]
    assert [f["payload"] for f in frames] == [{"status": "packed"}, {"status": "shipped"}]
    assert [f["seq"] for f in frames] == [1, 2]
    assert frames[0]["origin"] == "r2"
    assert watcher.returncode == 0


async def _stderr_of(process: asyncio.subprocess.Process) -> str:
    process.kill()
    _, err = await process.communicate()
    return err.decode()[-3000:]
