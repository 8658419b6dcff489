"""max_size (SPEC §5): a channel with ``max_size => n`` never holds more than n admitted
messages (ready + parked + processing + locked). A message that would exceed it is dropped:
'dropped' from enqueue when that is known then, else MESSAGE_DROPPED from coordinate(). A drop
is a failure for the message's children.
"""

from __future__ import annotations

import random
import threading
import time
from typing import Any

import psycopg
import pytest
from flow_helpers import (
    Background,
    Event,
    complete,
    coordinate,
    coordinate_until_quiet,
    dequeue,
    enqueue,
    enqueue_many,
    events_of,
    fail,
    state_of,
)

Conn = psycopg.Connection[Any]

ADMITTED = "('ready', 'parked', 'processing', 'locked')"


def _admitted(conn: Conn, channel: str, queue: str = "default") -> int:
    row = conn.execute(
        f"SELECT count(*) FROM hydra.message WHERE queue = %s AND channel = %s"
        f" AND state IN {ADMITTED}",
        (queue, channel),
    ).fetchone()
    assert row is not None
    return int(row[0])


def _set_max_size(conn: Conn, channel: str | None, n: int) -> None:
    conn.execute("SELECT hydra.channel_policy_set(%s, max_size => %s)", (channel, n))


def test_message_beyond_max_size_is_dropped_at_enqueue_when_the_channel_is_full(
    db: Conn,
) -> None:
    _set_max_size(db, "c", 2)
    ids = [enqueue(db, {"n": i}, channel="c")[1] for i in range(2)]
    events = coordinate_until_quiet(db)
    assert sorted(e.message_id for e in events if e.event == "MESSAGE_RELEASED") == ids

    result, dropped = enqueue(db, {"n": 3}, channel="c")
    assert result == "dropped"
    row = db.execute(
        "SELECT state, attempt, finished_at IS NOT NULL, last_error FROM hydra.message"
        " WHERE id = %s", (dropped,)
    ).fetchone()
    assert row is not None and row[:3] == ("failed", 0, True) and "dropped" in row[3]
    assert _admitted(db, "c") == 2
    assert [m["id"] for m in dequeue(db, batch=10)] == ids


def test_the_default_channel_can_have_a_max_size_too(db: Conn) -> None:
    _set_max_size(db, None, 1)
    enqueue(db, {})
    coordinate_until_quiet(db)
    assert enqueue(db, {})[0] == "dropped"
    assert enqueue(db, {}, channel="unlimited")[0] == "enqueued"


def test_overflow_found_at_admission_is_dropped_by_coordinate(db: Conn) -> None:
    _set_max_size(db, "c", 2)
    # Not yet admitted, none of them is known to overflow at enqueue time.
    ids = [enqueue(db, {"n": i}, channel="c")[1] for i in range(4)]
    events = coordinate_until_quiet(db)
    assert [events_of(events, i) for i in ids] == [
        ["MESSAGE_RELEASED"],
        ["MESSAGE_RELEASED"],
        ["MESSAGE_DROPPED", "MESSAGE_FINALIZED"],
        ["MESSAGE_DROPPED", "MESSAGE_FINALIZED"],
    ]
    drop = next(e for e in events if e.event == "MESSAGE_DROPPED")
    assert drop.channel == "c" and drop.queue == "default" and drop.detail["max_size"] == 2
    finalized = [e for e in events if e.event == "MESSAGE_FINALIZED"]
    assert all(e.detail["success"] is False for e in finalized)
    assert _admitted(db, "c") == 2


def test_enqueue_many_into_a_sized_channel_is_admitted_up_to_max_size(db: Conn) -> None:
    _set_max_size(db, "c", 3)
    rows = enqueue_many(db, [{"payload": i} for i in range(5)], channel="c")
    assert [r[1] for r in rows] == ["enqueued"] * 5
    events = coordinate_until_quiet(db)
    assert sum(e.event == "MESSAGE_RELEASED" for e in events) == 3
    assert sum(e.event == "MESSAGE_DROPPED" for e in events) == 2
    # Now full: a whole batch is dropped at enqueue.
    rows = enqueue_many(db, [{"payload": i} for i in range(2)], channel="c")
    assert [r[1] for r in rows] == ["dropped", "dropped"]


