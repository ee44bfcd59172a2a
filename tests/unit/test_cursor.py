"""The cursor's rule for each incoming stream frame: deliver, duplicate, gap, new epoch."""

from __future__ import annotations

from realtime.delivery.cursor import Cursor, Decision


def test_the_next_seq_in_the_same_epoch_is_delivered() -> None:
    cursor = Cursor("e1", 4)
    assert cursor.is_next(5, "e1")
    assert cursor.decide(5) is Decision.DELIVER
    assert not cursor.is_next(5, "e2")  # same seq, another epoch: not the fast case
    assert not cursor.is_next(6, "e1")


def test_a_streams_first_frame_is_next_for_a_cursor_placed_before_it_had_any() -> None:
    assert Cursor(None, 0).is_next(1, "e1")
    assert not Cursor(None, 0).is_next(2, "e1")  # its first frame missed: a gap to repair
    assert not Cursor(None, 3).is_next(1, "e1")  # a position to give up: the slow path says so
    assert not Cursor("e0", 0).is_next(1, "e1")  # another epoch than the cursor's


def test_seen_seqs_are_duplicates_and_later_ones_are_gaps() -> None:
    cursor = Cursor("e1", 4)
    # One decision per seq, in the seqs' order (the formatter would put one per line).
    assert [cursor.decide(seq) for seq in (1, 4, 5, 6, 40)] == [
        Decision.DUPLICATE, Decision.DUPLICATE, Decision.DELIVER, Decision.GAP, Decision.GAP,
    ]  # fmt: skip


def test_a_new_epoch_starts_from_zero_and_says_whether_messages_were_lost() -> None:
    cursor = Cursor("e1", 4)
    assert cursor.new_epoch("e1") is False and (cursor.epoch, cursor.last) == ("e1", 4)
    assert cursor.new_epoch("e2") is True and (cursor.epoch, cursor.last) == ("e2", 0)
    assert cursor.decide(1) is Decision.DELIVER
    fresh = Cursor(None, 0)  # subscribed before the stream's first message: nothing to lose
    assert fresh.new_epoch("e1") is False and fresh.epoch == "e1"


def test_restarting_a_cursor_without_an_epoch_still_gives_up_its_position() -> None:
    cursor = Cursor(None, 7)  # a client resumed with a position but no epoch
    assert cursor.new_epoch(None) is False  # same (no) epoch: nothing changes by itself
    assert cursor.restart(None) is True and cursor.last == 0
    assert Cursor(None, 0).restart(None) is False


def test_a_cursor_only_moves_forward() -> None:
    cursor = Cursor("e1", 10)
    cursor.move_forward(3)
    assert cursor.last == 10
    cursor.move_forward(12)
    assert cursor.last == 12
