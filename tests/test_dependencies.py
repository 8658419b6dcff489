"""Dependencies (SPEC §7): a child runs only after all its parents resolved; with
``cascade_failure`` (the default) a failed parent fails the child without running it, down the
DAG; without it the child runs anyway and sees which parents failed. Parents may be in any
state when the child is enqueued, and an edge attached while the parent finishes is never lost.

Every test drives the queue as the daemons would: dequeue, complete/fail, ``hydra.coordinate()``.
"""

from __future__ import annotations

import time
from typing import Any

import psycopg
import pytest
from flow_helpers import (
    Event,
    complete,
    coordinate,
    coordinate_until_quiet,
    count_edges,
    count_messages,
    dequeue,
    enqueue,
    enqueue_many,
    events_of,
    fail,
    state_of,
)

Conn = psycopg.Connection[Any]


def _fail_exhausted(conn: Conn, message_id: int) -> None:
    """Dequeues message_id and fails it until no attempt remains (lock_secs must be 0)."""
    for _ in range(10):
        coordinate(conn)  # unlock a retry whose back-off is over
        leased = dequeue(conn, batch=10)
        assert [m["id"] for m in leased] == [message_id]
        if fail(conn, leased[0]) == "failed":
            return
    raise AssertionError(f"message {message_id} never exhausted its attempts")


def _run_to_completion(conn: Conn) -> tuple[list[set[int]], list[Event]]:
    """Dequeues everything ready, completes it, coordinates; repeats until nothing is left.
    Returns the ids served per round and every coordinate() event."""
    rounds: list[set[int]] = []
    events: list[Event] = []
    for _ in range(20):
        leased = dequeue(conn, batch=100)
        if not leased:
            events.extend(coordinate_until_quiet(conn))
            leased = dequeue(conn, batch=100)
            if not leased:
                return rounds, events
        rounds.append({m["id"] for m in leased})
        for m in leased:
            assert complete(conn, m)
        events.extend(coordinate_until_quiet(conn))
    raise AssertionError(f"queue never drained: {rounds}")


# --------------------------------------------------------------------------------------------
# Order
# --------------------------------------------------------------------------------------------


def test_diamond_dag_built_in_one_transaction_runs_in_dependency_order(
    db: Conn, connect: Any
) -> None:
    producer = connect(autocommit=False)
    _, a = enqueue(producer, {"step": "a"})
    _, b = enqueue(producer, {"step": "b"}, depends_on=[a])
    _, c = enqueue(producer, {"step": "c"}, depends_on=[a])
    result, d = enqueue(producer, {"step": "d"}, depends_on=[b, c])
    assert result == "enqueued"
    # Nothing is visible (or runnable) before the producer commits.
    assert dequeue(db) == []
    producer.commit()

    assert {state_of(db, i) for i in (b, c, d)} == {"pending"}
    rounds, events = _run_to_completion(db)

    assert rounds == [{a}, {b, c}, {d}]
    assert count_messages(db) == 0
    for child, parents in ((b, [a]), (c, [a]), (d, [b, c])):
        resolved = [e for e in events if e.message_id == child
                    and e.event == "MESSAGE_DEPENDENCY_RESOLVED"]
        assert sorted(e.detail["parent_id"] for e in resolved) == parents
        assert all(e.detail["success"] is True for e in resolved)
        assert "MESSAGE_RELEASED" in events_of(events, child)
    # D is released only once, after its second parent resolved.
    assert events_of(events, d).count("MESSAGE_RELEASED") == 1


def test_child_waits_for_every_parent_not_just_the_first(db: Conn) -> None:
    _, p1 = enqueue(db, {"p": 1})
    _, p2 = enqueue(db, {"p": 2})
    _, child = enqueue(db, {"child": True}, depends_on=[p1, p2])

    first = dequeue(db)
    assert [m["id"] for m in first] == [p1]
    assert complete(db, first[0])
    coordinate_until_quiet(db)
    assert state_of(db, child) == "pending"

    second = dequeue(db, batch=10)
    assert [m["id"] for m in second] == [p2]
    assert complete(db, second[0])
    events = coordinate_until_quiet(db)
    assert "MESSAGE_RELEASED" in events_of(events, child)
    assert [m["id"] for m in dequeue(db)] == [child]


