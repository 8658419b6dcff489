"""De-duplication by name (SPEC §4): while a message named X in a queue has never been
dequeued, enqueuing X again in that queue stores nothing and returns 'deduplicated' with the
existing id. Racing producers end with exactly one message and never deadlock; producers of
different names never wait on each other.
"""

from __future__ import annotations

import threading
from typing import Any

import psycopg
import pytest
from flow_helpers import (
    Background,
    backend_pid,
    complete,
    coordinate_until_quiet,
    count_edges,
    count_messages,
    dequeue,
    enqueue,
    enqueue_many,
    fail,
    wait_until_blocked,
)

Conn = psycopg.Connection[Any]


def test_same_name_in_same_channel_is_deduplicated_while_never_dequeued(db: Conn) -> None:
    # Names are scoped to (queue, channel): tests/test_hardening_tenancy.py shows another
    # channel's name is a separate message.
    first = enqueue(db, {"v": 1}, name="report", channel="tenant")
    assert first[0] == "enqueued"
    again = enqueue(db, {"v": 2}, name="report", channel="tenant", priority=5)
    assert again == ("deduplicated", first[1])
    assert count_messages(db) == 1
    (leased,) = dequeue(db, batch=10)
    assert leased["payload"] == {"v": 1}  # the first message is kept as it was


def test_same_name_in_another_queue_is_a_separate_message(db: Conn) -> None:
    a = enqueue(db, {}, name="report", queue="alpha")
    b = enqueue(db, {}, name="report", queue="beta")
    assert a[0] == b[0] == "enqueued" and a[1] != b[1]
    assert enqueue(db, {}, name="report", queue="beta") == ("deduplicated", b[1])


def test_unnamed_messages_are_never_deduplicated(db: Conn) -> None:
    assert [enqueue(db, {"same": True})[0] for _ in range(3)] == ["enqueued"] * 3


@pytest.mark.parametrize("settle", ["processing", "locked", "failed", "completed"])
def test_once_dequeued_a_name_no_longer_blocks_a_new_message(db: Conn, settle: str) -> None:
    _, first = enqueue(db, {}, name="job", num_attempts=2, lock_secs=3600)
    (leased,) = dequeue(db)
    if settle == "locked":
        assert fail(db, leased) == "locked"
    elif settle == "failed":
        assert fail(db, leased, retry=False) == "failed"
    elif settle == "completed":
        assert complete(db, leased)
    result, second = enqueue(db, {}, name="job")
    assert result == "enqueued" and second != first
    # ... and the new one blocks the name in turn.
    assert enqueue(db, {}, name="job") == ("deduplicated", second)


def test_a_delayed_message_blocks_its_name_and_stays_delayed(db: Conn) -> None:
    _, first = enqueue(db, {}, name="later", delay_secs=3600)
    assert enqueue(db, {}, name="later") == ("deduplicated", first)
    assert enqueue(db, {}, name="later", delay_secs=1) == ("deduplicated", first)
    row = db.execute(
        "SELECT state, available_at > now() + interval '59 minutes' FROM hydra.message"
    ).fetchall()
    assert row == [("pending", True)]


def test_a_child_waiting_for_parents_blocks_its_name_and_a_duplicate_adds_no_edges(
    db: Conn,
) -> None:
    _, parent = enqueue(db, {})
    _, other = enqueue(db, {})
    _, child = enqueue(db, {}, name="child", depends_on=[parent])
    assert count_edges(db) == 1
    assert enqueue(db, {}, name="child", depends_on=[other]) == ("deduplicated", child)
    assert enqueue(db, {}, name="child") == ("deduplicated", child)
    assert count_edges(db) == 1
    # The kept child still waits for its own parent only.
    leased = {m["id"]: m for m in dequeue(db, batch=10)}
    assert set(leased) == {parent, other}
    assert complete(db, leased[parent])
    coordinate_until_quiet(db)
    assert [m["id"] for m in dequeue(db)] == [child]


