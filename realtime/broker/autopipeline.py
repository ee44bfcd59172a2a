"""Commands of one event loop to one shard, sent together: an automatic pipeline.

redis-py's asyncio client takes a connection from its pool for every command, writes it, waits
for its reply and puts the connection back: ~290 µs of a replica's CPU per publish script on
the bench machine, most of it the pool, the timeouts it arms and a write per command. Here every
script call of the loop shares one connection (checked out of the same pool, so TLS, AUTH, the
database, the client name and Sentinel's primary discovery are redis-py's): each caller packs
its command (hiredis when installed) and queues a future; the commands queued in one turn of
the loop go out in one write; one reader task takes the replies, which Redis sends in order,
and hands each to its future. 127 µs per call one at a time, 35 µs with 16 in flight
(docs/performance.md) — what ioredis' enableAutoPipelining and centrifuge's rueidis do.

A connection that fails (Redis restarted, a Sentinel failover's READONLY, a timeout) fails
every call waiting on it with that error and is dropped; the next call connects afresh. A call
whose write may have reached Redis is not retried here: the broker's callers decide (a publish
retries once, as redis-py's Retry did, and says an idempotency key makes that safe).

Every call has a deadline, by default `timeout` seconds from when it is made (a retry passes
its first attempt's, so both share one timeout); a write's is the earliest of its calls'. A
write not answered by then fails the connection with TimeoutError (which callers report as
Redis being unavailable), and a call whose deadline passed before its write is not sent. One
timer watches the whole connection, armed for the oldest unanswered write: callers arm no
timeout of their own and redis-py's reads arm none per reply, which were two timers a publish
(docs/performance.md).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any

from redis.exceptions import ResponseError

from realtime.broker.replies import read_replies

try:
    from hiredis import pack_command
except ImportError:  # optional: redis-py's own packing then
    pack_command = None  # type: ignore[assignment]


class AutoPipeline:
    """One shard's connection for one event loop's script calls."""

    def __init__(self, pool: Any, *, timeout: Callable[[], float]) -> None:
        self.pool = pool
        self.timeout = timeout  # read at each write: seconds Redis has to answer it
        # The current connection's commands written and replies read, and for each write not
        # yet answered in full (deadline, how many commands had been written with it).
        self.written = 0
        self.answered = 0
        self.deadlines: deque[tuple[float, int]] = deque()
        self.watchdog: asyncio.TimerHandle | None = None
        self.flush_deadline: float | None = None  # the earliest of this turn's calls'
        self.connection: Any = None
        self.connecting: asyncio.Future[None] | None = None
        self.waiting: deque[asyncio.Future[Any]] = deque()
        self.outgoing: list[bytes] = []
        self.flush_scheduled = False
        self.read_by: Any = None  # the connection a reader task is reading from
        self.reader: asyncio.Task[None] | None = None
        self.discarding: set[asyncio.Task[None]] = set()  # dropped connections being given back
        self.closed = False

    def deadline(self) -> float:
        """When a call made now must have its answer: now plus the timeout, in loop time. A
        caller that retries passes the first attempt's, so that both share one timeout."""
        return asyncio.get_running_loop().time() + self.timeout()

    async def call(self, *args: Any, deadline: float | None = None) -> Any:
        """Send one command; its reply (an error reply raised as redis-py raises it), or
        TimeoutError past `deadline` (loop time; by default a timeout from now)."""
        deadline = self.deadline() if deadline is None else deadline
        connection = self.connection or await self._connect(deadline)
        return await self._queue(connection, args, deadline)

    async def call_many(
        self, commands: list[tuple[Any, ...]], *, deadline: float | None = None
    ) -> list[Any]:
        """Several commands queued at once (one write, with whatever else this turn queues);
        their replies in order, once all have answered. A failed connection is raised, else the
        first error reply; every other error is retrieved, never left to the loop to report."""
        if not commands:
            return []
        deadline = self.deadline() if deadline is None else deadline
        connection = self.connection or await self._connect(deadline)
        futures = [self._queue(connection, args, deadline) for args in commands]
        try:
            # Answered in order, usually all in one read: one wait, not asyncio.wait's waiter
            # and callback on each (every connect reads its heads here: two replies cost ~7 µs
            # of CPU this way, ~17 µs through asyncio.wait).
            for future in futures:
                if not future.done():
                    try:
                        await future
                    except Exception:
                        pass  # its error is collected below, with the others'
        finally:
            # A caller that gives up (cancelled, timed out) leaves no reply behind unretrieved:
            # the reader drops the replies of cancelled futures.
            for future in futures:
                future.cancel()
        replies = [future.exception() or future.result() for future in futures]
        errors = [reply for reply in replies if isinstance(reply, Exception)]
        if errors:
            # A failed connection first (callers may retry the whole batch), else the first
            # error reply.
            failed = [e for e in errors if not isinstance(e, ResponseError)]
            raise (failed or errors)[0]
        return replies

    def _queue(
        self, connection: Any, args: tuple[Any, ...], deadline: float
    ) -> asyncio.Future[Any]:
        """Queue a command for this turn's write; the future its reply resolves."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        if deadline <= loop.time():  # (a retry after a slow first attempt): not sent at all
            future.set_exception(TimeoutError("Redis did not answer in time"))
            return future
        if self.flush_deadline is None or deadline < self.flush_deadline:
            self.flush_deadline = deadline
        self.waiting.append(future)
        self.written += 1
        if pack_command is not None:
            self.outgoing.append(pack_command(args))
        else:
            self.outgoing.extend(connection.pack_command(*args))
        if not self.flush_scheduled:
            self.flush_scheduled = True
            loop.call_soon(self._flush)
        if self.read_by is not connection:
            self.read_by = connection
            self.reader = loop.create_task(self._read(connection))
        return future

    async def _connect(self, deadline: float) -> Any:
        if self.closed:
            raise ConnectionError("the broker is closed")
        if self.connecting is None:
            self.connecting = asyncio.ensure_future(self._open())
        connecting = self.connecting
        try:
            # Shielded: one caller's timeout must not cancel the others' connect (nor leave the
            # connection it brings with nobody: _open adopts or gives it back by itself). The
            # deadline of the call's first write covers connecting too.
            async with asyncio.timeout_at(deadline):
                await asyncio.shield(connecting)
        finally:
            if self.connecting is connecting and connecting.done():
                self.connecting = None
        if self.connection is None:
            raise ConnectionError("the broker is closed" if self.closed else "no connection")
        return self.connection

    async def _open(self) -> None:
        """Take a connection from the pool for this pipeline; give it back at once if the
        pipeline closed meanwhile (its owner is gone: nobody else would) or has one already."""
        connection = await self.pool.get_connection()
        if self.closed:
            await self._discard(connection)  # its callers are told by _connect
            return
        if self.connection is None:
            self.connection = connection
        elif self.connection is not connection:  # adopted meanwhile (not by our callers)
            await self.pool.release(connection)

    def _flush(self) -> None:
        self.flush_scheduled = False
        data, self.outgoing = b"".join(self.outgoing), []
        deadline, self.flush_deadline = self.flush_deadline, None
        # What is queued belongs to the current connection: a failed one's queue was dropped
        # with it (its callers told), and calls since then queued for its successor.
        connection = self.connection
        if connection is None or not data or deadline is None:  # (data comes with a deadline)
            return
        writer = getattr(connection, "_writer", None)
        if writer is None or writer.is_closing():
            self._fail(connection, ConnectionError("the connection to Redis closed"))
            return
        # Redis reads as fast as we write, and what is in flight is bounded by the callers
        # waiting: no drain() (it would make a task per write).
        writer.write(data)
        loop = asyncio.get_running_loop()
        self.deadlines.append((deadline, self.written))
        # One timer at a time. It is left armed when its write is answered (cancelling and
        # arming one per call is what this saves): it then finds the next deadline when it
        # fires, at most a timeout later. Re-armed only if this write is due first (the timeout
        # was shortened).
        watchdog = self.watchdog
        if watchdog is None or watchdog.when() > deadline:
            if watchdog is not None:
                watchdog.cancel()
            self.watchdog = loop.call_at(deadline, self._watch, connection)

    def _watch(self, connection: Any) -> None:
        """The oldest write's deadline came: fail the connection if that write is still not
        answered in full, else watch the next one."""
        self.watchdog = None
        if connection is not self.connection:
            return
        deadlines = self._unanswered()
        if not deadlines:
            return
        loop = asyncio.get_running_loop()
        if deadlines[0][0] <= loop.time():
            self._fail(connection, TimeoutError("Redis did not answer in time"))
        else:
            self.watchdog = loop.call_at(deadlines[0][0], self._watch, connection)

    def _unanswered(self) -> deque[tuple[float, int]]:
        """The deadlines of the writes not answered in full, oldest first (the others dropped)."""
        deadlines = self.deadlines
        while deadlines and deadlines[0][1] <= self.answered:
            deadlines.popleft()
        return deadlines

    async def _read(self, connection: Any) -> None:
        try:
            while self.waiting and connection is self.connection:
                # Every reply that has come, at once. No timeout per read: the watchdog's
                # deadline bounds the wait (_watch).
                replies = await read_replies(connection)
                if connection is not self.connection:
                    return  # failed meanwhile (its deadline passed): its callers were told
                if len(replies) > len(self.waiting):
                    raise ConnectionError("Redis sent replies nobody asked for")
                self.answered += len(replies)
                self._unanswered()
                waiting = self.waiting
                for reply in replies:
                    if isinstance(reply, Exception) and not isinstance(reply, ResponseError):
                        raise reply  # the connection's, not the call's (BusyLoadingError, …)
                    future = waiting.popleft()
                    if future.done():
                        continue  # its caller gave up (a timeout): the reply is dropped
                    if isinstance(reply, ResponseError):
                        future.set_exception(reply)  # an error reply: the call's alone
                    else:
                        future.set_result(reply)
        except (Exception, asyncio.CancelledError) as exc:
            self._fail(connection, exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
        finally:
            if self.read_by is connection:
                self.read_by = None

    def _fail(
        self, connection: Any, exc: BaseException, *, discard: bool = True
    ) -> asyncio.Task[None] | None:
        """Every call waiting on `connection` fails with `exc`; the connection is dropped (and
        given back once its reader has ended, which is returned)."""
        if connection is not self.connection:
            return None
        # Its reader, if still waiting in redis-py (the watchdog failed the connection): ended
        # before the connection goes back to the pool, where another caller may take it.
        reader = self.reader if self.read_by is connection else None
        if reader is not None and (reader.done() or reader is asyncio.current_task()):
            reader = None
        if reader is not None:
            reader.cancel()
        self.connection = None
        waiting, self.waiting = self.waiting, deque()
        self.outgoing = []
        self.written = self.answered = 0
        self.deadlines.clear()
        self.flush_deadline = None
        if self.watchdog is not None:
            self.watchdog.cancel()
            self.watchdog = None
        error = exc if isinstance(exc, Exception) else ConnectionError("the read was cancelled")
        for future in waiting:
            if not future.done():
                future.set_exception(error)
        if discard:
            task = asyncio.get_running_loop().create_task(self._discard(connection, reader))
            self.discarding.add(task)
            task.add_done_callback(self.discarding.discard)
        return reader

    async def _discard(self, connection: Any, reader: asyncio.Task[None] | None = None) -> None:
        if reader is not None:
            await asyncio.wait([reader], timeout=2)
        await connection.disconnect(nowait=True)
        await self.pool.release(connection)

    async def close(self) -> None:
        """Give the connection back (its pool is closed next); waiting calls fail."""
        self.closed = True
        # Bounded: closing must never hang a shutdown. A connect in flight gives its connection
        # back when it lands (_open); connections dropped earlier are being given back.
        pending = [task for task in (self.connecting, *self.discarding) if task is not None]
        if pending:
            await asyncio.wait(pending, timeout=2)
        connection = self.connection
        if connection is not None:
            reader = self._fail(connection, ConnectionError("the broker closed"), discard=False)
            await self._discard(connection, reader)
