"""`python -m devtools.bench.limit --port P`: the practical ceiling of Python fan-out here.

One process, the `websockets` library, no Django, no Redis, no HAProxy: every socket on `/`
gets a hello, and each frame on `/control` ({"id", "payload"}) is numbered, encoded once and
written to every socket with `websockets.broadcast`; the control socket gets {"id", "seq"}
back. The benchmark's clients and workloads are the same as for the real cluster, so the
ratio between the two is the price of everything the cluster adds.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import logging
import signal
import time
import uuid

from websockets.asyncio.server import ServerConnection, broadcast, serve

logger = logging.getLogger(__name__)


class LimitServer:
    def __init__(self) -> None:
        self.sockets: set[ServerConnection] = set()
        self.seq = 0
        self.users = itertools.count(1)

    async def handle(self, socket: ServerConnection) -> None:
        if socket.request is not None and socket.request.path.startswith("/control"):
            await self.control(socket)
            return
        hello = {
            "type": "hello",
            "replica": "limit",
            "user_id": next(self.users),
            "streams": {"broadcast": {"epoch": None, "seq": self.seq}},
        }
        await socket.send(json.dumps(hello))
        self.sockets.add(socket)
        try:
            await socket.wait_closed()
        finally:
            self.sockets.discard(socket)

    async def control(self, socket: ServerConnection) -> None:
        async for text in socket:
            request = json.loads(text)
            self.seq += 1
            frame = json.dumps(
                {
                    "seq": self.seq,
                    "epoch": None,
                    "type": "broadcast",
                    "stream": "broadcast",
                    "id": uuid.uuid4().hex,
                    "payload": request["payload"],
                    "sent_at": int(time.time() * 1000),
                    "origin": "limit",
                },
                separators=(",", ":"),
            )
            broadcast(self.sockets, frame)
            await socket.send(json.dumps({"id": request["id"], "seq": self.seq}))


async def main(port: int) -> None:
    server = LimitServer()
    stop = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set_result, None)
    async with serve(server.handle, "127.0.0.1", port, max_size=2**20, compression=None):
        await stop


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(main(parser.parse_args().port))
