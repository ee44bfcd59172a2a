"""The stream frame format, one encoder and one decoder (the publish script writes the same).

A stream frame is the message envelope's JSON with `seq` and `epoch` put first:
    {"seq":7,"epoch":"ab12…","type":"message","stream":"room:lobby",…}
It is built once, by lua/publish.lua, and written to every socket as it is. On a group's pub/sub
channel it travels with a header the replicas route by without parsing the JSON:
    b"F<seq> <epoch> <stream>\\n<frame>"
Anything else on a group channel is a msgpack-encoded Channels message (not starting with F).
"""

from __future__ import annotations

FRAME_MARK = b"F"[0]


def with_position(body: str, *, seq: int, epoch: str) -> str:
    """What lua/publish.lua makes of an envelope `body` (JSON object text): seq and epoch first."""
    return f'{{"seq":{seq},"epoch":"{epoch}",' + body[1:]


def encode_message(stream: str, seq: int, epoch: str, frame: str) -> bytes:
    """The pub/sub message lua/publish.lua sends for a frame."""
    return f"F{seq} {epoch} {stream}\n{frame}".encode()


def is_frame_message(data: bytes) -> bool:
    return bool(data) and data[0] == FRAME_MARK


def decode_message(data: bytes) -> tuple[str, int, str, str]:
    """b"F<seq> <epoch> <stream>\\n<frame>" -> (stream, seq, epoch, frame)."""
    header, _, frame = data.partition(b"\n")
    seq, epoch, stream = header[1:].decode().split(" ", 2)
    return stream, int(seq), epoch, frame.decode()