# --------------------------------------------------------------------------------------------
# Failure: cascade on (default) and off
# --------------------------------------------------------------------------------------------


def test_exhausted_parent_fails_three_levels_of_descendants_without_running_them(
    db: Conn,
) -> None:
    _, a = enqueue(db, {"level": 0}, num_attempts=2, lock_secs=0)
    _, b = enqueue(db, {"level": 1}, depends_on=[a])
    _, c = enqueue(db, {"level": 2}, depends_on=[b])
    _, d = enqueue(db, {"level": 3}, depends_on=[c])

    _fail_exhausted(db, a)
    assert state_of(db, a) == "failed"
    events = coordinate_until_quiet(db)

    for child, parent in ((b, a), (c, b), (d, c)):
        assert events_of(events, child) == [
            "MESSAGE_DEPENDENCY_RESOLVED",
            "MESSAGE_DEPENDENCIES_UNMET",
            "MESSAGE_FINALIZED",
        ]
        by_name = {e.event: e for e in events if e.message_id == child}
        assert by_name["MESSAGE_DEPENDENCY_RESOLVED"].detail == {
            "parent_id": parent, "success": False}
        assert by_name["MESSAGE_DEPENDENCIES_UNMET"].detail["failed_parents"] == [parent]
        assert by_name["MESSAGE_FINALIZED"].detail["success"] is False
    rows = db.execute(
        "SELECT id, state, attempt, failed_parents FROM hydra.message"
        " WHERE id = ANY(%s) ORDER BY id", ([b, c, d],)
    ).fetchall()
    # Finalized failed, never dequeued (attempt 0), each naming the parent that failed it.
    assert rows == [(b, "failed", 0, [a]), (c, "failed", 0, [b]), (d, "failed", 0, [c])]
    assert dequeue(db, batch=10) == []


def test_cascade_through_a_diamond_finalizes_the_join_once(db: Conn) -> None:
    _, a = enqueue(db, {})
    _, b = enqueue(db, {}, depends_on=[a])
    _, c = enqueue(db, {}, depends_on=[a])
    _, d = enqueue(db, {}, depends_on=[b, c])
    (leased,) = dequeue(db)
    assert fail(db, leased, retry=False) == "failed"
    events = coordinate_until_quiet(db)
    for m in (b, c, d):
        assert events_of(events, m).count("MESSAGE_DEPENDENCIES_UNMET") == 1
        assert events_of(events, m).count("MESSAGE_FINALIZED") == 1
    assert {state_of(db, m) for m in (b, c, d)} == {"failed"}
    assert db.execute("SELECT count(*) FROM hydra.parent_outcome").fetchone() == (0,)


def test_a_parent_whose_last_lease_expired_fails_its_children(db: Conn) -> None:
    _, parent = enqueue(db, {}, max_processing_secs=0.1)
    _, child = enqueue(db, {}, depends_on=[parent])
    assert [m["id"] for m in dequeue(db)] == [parent]
    time.sleep(0.2)  # the worker vanished: its lease runs out
    events = coordinate_until_quiet(db)
    assert events_of(events, parent) == ["MESSAGE_ATTEMPTS_EXHAUSTED", "MESSAGE_FINALIZED"]
    assert events_of(events, child) == [
        "MESSAGE_DEPENDENCY_RESOLVED", "MESSAGE_DEPENDENCIES_UNMET", "MESSAGE_FINALIZED"]


def test_without_cascade_child_runs_after_all_parents_and_sees_the_failed_one(
    db: Conn,
) -> None:
    _, bad = enqueue(db, {"parent": "bad"})
    _, good = enqueue(db, {"parent": "good"})
    _, child = enqueue(db, {"child": True}, depends_on=[bad, good], cascade_failure=False)

    leased = {m["id"]: m for m in dequeue(db, batch=10)}
    assert set(leased) == {bad, good}
    assert fail(db, leased[bad], retry=False) == "failed"
    events = coordinate_until_quiet(db)
    # One parent failed, the other still runs: the child keeps waiting.
    assert events_of(events, child) == ["MESSAGE_DEPENDENCY_RESOLVED"]
    assert state_of(db, child) == "pending"

    assert complete(db, leased[good])
    events = coordinate_until_quiet(db)
    assert events_of(events, child) == ["MESSAGE_DEPENDENCY_RESOLVED", "MESSAGE_RELEASED"]
    (row,) = dequeue(db)
    assert row["id"] == child
    assert row["failed_parents"] == [bad]


