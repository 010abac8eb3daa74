"""Turns between a process's request commits and its embedded dispatcher's batches."""

from __future__ import annotations

import threading
import time

from cortex.turns import Turn


def holder(turn: Turn, release: threading.Event, let_waiter_first: bool = False) -> threading.Thread:
    """A thread that takes ``turn`` (before this returns) and gives it back when ``release`` is set."""
    taken = threading.Event()

    def hold() -> None:
        assert turn.take()
        taken.set()
        release.wait(10)
        turn.give_back(let_waiter_first)

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    assert taken.wait(5)
    return thread


def test_a_free_turn_is_taken_at_once_and_can_be_taken_again_after_it_is_given_back():
    turn = Turn(patience=5.0)
    assert turn.take()
    turn.give_back()
    assert turn.take()
    turn.give_back()


def test_a_commit_waits_for_the_batch_under_way_and_then_has_the_turn():
    turn = Turn(patience=10.0)
    release = threading.Event()
    batch = holder(turn, release, let_waiter_first=True)
    outcome = []
    commit = threading.Thread(target=lambda: outcome.append(turn.take()), daemon=True)
    commit.start()
    commit.join(0.2)
    assert commit.is_alive(), "the commit waits while the batch is within its patience"
    release.set()
    commit.join(5)
    batch.join(5)
    assert outcome == [True], "the commit has the turn once the batch gave it back"


def test_a_holder_past_its_patience_is_passed_by_and_nobody_waits_for_it_again():
    turn = Turn(patience=0.05)
    release = threading.Event()
    stuck = holder(turn, release)  # a sink that hangs in its write, say
    try:
        outcomes: list[bool] = []
        waiter = threading.Thread(target=lambda: outcomes.append(turn.take()), daemon=True)
        waiter.start()
        waiter.join(5)
        assert outcomes == [False], "after the patience, the waiter goes on without the turn"
        started = time.monotonic()
        assert turn.take() is False
        assert time.monotonic() - started < 0.04, "an overdue holder is passed by without a wait"
    finally:
        release.set()
        stuck.join(5)
    assert turn.take(), "once given back, the turn is free again"


def test_after_a_batch_a_waiting_commit_goes_before_the_next_batch():
    turn = Turn(patience=10.0)
    order: list[str] = []
    release = threading.Event()
    first_batch = threading.Event()

    def dispatcher() -> None:
        for number in (1, 2):
            assert turn.take()
            order.append(f"batch {number}")
            if number == 1:
                first_batch.set()
                release.wait(10)
            turn.give_back(let_waiter_first=True)

    def commit() -> None:
        assert turn.take()
        order.append("commit")
        turn.give_back()

    batches = threading.Thread(target=dispatcher, daemon=True)
    batches.start()
    assert first_batch.wait(5)
    committer = threading.Thread(target=commit, daemon=True)
    committer.start()
    deadline = time.monotonic() + 5
    while not turn._wanted.is_set() and time.monotonic() < deadline:
        time.sleep(0.001)
    release.set()
    batches.join(5)
    committer.join(5)
    assert order == ["batch 1", "commit", "batch 2"]
