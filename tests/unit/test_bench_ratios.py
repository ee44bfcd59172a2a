"""The bench's ratio lines: one round's as before, several rounds' as medians and ranges, each
ratio taken within its own round."""

from __future__ import annotations

import pytest

from devtools.bench.report import Result, ratios, table

pytestmark = pytest.mark.unit


def push(target: str, rate: float, cpu: float, p99: float, round_number: int = 1) -> Result:
    return Result(
        target=target,
        workload="W2",
        clients=10,
        messages=1000,
        seconds=1000 / rate,
        rate=rate,
        rate_unit="push/s",
        deliveries=1000,
        expected=1000,
        p99_ms=p99,
        cpu_secs={"d1": cpu, "redis": 0.1},
        round=round_number,
    )


def connects(target: str, cpu: float, kib: float, round_number: int = 1) -> Result:
    return Result(
        target=target,
        workload="W3",
        clients=1000,
        messages=0,
        seconds=1.0,
        rate=1000.0,
        rate_unit="conn/s",
        cpu_secs={"d1": cpu},
        extra={"connected": 1000, "max_kib_per_conn": kib},
        round=round_number,
    )


def test_one_round_gives_each_ratio_with_its_values() -> None:
    lines = ratios(
        [
            push("ours", 3000, 0.4, 10),
            connects("ours", 1.0, 16.0),
            push("socketio", 2000, 0.5, 20),
            connects("socketio", 1.25, 40.0),
        ]
    )
    assert lines == [
        "ours/socketio W2: rate x1.50, server CPU per delivery x0.80, p99 x0.50",
        "ours/socketio W3: rate x1.00, server CPU per connect x0.80 (1.00 ms against 1.25 ms), "
        "memory per socket x0.40 (16.0 KiB against 40.0 KiB)",
    ]


def test_several_rounds_give_the_median_and_range_of_each_rounds_own_ratio() -> None:
    results = [
        # Round 2 ran on a slower machine for both: its own ratio is what counts, not ours
        # of round 2 against theirs of round 1.
        push("ours", 3000, 0.40, 10, round_number=1),
        push("socketio", 2000, 0.50, 20, round_number=1),
        push("ours", 1500, 0.80, 30, round_number=2),
        push("socketio", 1500, 0.60, 20, round_number=2),
        push("ours", 2600, 0.50, 10, round_number=3),
        push("socketio", 2000, 0.50, 10, round_number=3),
    ]
    assert ratios(results) == [
        "ours/socketio W2, median of 3 rounds (lowest-highest): rate x1.30 (1.00-1.50), "
        "server CPU per delivery x1.00 (0.80-1.33), p99 x1.00 (0.50-1.50)"
    ]
    # The table says which round each row is from.
    rows = table(results).splitlines()[2:]
    assert [row.split("round=")[1].split()[0] for row in rows] == ["1", "1", "2", "2", "3", "3"]


def test_a_round_the_other_target_missed_is_left_out_of_its_ratios() -> None:
    results = [
        push("ours", 3000, 0.4, 10, round_number=1),
        push("socketio", 2000, 0.5, 20, round_number=1),
        push("ours", 1000, 0.4, 10, round_number=2),  # the peer's round 2 did not run
    ]
    [line] = ratios(results)
    assert line.startswith("ours/socketio W2, median of 1 round (lowest-highest): rate x1.50 (")