def test_without_cascade_a_failed_grandparent_still_fails_a_cascading_grandchild(
    db: Conn,
) -> None:
    # a fails; b (cascade off) runs and succeeds; c (cascade on) depends only on b: it runs.
    _, a = enqueue(db, {})
    _, b = enqueue(db, {}, depends_on=[a], cascade_failure=False)
    _, c = enqueue(db, {}, depends_on=[b])
    (la,) = dequeue(db)
    assert fail(db, la, retry=False) == "failed"
    coordinate_until_quiet(db)
    (lb,) = dequeue(db)
    assert lb["id"] == b and lb["failed_parents"] == [a]
    assert complete(db, lb)
    coordinate_until_quiet(db)
    (lc,) = dequeue(db)
    assert lc["id"] == c and lc["failed_parents"] == []


# --------------------------------------------------------------------------------------------
# Parents already finished, unknown or invalid
# --------------------------------------------------------------------------------------------


def test_a_parent_that_already_succeeded_counts_at_once(db: Conn) -> None:
    _, parent = enqueue(db, {})
    (leased,) = dequeue(db)
    assert complete(db, leased)
    assert state_of(db, parent) is None  # succeeded messages are deleted

    result, child = enqueue(db, {}, depends_on=[parent])
    assert result == "enqueued"
    # Ready without any coordination.
    assert state_of(db, child) == "ready"
    (row,) = dequeue(db)
    assert row["id"] == child and row["failed_parents"] == []


def test_a_parent_that_already_failed_counts_at_once(db: Conn) -> None:
    _, parent = enqueue(db, {})
    (leased,) = dequeue(db)
    assert fail(db, leased) == "failed"
    assert state_of(db, parent) == "failed"  # failed messages are kept

    _, cascading = enqueue(db, {}, depends_on=[parent])
    _, tolerant = enqueue(db, {}, depends_on=[parent], cascade_failure=False)

    rows = dict(db.execute(
        "SELECT id, state FROM hydra.message WHERE id = ANY(%s)", ([cascading, tolerant],)
    ).fetchall())
    assert rows == {cascading: "failed", tolerant: "ready"}
    (row,) = dequeue(db, batch=10)
    assert row["id"] == tolerant and row["failed_parents"] == [parent]
    assert coordinate_until_quiet(db) == []


def test_a_parent_still_pending_or_locked_is_waited_for(db: Conn) -> None:
    _, delayed = enqueue(db, {}, delay_secs=3600)
    _, retrying = enqueue(db, {}, num_attempts=3, lock_secs=3600)
    (leased,) = dequeue(db)
    assert fail(db, leased) == "locked"
    _, child = enqueue(db, {}, depends_on=[delayed, retrying])
    assert coordinate_until_quiet(db) == []
    assert state_of(db, child) == "pending"


@pytest.mark.parametrize("bad_id", [10_000_000, 0, -1])
def test_unknown_parent_id_is_rejected_naming_depends_on_and_nothing_is_written(
    db: Conn, bad_id: int
) -> None:
    _, known = enqueue(db, {})
    before = (count_messages(db), count_edges(db))
    with pytest.raises(psycopg.errors.InvalidParameterValue, match=r"^depends_on") as err:
        enqueue(db, {}, depends_on=[known, bad_id])
    assert str(bad_id) in str(err.value)
    with pytest.raises(psycopg.errors.InvalidParameterValue, match=r"depends_on"):
        enqueue_many(db, [{"payload": 1}, {"payload": 2, "depends_on": [bad_id]}])
    assert (count_messages(db), count_edges(db)) == before