def test_processing_and_locked_messages_count_as_admitted(db: Conn) -> None:
    _set_max_size(db, "c", 2)
    enqueue(db, {}, channel="c", num_attempts=2, lock_secs=3600)
    enqueue(db, {}, channel="c")
    coordinate_until_quiet(db)
    retried, running = dequeue(db, batch=2)
    assert fail(db, retried) == "locked"
    assert enqueue(db, {}, channel="c")[0] == "dropped"

    assert complete(db, running)
    result, admitted = enqueue(db, {}, channel="c")
    assert result == "enqueued"
    assert events_of(coordinate_until_quiet(db), admitted) == ["MESSAGE_RELEASED"]


def test_delayed_messages_take_no_room_until_their_delay_ends(db: Conn) -> None:
    _set_max_size(db, "c", 1)
    _, delayed = enqueue(db, {}, channel="c", delay_secs=3600)
    _, now = enqueue(db, {}, channel="c")
    events = coordinate_until_quiet(db)
    assert events_of(events, now) == ["MESSAGE_RELEASED"]
    assert state_of(db, delayed) == "pending"


def test_max_size_counts_each_channel_and_queue_separately(db: Conn) -> None:
    _set_max_size(db, "c", 1)
    enqueue(db, {}, channel="c")
    coordinate_until_quiet(db)
    assert enqueue(db, {}, channel="c")[0] == "dropped"
    assert enqueue(db, {}, channel="d")[0] == "enqueued"
    assert enqueue(db, {}, channel="c", queue="other")[0] == "enqueued"
    assert state_of(db, enqueue(db, {}, channel="d")[1]) == "ready"


def test_zero_max_size_drops_everything(db: Conn) -> None:
    _set_max_size(db, "closed", 0)
    assert [enqueue(db, {}, channel="closed")[0] for _ in range(3)] == ["dropped"] * 3
    assert _admitted(db, "closed") == 0


def test_lowering_max_size_evicts_nothing_and_clearing_restores_unlimited(db: Conn) -> None:
    _set_max_size(db, "c", 5)
    enqueue_many(db, [{"payload": i} for i in range(4)], channel="c")
    coordinate_until_quiet(db)
    _set_max_size(db, "c", 2)
    assert _admitted(db, "c") == 4
    assert enqueue(db, {}, channel="c")[0] == "dropped"

    row = db.execute("SELECT hydra.channel_policy_clear('c')").fetchone()
    assert row == (True,)
    result, fresh = enqueue(db, {}, channel="c")
    assert result == "enqueued" and state_of(db, fresh) == "ready"


@pytest.mark.parametrize("bad", [-1, -2147483648])
def test_negative_max_size_is_rejected_and_nothing_is_written(db: Conn, bad: int) -> None:
    with pytest.raises(psycopg.errors.InvalidParameterValue, match=r"^max_size"):
        _set_max_size(db, "c", bad)
    assert db.execute("SELECT * FROM hydra.channel_policies").fetchall() == []
    # An existing policy is left as it was.
    _set_max_size(db, "c", 3)
    with pytest.raises(psycopg.errors.InvalidParameterValue, match=r"^max_size"):
        _set_max_size(db, "c", bad)
    rows = db.execute("SELECT channel, max_size FROM hydra.channel_policies").fetchall()
    assert rows == [("c", 3)]


@pytest.mark.parametrize("cascade", [True, False])
def test_a_dropped_message_fails_its_children_per_the_cascade_rule(
    db: Conn, cascade: bool
) -> None:
    _set_max_size(db, "c", 1)
    _, kept = enqueue(db, {}, channel="c")
    _, dropped = enqueue(db, {}, channel="c")
    _, child = enqueue(db, {}, depends_on=[dropped], cascade_failure=cascade)
    _, grandchild = enqueue(db, {}, depends_on=[child])
    events = coordinate_until_quiet(db)
    assert "MESSAGE_DROPPED" in events_of(events, dropped)
    if cascade:
        for m in (child, grandchild):
            assert events_of(events, m)[-2:] == [
                "MESSAGE_DEPENDENCIES_UNMET", "MESSAGE_FINALIZED"]
            assert state_of(db, m) == "failed"
        assert [m["id"] for m in dequeue(db, batch=10)] == [kept]
    else:
        assert "MESSAGE_RELEASED" in events_of(events, child)
        served = {m["id"]: m["failed_parents"] for m in dequeue(db, batch=10)}
        assert served == {kept: [], child: [dropped]}


