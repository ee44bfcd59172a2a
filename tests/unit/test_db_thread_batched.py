"""db_thread.Batched: calls made in one turn of the loop share one hop to the database thread,
each still answered with its own result or its own exception, in the order made."""

from __future__ import annotations

import asyncio
import os
import select
import signal
import threading
from typing import Any

import pytest

from realtime import db_thread


def lookup(key: str) -> tuple[str, int]:
    if key == "bad":
        raise LookupError(f"no {key}")
    return key, threading.get_ident()


@pytest.fixture
def hops(monkeypatch: pytest.MonkeyPatch) -> list[list[tuple[Any, ...]]]:
    """The argument lists of each hop to the database thread."""
    seen: list[list[tuple[Any, ...]]] = []
    each = db_thread._each

    def counted(function: Any, arguments: list[tuple[Any, ...]]) -> list[Any]:
        seen.append(list(arguments))
        return each(function, arguments)

    monkeypatch.setattr(db_thread, "_each", counted)
    return seen


async def test_calls_made_together_share_one_hop_and_get_their_own_answers(
    hops: list[list[tuple[Any, ...]]],
) -> None:
    batched = db_thread.Batched(lookup)
    keys = ["a", "b", "bad", "c"]
    answers = await asyncio.gather(*(batched(key) for key in keys), return_exceptions=True)
    assert hops == [[("a",), ("b",), ("bad",), ("c",)]]
    assert [a[0] if isinstance(a, tuple) else repr(a) for a in answers] == [
        "a",
        "b",
        "LookupError('no bad')",
        "c",
    ]
    loop_thread = threading.get_ident()
    assert all(a[1] != loop_thread for a in answers if isinstance(a, tuple)), "off the loop"
    # A call made later goes in a hop of its own.
    assert (await batched("d"))[0] == "d"
    assert len(hops) == 2 and hops[1] == [("d",)]


async def test_a_caller_that_gives_up_leaves_the_others_answered(
    hops: list[list[tuple[Any, ...]]],
) -> None:
    batched = db_thread.Batched(lookup)
    first, second = asyncio.ensure_future(batched("x")), asyncio.ensure_future(batched("y"))
    # Runs after both tasks' first steps (they queue their calls) and before the hop.
    asyncio.get_running_loop().call_soon(first.cancel)
    assert (await second)[0] == "y"
    assert first.cancelled()
    assert hops == [[("x",), ("y",)]]


def test_a_loop_that_closed_before_its_answer_leaves_the_thread_serving_others() -> None:
    """The thread outlives any one event loop (tests run many; a replica stops its own): an
    answer for a loop that is gone is dropped, and the next loop's calls are answered."""
    started, release = threading.Event(), threading.Event()

    def slow() -> str:
        started.set()
        release.wait(timeout=10)
        return "late"

    first = asyncio.new_event_loop()
    future = db_thread._thread.submit(first, slow)
    assert started.wait(timeout=10)
    first.close()  # gone before the thread answers
    release.set()

    async def next_call() -> tuple[str, int]:
        return await asyncio.wait_for(db_thread.run(lookup, "after"), timeout=10)

    answer = asyncio.run(next_call())
    assert answer[0] == "after" and answer[1] != threading.get_ident()
    assert not future.done()  # its loop closed: nobody is told, and nothing raised


def test_a_forked_child_gets_a_thread_of_its_own() -> None:
    """A pre-forking server may import (and use) this before it forks: the child's calls are
    answered by a thread of the child's, not queued to the parent's, which is not there."""
    assert asyncio.run(db_thread.run(lookup, "parent"))[0] == "parent"  # the parent's is running
    child = os.fork()
    if child == 0:  # pragma: no cover (the child's outcome is its exit status)
        try:
            answer = asyncio.run(asyncio.wait_for(db_thread.run(lookup, "child"), timeout=5))
            os._exit(0 if answer[0] == "child" else 1)
        except BaseException:
            os._exit(2)
    exited = os.pidfd_open(child)  # readable once the child has exited
    try:
        if not select.select([exited], [], [], 10)[0]:
            os.kill(child, signal.SIGKILL)
            os.waitpid(child, 0)
            pytest.fail("the child's call was never answered")
    finally:
        os.close(exited)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
