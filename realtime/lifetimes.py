"""How many of each per-socket object this process holds, for /healthz and the memory tests.

Every object a socket makes us build (its consumer, session, inbound half, writer, Daphne's
protocol object and input queue) must be gone once the socket has closed and a collection has
run. A count that stays up after churn is a leak whatever the allocator does with RSS, and,
unlike RSS, it is exact. Counted in `__init__` and `__del__` (PEP 442: `__del__` also runs for
objects freed as part of a reference cycle): two integer updates per object, no weak
reference per object and no registry to keep in step with the code.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T", bound=type)

# Class name -> instances alive in this process (one event loop touches them: plain ints).
LIVE: dict[str, int] = {}


def counted(cls: T) -> T:
    """Count the live instances of `cls` (exactly `cls`: a subclass is counted only if it is
    decorated too, under its own name)."""
    name = cls.__name__
    if name in LIVE:
        raise ValueError(f"two counted classes are named {name}")
    LIVE[name] = 0
    init: Callable[..., None] = cls.__init__  # type: ignore[misc]
    finalizer: Callable[[Any], None] | None = getattr(cls, "__del__", None)

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        if type(self) is cls:
            LIVE[name] += 1
        init(self, *args, **kwargs)

    def __del__(self: Any) -> None:
        if type(self) is cls:
            LIVE[name] -= 1
        if finalizer is not None:
            finalizer(self)

    __init__.__doc__ = init.__doc__
    cls.__init__ = __init__  # type: ignore[misc]
    cls.__del__ = __del__  # type: ignore[attr-defined]
    return cls


def live_counts() -> dict[str, int]:
    return dict(LIVE)
