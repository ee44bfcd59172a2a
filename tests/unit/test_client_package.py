"""The Python client is a package of its own (clients/python/switchboard_client): a program
imports it without Django and without the server's code."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

CLIENTS_PYTHON = Path(__file__).resolve().parents[2] / "clients" / "python"

CHECK = """
import sys
import switchboard_client
assert switchboard_client.RealtimeClient
server = sorted(
    name for name in sys.modules
    if name.split(".")[0] in {"django", "channels", "daphne", "realtime", "project"}
)
assert not server, server
"""


def test_the_python_client_imports_without_django_or_the_server() -> None:
    # Only the client's folder on the path, from an empty directory: nothing else to find.
    result = subprocess.run(
        [
            sys.executable,
            "-I",
            "-c",
            f"import sys; sys.path.insert(0, {str(CLIENTS_PYTHON)!r})\n" + CHECK,
        ],
        cwd=CLIENTS_PYTHON,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