def test_names_repeated_inside_one_enqueue_many_batch_are_deduplicated(db: Conn) -> None:
    _, existing = enqueue(db, {}, name="old")
    rows = enqueue_many(
        db,
        [
            {"payload": 1, "name": "x"},
            {"payload": 2, "name": "y"},
            {"payload": 3, "name": "x"},
            {"payload": 4, "name": "old"},
            {"payload": 5},
        ],
    )
    assert [r[0] for r in rows] == [1, 2, 3, 4, 5]
    results = [r[1] for r in rows]
    ids = [r[2] for r in rows]
    assert results == ["enqueued", "enqueued", "deduplicated", "deduplicated", "enqueued"]
    assert ids[2] == ids[0] and ids[3] == existing
    assert count_messages(db) == 4
    payloads = db.execute("SELECT name, payload FROM hydra.message ORDER BY id").fetchall()
    assert payloads == [("old", {}), ("x", 1), ("y", 2), (None, 5)]


# --------------------------------------------------------------------------------------------
# Races, with explicit interleavings
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("first_ends", ["commit", "rollback"])
def test_racing_producers_of_one_name_end_with_exactly_one_message(
    db: Conn, connect: Any, first_ends: str
) -> None:
    first = connect(autocommit=False, options="-c lock_timeout=20s")
    second = connect(options="-c lock_timeout=20s")
    first_pid, second_pid = backend_pid(first), backend_pid(second)

    result, first_id = enqueue(first, {"from": 1}, name="X")
    assert result == "enqueued"
    racing = Background(lambda: enqueue(second, {"from": 2}, name="X"))
    # The second producer waits on the first one's open transaction (the unique index).
    blockers = wait_until_blocked(db, second_pid, by=[first_pid])
    assert blockers == [first_pid]
    assert not racing.done()

    if first_ends == "commit":
        first.commit()
        assert racing.result() == ("deduplicated", first_id)
        expected = [(first_id, {"from": 1})]
    else:
        first.rollback()
        result, second_id = racing.result()
        assert result == "enqueued" and second_id != first_id
        expected = [(second_id, {"from": 2})]
    assert db.execute("SELECT id, payload FROM hydra.message").fetchall() == expected


@pytest.mark.parametrize("worker_ends", ["commit", "rollback"])
def test_a_name_being_dequeued_waits_for_the_dequeue_to_settle(
    db: Conn, connect: Any, worker_ends: str
) -> None:
    _, first = enqueue(db, {}, name="X")
    worker = connect(autocommit=False)
    producer = connect(options="-c lock_timeout=20s")
    worker_pid, producer_pid = backend_pid(worker), backend_pid(producer)
    assert [m["id"] for m in dequeue(worker)] == [first]

    racing = Background(lambda: enqueue(producer, {}, name="X"))
    wait_until_blocked(db, producer_pid, by=[worker_pid])
    if worker_ends == "commit":
        # The first one was dequeued: the name is free again.
        worker.commit()
        result, second = racing.result()
        assert result == "enqueued" and second != first
    else:
        # The dequeue never happened: the first one still blocks the name.
        worker.rollback()
        assert racing.result() == ("deduplicated", first)


def test_many_producers_racing_on_one_name_store_one_message(db: Conn, connect: Any) -> None:
    producers = [connect() for _ in range(8)]
    start = threading.Barrier(len(producers))

    def produce(conn: Conn) -> tuple[str, int]:
        start.wait(timeout=10)
        return enqueue(conn, {}, name="hot")

    racers = [Background(produce, conn) for conn in producers]
    results = [r.result(timeout=30) for r in racers]
    (stored,) = db.execute("SELECT id FROM hydra.message").fetchall()
    assert sorted(r[0] for r in results) == ["deduplicated"] * 7 + ["enqueued"]
    assert {r[1] for r in results} == {stored[0]}


def test_different_names_never_wait_on_each_other(db: Conn, connect: Any) -> None:
    first = connect(autocommit=False)
    enqueue(first, {}, name="X")
    enqueue_many(first, [{"payload": 1, "name": "B1"}, {"payload": 2, "name": "B2"}])

    # With a lock timeout, a wait would be an error: other names go straight through ...
    second = connect(options="-c lock_timeout=300ms")
    assert enqueue(second, {}, name="Y")[0] == "enqueued"
    assert enqueue(second, {}, name="X", queue="elsewhere")[0] == "enqueued"
    assert [r[1] for r in enqueue_many(second, [{"payload": 1, "name": "B3"}])] == ["enqueued"]
    assert enqueue(second, {})[0] == "enqueued"
    # ... while the same name in the same queue does wait for the open transaction.
    with pytest.raises(psycopg.errors.LockNotAvailable):
        enqueue(second, {}, name="X")
    first.commit()
    assert count_messages(db) == 7
