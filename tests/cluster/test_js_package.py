"""The npm package @switchboard/client (clients/js) as a consumer gets it: `npm pack`ed, unpacked,
and run under node against this cluster by its own test (clients/js/test/cluster.test.mjs): a
connection token instead of a session, pushes once each and in order, a resume from one client's
positions in another, and a tampered token refused for good."""

from __future__ import annotations

import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from devtools.cluster import Cluster
from tests.cluster.helpers import api_post, api_token, sessions_for
from tests.conftest import BASE_DIR, require_binaries

PACKAGE_DIR = BASE_DIR / "clients" / "js"
NODE_TEST = PACKAGE_DIR / "test" / "cluster.test.mjs"
CLIENT_JS = BASE_DIR / "realtime" / "static" / "realtime" / "client.js"
# node 20 has WebSocket only with this flag; node 22 has it by default and accepts the flag.
NODE_FLAGS = ["--experimental-websocket"]
# npm, offline and quiet: packing a package without dependencies needs no registry.
NPM_ENV = {"npm_config_update_notifier": "false", "npm_config_fund": "false"}


def require_node_with_websocket() -> None:
    """node and npm installed (make test / .ci/run install them), and a node with a WebSocket."""
    require_binaries("node", "npm")
    probe = subprocess.run(
        ["node", *NODE_FLAGS, "-e", "process.exit(typeof WebSocket === 'function' ? 0 : 3)"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if probe.returncode == 0:
        return
    version = subprocess.run(["node", "--version"], capture_output=True, text=True, timeout=30)
    message = (
        f"node {version.stdout.strip()} has no WebSocket, even with {' '.join(NODE_FLAGS)} "
        f"(node 20.10 or later has): {probe.stderr.strip()[:300]}"
    )
    if os.environ.get("CI"):
        pytest.fail(f"{message}; under CI=true no tier may be skipped")
    pytest.skip(message)


def pack(destination: Path) -> Path:
    """`npm pack` in clients/js (its prepack copies client.js in); the tarball it made."""
    packed = subprocess.run(
        ["npm", "pack", "--offline", "--pack-destination", str(destination)],
        cwd=PACKAGE_DIR,
        env={**os.environ, **NPM_ENV},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert packed.returncode == 0, f"npm pack failed:\n{packed.stdout}\n{packed.stderr}"
    (tarball,) = destination.glob("*.tgz")
    return tarball


def test_the_packed_js_client_connects_with_a_token_and_resumes_under_node(
    healthy_cluster: Cluster, tmp_path: Path
) -> None:
    require_node_with_websocket()
    tarball = pack(tmp_path)
    with tarfile.open(tarball) as archive:
        names = set(archive.getnames())
        assert names == {
            f"package/{name}" for name in ("package.json", "client.js", "client.d.ts", "README.md")
        }
        shipped = archive.extractfile("package/client.js")
        assert shipped is not None
        # The one client: the file the Django app serves, byte for byte.
        assert shipped.read() == CLIENT_JS.read_bytes()
        archive.extractall(tmp_path / "unpacked", filter="data")

    ((user, _),) = sessions_for(healthy_cluster, 1, "js-package").items()
    answer = api_post(healthy_cluster, "/api/connect-token", {"user": user})
    assert answer.status_code == 200, answer.text
    env = {
        **os.environ,
        "SB_CLIENT_MODULE": str(tmp_path / "unpacked" / "package"),
        "SB_URL": healthy_cluster.url,
        "SB_TOKEN": answer.json()["token"],
        "SB_API_TOKEN": api_token(healthy_cluster),
        "SB_USER": user,
    }
    run = subprocess.run(
        ["node", *NODE_FLAGS, "--test", "--test-reporter=tap", str(NODE_TEST)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = f"{run.stdout}\n{run.stderr}"
    assert run.returncode == 0, f"node --test failed ({run.returncode}):\n{output}"
    # Both node tests ran (a skip would also exit 0).
    assert "# pass 2" in run.stdout and "# skipped 0" in run.stdout, output