def test_the_first_id_is_unknown_before_any_message_was_ever_enqueued(db: Conn) -> None:
    # A fresh database: the id sequence has not issued anything yet (is_called = false), so
    # id 1 never existed; accepting it would even make the new message (which gets id 1)
    # its own, already "succeeded", parent.
    with pytest.raises(psycopg.errors.InvalidParameterValue, match=r"^depends_on"):
        enqueue(db, {}, depends_on=[1])
    assert (count_messages(db), count_edges(db)) == (0, 0)


@pytest.mark.parametrize("depends_on", [[None], "dup"], ids=["null", "duplicate"])
def test_null_or_duplicate_parent_ids_are_rejected(db: Conn, depends_on: Any) -> None:
    _, parent = enqueue(db, {})
    ids = [parent, parent] if depends_on == "dup" else [parent, None]
    before = (count_messages(db), count_edges(db))
    with pytest.raises(psycopg.errors.InvalidParameterValue, match=r"^depends_on"):
        enqueue(db, {}, depends_on=ids)
    with pytest.raises(psycopg.errors.InvalidParameterValue, match=r"depends_on"):
        enqueue_many(db, [{"payload": 1}, {"payload": 2, "depends_on": ids}])
    assert (count_messages(db), count_edges(db)) == before


def test_empty_depends_on_means_no_parents(db: Conn) -> None:
    _, message = enqueue(db, {}, depends_on=[])
    assert state_of(db, message) == "ready"


# --------------------------------------------------------------------------------------------
# Dropped parents, delays, batches
# --------------------------------------------------------------------------------------------


def test_a_parent_dropped_by_a_full_channel_counts_as_failed(db: Conn) -> None:
    db.execute("SELECT hydra.channel_policy_set('full', max_size => 0)")
    result, dropped = enqueue(db, {}, channel="full")
    assert result == "dropped"

    _, cascading = enqueue(db, {}, depends_on=[dropped])
    _, tolerant = enqueue(db, {}, depends_on=[dropped], cascade_failure=False)
    assert state_of(db, cascading) == "failed"
    (row,) = dequeue(db, batch=10)
    assert row["id"] == tolerant and row["failed_parents"] == [dropped]


def test_a_parent_dropped_at_admission_fails_its_waiting_children(db: Conn) -> None:
    db.execute("SELECT hydra.channel_policy_set('small', max_size => 1)")
    # Both are admitted by coordinate(): the first fits, the second is dropped there.
    _, kept = enqueue(db, {}, channel="small")
    _, dropped = enqueue(db, {}, channel="small")
    _, child = enqueue(db, {}, depends_on=[dropped])
    events = coordinate_until_quiet(db)
    assert events_of(events, kept) == ["MESSAGE_RELEASED"]
    assert events_of(events, dropped) == ["MESSAGE_DROPPED", "MESSAGE_FINALIZED"]
    assert events_of(events, child) == [
        "MESSAGE_DEPENDENCY_RESOLVED", "MESSAGE_DEPENDENCIES_UNMET", "MESSAGE_FINALIZED"]
    assert state_of(db, child) == "failed"


def test_a_childs_own_delay_counts_from_when_its_parents_resolved(db: Conn) -> None:
    _, parent = enqueue(db, {})
    _, child = enqueue(db, {}, depends_on=[parent], delay_secs=0.6)
    (leased,) = dequeue(db)
    time.sleep(0.8)  # longer than the delay: counted from enqueue, it would be over already
    assert complete(db, leased)

    events = coordinate_until_quiet(db)
    assert events_of(events, child) == ["MESSAGE_DEPENDENCY_RESOLVED"]
    row = db.execute(
        "SELECT state, available_at - now() FROM hydra.message WHERE id = %s", (child,)
    ).fetchone()
    assert row is not None and row[0] == "pending"
    assert 0.3 < row[1].total_seconds() <= 0.6
    assert dequeue(db) == []

    time.sleep(row[1].total_seconds() + 0.05)
    assert events_of(coordinate(db), child) == ["MESSAGE_RELEASED"]
    assert [m["id"] for m in dequeue(db)] == [child]


