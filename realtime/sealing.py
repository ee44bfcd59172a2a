"""History encrypted at rest: with HISTORY_ENCRYPTION_KEYS set, what Redis and the archive keep
of a message is sealed (AES-256-GCM), and only the replicas open it.

publish.py seals the envelope before the publish script sees it, so the script stores and
PUBLISHes `{"seq":…,"epoch":"…","sealed":"<key id>.<base64 nonce+ciphertext>"}`: Redis' log,
its pub/sub traffic, the archive queue and the archive's rows hold no payload, no stream name
inside the envelope, no sender. A replica opens a frame once when it arrives from Redis (the
hub, before its fan-out) and when it reads history (replays, the API, the ledger, the archive),
so clients get the same frames as without a key. The key id is authenticated with the message
(GCM's associated data), so a frame cannot be passed off under another key.

Rotation: HISTORY_ENCRYPTION_KEYS="k2:<base64 32 bytes>,k1:<…>" seals with the first and opens
with any; keep an old key until the history sealed with it has expired (HISTORY_MAX_AGE_SECS)
or been archived and is no longer read. A frame sealed with a key no longer listed cannot be
opened: it is logged and sent as it is (clients skip a frame without a type), never guessed.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import re
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

logger = logging.getLogger(__name__)

# Where a sealed body sits in a stored frame: right after the script's seq and epoch.
MARK = ',"sealed":"'
MARK_WITHIN = 80  # {"seq":<up to 19 digits>,"epoch":"<12 hex>" comes first
KEY_ID_RE = re.compile(r"[a-z0-9]{1,16}")
NONCE_BYTES = 12


@dataclass(frozen=True)
class _Keyring:
    current_id: str
    ciphers: dict[str, AESGCM]


_cache: tuple[tuple[str, ...], _Keyring | None] = ((), None)


def parse_keys(entries: list[str] | tuple[str, ...]) -> _Keyring | None:
    """["id:<base64 of 32 bytes>", …] -> the keyring (None for none); ImproperlyConfigured
    naming the bad entry otherwise (never its key)."""
    ciphers: dict[str, AESGCM] = {}
    for entry in entries:
        key_id, sep, encoded = entry.strip().partition(":")
        if not sep or not KEY_ID_RE.fullmatch(key_id):
            raise ImproperlyConfigured(
                "HISTORY_ENCRYPTION_KEYS entries are <id>:<base64 key>, the id lower-case "
                f"letters and digits (1-16); not {key_id!r}"
            )
        try:
            key = base64.b64decode(encoded, validate=True)
        except binascii.Error:
            raise ImproperlyConfigured(f"key {key_id!r} is not base64") from None
        if len(key) != 32:
            raise ImproperlyConfigured(f"key {key_id!r} is {len(key)} bytes; AES-256 takes 32")
        if key_id in ciphers:
            raise ImproperlyConfigured(f"key {key_id!r} is listed twice")
        ciphers[key_id] = AESGCM(key)
    if not ciphers:
        return None
    return _Keyring(next(iter(ciphers)), ciphers)


def _keyring() -> _Keyring | None:
    global _cache
    entries = tuple(getattr(settings, "HISTORY_ENCRYPTION_KEYS", ()) or ())
    if _cache[0] != entries:
        _cache = (entries, parse_keys(entries))
    return _cache[1]


def enabled() -> bool:
    return _keyring() is not None


def seal_body(body: str) -> str:
    """The envelope JSON as the publish script should keep it: sealed when keys are set."""
    keyring = _keyring()
    if keyring is None:
        return body
    key_id = keyring.current_id
    nonce = os.urandom(NONCE_BYTES)
    sealed = keyring.ciphers[key_id].encrypt(nonce, body.encode(), key_id.encode())
    return '{"sealed":"' + key_id + "." + base64.b64encode(nonce + sealed).decode() + '"}'


def open_frame(frame: str) -> str:
    """A stored or published frame as clients get it: opened if it was sealed."""
    at = frame.find(MARK, 0, MARK_WITHIN)
    if at < 0:
        return frame
    start = at + len(MARK)
    end = frame.find('"', start)
    key_id, _, data = frame[start:end].partition(".")
    keyring = _keyring()
    cipher = keyring.ciphers.get(key_id) if keyring else None
    if cipher is None:
        logger.error("a frame sealed with key %r cannot be opened: that key is not listed", key_id)
        return frame
    try:
        raw = base64.b64decode(data)
        body = cipher.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], key_id.encode()).decode()
    except (InvalidTag, binascii.Error, ValueError):
        logger.error("a frame sealed with key %r failed to open (tampered?)", key_id)
        return frame
    return frame[:at] + "," + body[1:]
