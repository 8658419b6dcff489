"""What one producer can do to the others (issue 9, items 4-6): hydramq is shared by many
tenants' producers, so none of them may stall another's settlement, jump another's channel
order, take over another's de-duplication name, learn queue names without a grant, or store a
payload beyond its queue's limit. Each test also checks that the queue keeps serving everyone
else afterwards.

Waits are bounded: sessions that must not wait run with a lock_timeout, and a session that
must wait is watched with ``pg_isolation_test_session_is_blocked``.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from flow_helpers import (
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


def guarded(conn: Conn) -> Conn:
    """A session that must never wait for another: a wait becomes an error, not a hang."""
    conn.execute("SET lock_timeout = '2s'")
    conn.execute("SET statement_timeout = '20s'")
    return conn


def payloads(leased: list[dict[str, Any]]) -> list[Any]:
    return [m["payload"] for m in leased]


# --------------------------------------------------------------------------------------------
# Item 5: a capped channel's free slot goes to its best waiting message, ready or parked
# --------------------------------------------------------------------------------------------


def test_coordinate_does_not_hand_a_free_slot_to_a_parked_message_behind_a_ready_one(
    db: Conn,
) -> None:
    # The reproducer: n1 is ready (the channel had room), n2 parked behind it.
    db.execute("SELECT hydra.channel_policy_set('c', max_concurrency => 1)")
    enqueue(db, {"n": 1}, channel="c")
    enqueue(db, {"n": 2}, channel="c")
    coordinate(db)
    assert payloads(dequeue(db)) == [{"n": 1}]
    assert dequeue(db) == []  # the cap holds: n2 waits for n1's slot
    # Another tenant's channel is served meanwhile, and the order holds to the end.
    enqueue(db, {"other": 1}, channel="d")
    assert payloads(dequeue(db)) == [{"other": 1}]


def test_a_parked_message_of_higher_priority_takes_the_free_slot_before_a_ready_one(
    db: Conn,
) -> None:
    # Priority first inside the channel: the repair hands the slot to the urgent parked one.
    db.execute("SELECT hydra.channel_policy_set('c', max_concurrency => 1)")
    enqueue(db, {"n": 1}, channel="c")
    enqueue(db, {"n": 2}, channel="c", priority=5)  # parked: no room left
    coordinate(db)
    assert payloads(dequeue(db)) == [{"n": 2}]


def test_a_raised_cap_gives_its_new_slots_in_the_channels_order(db: Conn) -> None:
    db.execute("SELECT hydra.channel_policy_set('c', max_concurrency => 1)")
    for n in range(1, 5):
        enqueue(db, {"n": n}, channel="c")  # n1 ready, n2..n4 parked
    db.execute("SELECT hydra.channel_policy_set('c', max_concurrency => 2)")
    coordinate(db)
    assert payloads(dequeue(db, batch=10)) == [{"n": 1}, {"n": 2}]
    assert db.execute(
        "SELECT in_flight FROM hydra.channel_limit WHERE channel = 'c'").fetchone() == (2,)


# --------------------------------------------------------------------------------------------
# Item 4: a producer attaching a child never makes the parent's settlement wait
# --------------------------------------------------------------------------------------------


def _leased_parent(db: Conn, queue: str = "default") -> tuple[int, dict[str, Any]]:
    _, parent = enqueue(db, {"parent": True}, queue=queue, channel="tenant-a")
    (leased,) = dequeue(db, queue=queue)
    assert leased["id"] == parent
    return parent, leased


@pytest.mark.parametrize("outcome", ["complete", "fail"])
@pytest.mark.parametrize("producer_ends", ["commit", "rollback"])
def test_an_open_producer_attaching_a_child_does_not_block_settling_the_parent(
    db: Conn, connect: Any, outcome: str, producer_ends: str
) -> None:
    # Any producer can name any id in depends_on (ids are sequential). Its open transaction
    # must not stall the worker settling that parent -- the parent is another tenant's.
    parent, leased = _leased_parent(db, queue="victims")
    producer = connect(autocommit=False)
    _, child = enqueue(producer, {"child": True}, depends_on=[parent], channel="tenant-b")
    worker = guarded(connect())
    if outcome == "complete":
        assert complete(worker, leased) is True
    else:
        assert fail(worker, leased, retry=False) == "failed"
    # The parent finished while the child's edge was still uncommitted; then the producer ends.
    getattr(producer, producer_ends)()
    events = coordinate_until_quiet(db)
    if producer_ends == "rollback":
        assert state_of(db, child) is None
        assert db.execute("SELECT count(*) FROM hydra.dependency").fetchone() == (0,)
    elif outcome == "complete":
        assert events_of(events, child) == ["MESSAGE_DEPENDENCY_RESOLVED", "MESSAGE_RELEASED"]
        assert [m["id"] for m in dequeue(db)] == [child]
    else:
        assert events_of(events, child) == [
            "MESSAGE_DEPENDENCY_RESOLVED", "MESSAGE_DEPENDENCIES_UNMET", "MESSAGE_FINALIZED"]
        assert state_of(db, child) == "failed"
    assert db.execute("SELECT count(*) FROM hydra.parent_outcome").fetchone() == (0,)


@pytest.mark.parametrize("outcome", ["complete", "fail"])
def test_a_child_committed_before_its_parent_finishes_resolves_as_before(
    db: Conn, connect: Any, outcome: str
) -> None:
    parent, leased = _leased_parent(db)
    producer = connect(autocommit=False)
    _, child = enqueue(producer, {"child": True}, depends_on=[parent])
    producer.commit()
    worker = guarded(connect())
    if outcome == "complete":
        assert complete(worker, leased) is True
    else:
        assert fail(worker, leased, retry=False) == "failed"
    coordinate_until_quiet(db)
    if outcome == "complete":
        assert [m["id"] for m in dequeue(db)] == [child]
    else:
        assert state_of(db, child) == "failed"


@pytest.mark.parametrize("outcome", ["complete", "fail"])
def test_a_producer_meeting_a_parent_mid_settlement_does_not_wait_and_gets_the_outcome(
    db: Conn, connect: Any, outcome: str
) -> None:
    # The worker's settlement is written but not committed when the producer reads the parent.
    parent, leased = _leased_parent(db)
    worker = connect(autocommit=False)
    if outcome == "complete":
        assert complete(worker, leased) is True
    else:
        assert fail(worker, leased, retry=False) == "failed"
    producer = guarded(connect())
    result, child = enqueue(producer, {"child": True}, depends_on=[parent])
    assert result == "enqueued"
    worker.commit()
    coordinate_until_quiet(db)
    if outcome == "complete":
        assert [m["id"] for m in dequeue(db)] == [child]
    else:
        assert state_of(db, child) == "failed"


def test_an_open_producer_does_not_block_a_parent_whose_lease_expires(
    db: Conn, connect: Any
) -> None:
    _, parent = enqueue(db, {"parent": True}, max_processing_secs=0.01)
    assert [m["id"] for m in dequeue(db)] == [parent]
    producer = connect(autocommit=False)
    _, child = enqueue(producer, {}, depends_on=[parent])
    db.execute("SELECT pg_sleep(0.05)")
    coordinator = guarded(connect())
    events = coordinate(coordinator)
    assert "MESSAGE_ATTEMPTS_EXHAUSTED" in events_of(events, parent)
    producer.commit()
    assert "MESSAGE_DEPENDENCIES_UNMET" in events_of(coordinate_until_quiet(db), child)


def test_many_children_attached_by_open_producers_all_resolve(db: Conn, connect: Any) -> None:
    # Interleavings in bulk: children in enqueue and enqueue_many, attached before, during
    # and after their parents finish, some producers rolling back.
    parents = [enqueue(db, {"p": i}, channel=f"t{i}")[1] for i in range(6)]
    leased = {m["id"]: m for m in dequeue(db, batch=10)}
    assert set(leased) == set(parents)
    early = connect(autocommit=False)
    early_children = [enqueue(early, {}, depends_on=[p])[1] for p in parents[:3]]
    late = connect(autocommit=False)
    late_children = [r[2] for r in enqueue_many(
        late, [{"payload": {}, "depends_on": [p]} for p in parents])]
    doomed = connect(autocommit=False)
    enqueue(doomed, {}, depends_on=parents)
    worker = guarded(connect())
    for i, p in enumerate(parents):
        if i % 2:
            assert fail(worker, leased[p], retry=False) == "failed"
        else:
            assert complete(worker, leased[p]) is True
    early.commit()
    doomed.rollback()
    late.commit()
    coordinate_until_quiet(db)
    served = {m["id"] for m in dequeue(db, batch=100)}
    expected = {c for i, c in enumerate(early_children) if i % 2 == 0}
    expected |= {c for i, c in enumerate(late_children) if i % 2 == 0}
    assert served == expected
    for i, c in enumerate(late_children):
        if i % 2:
            assert state_of(db, c) == "failed"
    assert db.execute("SELECT count(*) FROM hydra.parent_outcome").fetchone() == (0,)