def test_enqueue_many_takes_depends_on_per_element(db: Conn) -> None:
    _, p1 = enqueue(db, {"p": 1})
    _, p2 = enqueue(db, {"p": 2})
    rows = enqueue_many(
        db,
        [
            {"payload": "default parents"},
            {"payload": "no parents", "depends_on": []},
            {"payload": "both", "depends_on": [p1, p2]},
            {"payload": "tolerant", "depends_on": [p2], "cascade_failure": False},
        ],
        depends_on=[p1],
    )
    assert [r[1] for r in rows] == ["enqueued"] * 4
    by_default, orphan, both, tolerant = (r[2] for r in rows)
    edges = db.execute(
        "SELECT child_id, array_agg(parent_id ORDER BY parent_id) FROM hydra.dependency"
        " GROUP BY child_id"
    ).fetchall()
    assert dict(edges) == {by_default: [p1], both: [p1, p2], tolerant: [p2]}

    first = {m["id"]: m for m in dequeue(db, batch=10)}
    assert set(first) == {p1, p2, orphan}
    assert complete(db, first[p1])
    assert fail(db, first[p2]) == "failed"
    events = coordinate_until_quiet(db)
    assert "MESSAGE_RELEASED" in events_of(events, by_default)
    assert "MESSAGE_DEPENDENCIES_UNMET" in events_of(events, both)
    assert "MESSAGE_RELEASED" in events_of(events, tolerant)
    served = {m["id"]: m["failed_parents"] for m in dequeue(db, batch=10)}
    assert served == {by_default: [], tolerant: [p2]}


# --------------------------------------------------------------------------------------------
# Races between a producer attaching a child and a worker finishing the parent
# (more in tests/test_hardening_tenancy.py: the parent's settlement never waits for the
# producer, and the child resolves whichever commits first)
# --------------------------------------------------------------------------------------------


def test_an_open_producer_transaction_attaching_a_child_does_not_stall_its_ready_parent(
    db: Conn, connect: Any
) -> None:
    _, parent = enqueue(db, {})
    producer = connect(autocommit=False)
    enqueue(producer, {}, depends_on=[parent])
    worker = connect(options="-c lock_timeout=1s")
    assert [m["id"] for m in dequeue(worker)] == [parent]
    producer.rollback()


@pytest.mark.parametrize("parent_state", ["pending", "locked"])
def test_an_open_producer_transaction_does_not_delay_its_parents_release(
    db: Conn, connect: Any, parent_state: str
) -> None:
    # SPEC §4: a producer that keeps its transaction open must not stall the coordinator.
    if parent_state == "pending":
        _, parent = enqueue(db, {}, delay_secs=0.05)
        expected = "MESSAGE_RELEASED"
    else:
        _, parent = enqueue(db, {}, num_attempts=2, lock_secs=0.05)
        (leased,) = dequeue(db)
        assert fail(db, leased) == "locked"
        expected = "MESSAGE_UNLOCKED"
    time.sleep(0.1)
    producer = connect(autocommit=False)
    enqueue(producer, {}, depends_on=[parent])
    try:
        assert events_of(coordinate(db), parent) == [expected]
        assert state_of(db, parent) == "ready"
    finally:
        producer.rollback()


def test_a_parent_with_more_children_than_a_batch_is_handed_down_over_several_calls(
    db: Conn,
) -> None:
    # coordinate(batch) bounds the children it resolves per call, not only the parents: a
    # round takes at most batch children and a call at most 10 rounds, so a fan-out of 1,250
    # under batch 100 takes two calls, each child resolved exactly once.
    (_, parent) = enqueue(db, "fan-out root")
    fan_out = [{"payload": i} for i in range(1250)]
    children = [m for _, _, m in enqueue_many(db, fan_out, depends_on=[parent])]
    leased = dequeue(db)
    assert [m["id"] for m in leased] == [parent]
    assert complete(db, leased[0])

    resolved_per_call = []
    resolved: list[int] = []
    for _ in range(3):
        got = [e.message_id for e in coordinate(db, batch=100)
               if e.event == "MESSAGE_DEPENDENCY_RESOLVED"]
        resolved_per_call.append(len(got))
        resolved += got
    assert resolved_per_call == [1000, 250, 0]
    assert sorted(resolved) == sorted(children)
    coordinate_until_quiet(db)
    assert {state_of(db, c) for c in children} == {"ready"}
    assert db.execute("SELECT count(*) FROM hydra.parent_outcome").fetchone() == (0,)
