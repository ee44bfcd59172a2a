"""What HISTORY_ENCRYPTION_KEYS costs: sealing a publish and opening it, per message, in-process
(realtime/sealing.py: AES-256-GCM from `cryptography`). A publish is sealed once by its publisher
and opened once by each replica that fans it out (not per socket), and once per replay."""

from __future__ import annotations

import base64
import os
import time

from django.test import override_settings

from realtime import protocol, sealing

ROUNDS = 20_000


def measure(payload_bytes: int = 200) -> dict[str, float]:
    envelope = protocol.envelope(
        kind="push", stream="user:42", message_id="m" * 32, payload="x" * payload_bytes,
        origin="d1",
    )  # fmt: skip
    body = protocol.encode(envelope)
    keys = [f"k1:{base64.b64encode(os.urandom(32)).decode()}"]
    with override_settings(HISTORY_ENCRYPTION_KEYS=keys):
        started = time.perf_counter()
        for _ in range(ROUNDS):
            sealed = sealing.seal_body(body)
        seal_us = (time.perf_counter() - started) / ROUNDS * 1e6
        frame = '{"seq":1,"epoch":"abcdef012345",' + sealed[1:]
        started = time.perf_counter()
        for _ in range(ROUNDS):
            sealing.open_frame(frame)
        open_us = (time.perf_counter() - started) / ROUNDS * 1e6
    return {
        "envelope_bytes": len(body),
        "sealed_bytes": len(sealed),
        "seal_us": round(seal_us, 2),
        "open_us": round(open_us, 2),
    }


def lines(result: dict[str, float]) -> list[str]:
    return [
        f"History sealing (HISTORY_ENCRYPTION_KEYS), per message of {result['envelope_bytes']:.0f} "
        f"bytes ({result['sealed_bytes']:.0f} sealed): seal {result['seal_us']} us at the "
        f"publisher, open {result['open_us']} us on each replica that fans it out"
    ]
