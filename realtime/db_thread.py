"""The database thread of the hot paths: the socket handshake's session and user lookups and
the push API's usernames, each a lookup by key (realtime/compiled_lookup.py).

Not database_sync_to_async: that closes the thread's database connection after every call
(CONN_MAX_AGE=0), and opening it again (for SQLite the file and its WAL pragmas) cost more than
the lookup; a push to a user this replica had not seen spent a sixth of its CPU there. Here the
connection stays open from one call to the next, and one that failed is closed at once (the
next call opens a fresh one: PostgreSQL restarted, say). Not asgiref's sync_to_async either:
its hand-off cost as much as the lookups (0.32 ms on the bench machine), a plain executor's
0.18 ms (docs/performance.md); nor a plain executor (`_Worker` says why). One thread: lookups
by key take ~0.3 ms, so it serves thousands a second, and it holds one connection, not one per
request. Handshakes share their hops (`Batched`, below): those made in one turn of the loop go
over together.
"""

from __future__ import annotations

import asyncio
import os
import queue
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from django.db import DatabaseError, connections

T = TypeVar("T")


class _Worker:
    """The one thread, started on first use, and what it is handed: (loop, future, function,
    args), its answer set on the future in that loop.

    Not a ThreadPoolExecutor: its submit takes two locks and a pure-Python semaphore (whose
    lock the thread takes back after each item, so the loop thread could block on it, waiting
    for the GIL the thread held), and its answer travels through a concurrent future (another
    condition) chained to an asyncio one. In a connect storm's profiles the loop thread sat in
    that submit for ~10% of its samples (docs/performance.md, the eighth round). Here: a
    SimpleQueue (C) in, one call_soon_threadsafe out."""

    def __init__(self) -> None:
        self.inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.thread: threading.Thread | None = None
        self.starting = threading.Lock()

    def submit(
        self, loop: asyncio.AbstractEventLoop, function: Callable[..., T], *args: Any
    ) -> asyncio.Future[T]:
        future: asyncio.Future[T] = loop.create_future()
        if self.thread is None:
            self._start()
        self.inbox.put((loop, future, function, args))
        return future

    def _start(self) -> None:
        with self.starting:
            if self.thread is None:
                # A daemon: it holds no work of anyone's once the loops that wait on it stopped,
                # and must not keep a stopping process alive.
                self.thread = threading.Thread(target=self._serve, name="sb-db", daemon=True)
                self.thread.start()

    def _serve(self) -> None:
        while True:
            loop, future, function, args = self.inbox.get()
            try:
                outcome: tuple[bool, Any] = (True, function(*args))
            except BaseException as exc:
                outcome = (False, exc)
            try:
                loop.call_soon_threadsafe(_answer, future, outcome)
            except RuntimeError:
                pass  # the loop closed meanwhile: nobody waits for this any more
            # Nothing of this call is kept while the thread waits for the next one (its loop,
            # its arguments, its results: model instances, sessions).
            del loop, future, function, args, outcome


def _answer(future: asyncio.Future[Any], outcome: tuple[bool, Any]) -> None:
    if future.done():
        return  # its caller gave up
    ok, value = outcome
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)


_thread = _Worker()


def _after_fork_in_child() -> None:
    # A forked child (a pre-forking server that imported this first) has no thread of its own:
    # it starts one on its first call instead of queueing to its parent's, which is not there.
    global _thread
    _thread = _Worker()


os.register_at_fork(after_in_child=_after_fork_in_child)


async def run(function: Callable[..., T], *args: Any) -> T:
    """`function(*args)` on the database thread; its result, or its exception."""
    return await _thread.submit(asyncio.get_running_loop(), _guarded, function, args)


def _guarded(function: Callable[..., T], args: tuple[Any, ...]) -> T:
    try:
        return function(*args)
    except DatabaseError:
        _close_all()
        raise


def _close_all() -> None:
    for connection in connections.all(initialized_only=True):
        connection.close()


class Batched(Generic[T]):
    """`function(*args)` on the database thread, the calls made in one turn of an event loop
    run in one hop, each answered with its own result or exception: one after another, or
    with `together=True` by one call of `function(list of each call's args)`, which returns each
    call's outcome, (True, result) or (False, exception), in order (and a failure it raises is
    every call's): for a function that reads what all of them need in one query.

    A connect storm's handshakes arrive together (epoll hands the loop many sockets at once),
    and each hop cost a connect about as much as its two lookups: the hand-off's future, the
    thread's wake-up, the loop's wake-up through its self-pipe, and the GIL passed back and
    forth (docs/performance.md)."""

    def __init__(self, function: Callable[..., Any], *, together: bool = False) -> None:
        self.function = function
        self.together = together
        self.pending: dict[asyncio.AbstractEventLoop, list[tuple[tuple[Any, ...], Any]]] = {}

    async def __call__(self, *args: Any) -> T:
        loop = asyncio.get_running_loop()
        calls = self.pending.get(loop)
        if calls is None:
            calls = self.pending[loop] = []
            loop.call_soon(self._hop, loop)
        future: asyncio.Future[T] = loop.create_future()
        calls.append((args, future))
        return await future

    def _hop(self, loop: asyncio.AbstractEventLoop) -> None:
        calls = self.pending.pop(loop, [])
        arguments = [args for args, _ in calls]
        run = _together if self.together else _each
        hop = _thread.submit(loop, run, self.function, arguments)
        hop.add_done_callback(lambda done: _settle([future for _, future in calls], done))


def _each(function: Callable[..., T], arguments: list[tuple[Any, ...]]) -> list[Any]:
    """Each call's (True, result) or (False, the exception it raised), one after another; a
    DatabaseError closes the connection first (_guarded), so the next call opens a fresh one."""
    outcomes: list[Any] = []
    for args in arguments:
        try:
            outcomes.append((True, _guarded(function, args)))
        except Exception as exc:
            outcomes.append((False, exc))
    return outcomes


def _together(
    function: Callable[[list[tuple[Any, ...]]], list[Any]], arguments: list[tuple[Any, ...]]
) -> list[Any]:
    """`function`'s outcomes for the whole batch; a DatabaseError, raised or among them, closes
    the connection (as _guarded), so the next call opens a fresh one."""
    outcomes = _guarded(function, (arguments,))
    if any(not ok and isinstance(value, DatabaseError) for ok, value in outcomes):
        _close_all()
    return outcomes


def _settle(futures: list[asyncio.Future[Any]], done: asyncio.Future[list[Any]]) -> None:
    """Answer each caller still waiting from the hop's outcomes; if the hop itself failed (or
    the loop's future was cancelled), every caller gets that."""
    failure = None if done.cancelled() else done.exception()
    outcomes = done.result() if failure is None and not done.cancelled() else []
    for index, future in enumerate(futures):
        if future.done():
            continue  # its caller gave up
        if done.cancelled():
            future.cancel()
        elif failure is not None:
            future.set_exception(failure)
        else:
            _answer(future, outcomes[index])