# --------------------------------------------------------------------------------------------
# Concurrency
# --------------------------------------------------------------------------------------------

PRODUCERS = 16
ROUNDS = 12
MAX_SIZE = 5


def test_max_size_is_never_exceeded_under_16_concurrent_producers(
    db: Conn, connect: Any
) -> None:
    _set_max_size(db, "hot", MAX_SIZE)
    stop = threading.Event()
    start = threading.Barrier(PRODUCERS + 3)
    results: list[tuple[str, int]] = []
    events: list[Event] = []
    completed: list[int] = []
    lock = threading.Lock()

    def producer(conn: Conn, seed: int) -> None:
        rng = random.Random(seed)
        start.wait(timeout=10)
        for i in range(ROUNDS):
            if i % 4 == 3:
                got = [(r[1], r[2]) for r in enqueue_many(
                    conn, [{"payload": i}, {"payload": i}], channel="hot",
                    num_attempts=2, lock_secs=0)]
            else:
                got = [enqueue(conn, {"i": i}, channel="hot", num_attempts=2, lock_secs=0)]
            happened = coordinate(conn)
            with lock:
                results.extend(got)
                events.extend(happened)
            time.sleep(rng.random() * 0.005)

    def worker(conn: Conn) -> None:
        rng = random.Random(0)
        start.wait(timeout=10)
        while not stop.is_set():
            for m in dequeue(conn, batch=2):
                if rng.random() < 0.3 and fail(conn, m) != "stale":
                    continue
                assert complete(conn, m)
                with lock:
                    completed.append(m["id"])
            time.sleep(0.002)

    def checker(conn: Conn) -> int:
        start.wait(timeout=10)
        worst = 0
        while not stop.is_set():
            worst = max(worst, _admitted(conn, "hot"))
        return worst

    producers = [Background(producer, connect(), seed) for seed in range(PRODUCERS)]
    workers = [Background(worker, connect()) for _ in range(2)]
    watch = Background(checker, connect())
    try:
        for p in producers:
            p.result(timeout=60)
        with lock:
            events.extend(coordinate_until_quiet(db))
    finally:
        stop.set()
        for w in workers:
            w.result(timeout=30)
        worst = watch.result(timeout=30)

    assert worst <= MAX_SIZE
    assert _admitted(db, "hot") <= MAX_SIZE
    enqueued = {i for r, i in results if r == "enqueued"}
    dropped_at_enqueue = {i for r, i in results if r == "dropped"}
    dropped_later = {e.message_id for e in events if e.event == "MESSAGE_DROPPED"}
    assert len(results) == PRODUCERS * (ROUNDS + ROUNDS // 4)
    assert dropped_at_enqueue or dropped_later, "the channel was never full: test too weak"
    assert dropped_later <= enqueued
    # Every message is accounted for: completed, dropped, or still admitted (none pending).
    rows = db.execute(
        "SELECT id, state, last_error FROM hydra.message WHERE channel = 'hot'"
    ).fetchall()
    pending = [r for r in rows if r[1] == "pending"]
    assert pending == []
    dropped_rows = {r[0] for r in rows if r[1] == "failed" and "dropped" in (r[2] or "")}
    assert dropped_rows == dropped_at_enqueue | dropped_later
    admitted = {r[0] for r in rows if r[1] != "failed"}
    exhausted = {r[0] for r in rows if r[1] == "failed" and "dropped" not in (r[2] or "")}
    assert set(completed) | admitted | exhausted | dropped_rows == enqueued | dropped_at_enqueue
