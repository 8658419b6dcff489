"""A producer that enqueues and keeps its transaction open (SPEC §4) stalls nobody: not the
workers (dequeue, complete, fail, heartbeat), not the coordinator, not other producers -- of the
same channel too -- with or without a policy on that channel. Every other session runs with a
lock_timeout, so a wait shows up as an error instead of a hang."""

from __future__ import annotations

import time
from typing import Any

import psycopg
import pytest
from helpers import complete, coordinate, dequeue, enqueue, enqueue_many, fail, heartbeat

Conn = psycopg.Connection[Any]


def guarded(conn: Conn) -> Conn:
    conn.execute("SET lock_timeout = '2s'")
    conn.execute("SET statement_timeout = '10s'")
    return conn


def produce(conn: Conn, style: str) -> None:
    """What the open transaction enqueues, to the busy channel "hot" and a brand-new one."""
    if style == "enqueue":
        enqueue(conn, {"by": "open"}, channel="hot")
        enqueue(conn, {"by": "open"}, channel="new")
    elif style == "enqueue_many":
        enqueue_many(
            conn,
            [{"payload": {"by": "open"}, "channel": c} for c in ("hot", "hot", "new", None)],
        )
    else:  # urgent, delayed and retryable messages
        enqueue(conn, {"by": "open"}, channel="hot", priority=9, num_attempts=3)
        enqueue(conn, {"by": "open"}, channel="hot", delay_secs=0.05)
        enqueue_many(conn, [{"payload": {"by": "open"}, "channel": "new", "priority": 9}])


@pytest.mark.parametrize("policy", ["no policy", "max_concurrency", "max_size"])
@pytest.mark.parametrize("style", ["enqueue", "enqueue_many", "urgent_delayed"])
def test_an_open_enqueue_transaction_blocks_no_worker_coordinator_or_producer(
    db: Conn, connect: Any, style: str, policy: str
) -> None:
    if policy == "max_concurrency":
        db.execute("SELECT hydra.channel_policy_set('hot', max_concurrency => 10)")
    elif policy == "max_size":
        db.execute("SELECT hydra.channel_policy_set('hot', max_size => 1000)")
    # Work in every state: a lease about to expire, leases to settle, ready messages, a
    # delayed message about to be due. (Under max_size, enqueued messages wait for
    # coordinate() to admit them; nothing may expire the short lease before the check.)
    expiring = enqueue(db, {"k": "exp"}, channel="hot", num_attempts=2, max_processing_secs=0.1)
    enqueue_many(db, [{"payload": {"k": k}, "channel": "hot"} for k in range(6)], num_attempts=2,
                 lock_secs=0)  # fmt: skip
    coordinate(db)
    assert [r["id"] for r in dequeue(db)] == [expiring]
    to_complete, to_fail, to_extend = dequeue(db, 3)
    delayed = enqueue(db, {"k": "delayed"}, channel="hot", delay_secs=0.05)
    time.sleep(0.15)

    producer = connect(autocommit=False)
    produce(producer, style)  # ... and the transaction stays open

    other_producer, worker, coordinator = (guarded(connect()) for _ in range(3))
    enqueue(other_producer, {"by": "other"}, channel="hot")
    enqueue(other_producer, {"by": "other"}, channel="new")
    enqueue_many(other_producer, [{"payload": {"by": "other"}, "channel": "hot"}] * 3)
    with other_producer.transaction():
        enqueue(other_producer, {"by": "other-txn"}, channel="hot", priority=9)

    events = coordinate(coordinator)
    assert ("MESSAGE_LOCKED", expiring) in events
    assert ("MESSAGE_RELEASED", delayed) in events

    leased = dequeue(worker, 50)
    assert leased, "dequeue found nothing"
    assert all(r["payload"].get("by") != "open" for r in leased), "uncommitted work leased"
    assert complete(worker, to_complete)
    assert fail(worker, to_fail)["outcome"] == "locked"
    assert heartbeat(worker, to_extend, 60) is not None
    assert worker.execute(
        "SELECT count(*) FROM hydra.complete_many(%s, %s)",
        ([r["id"] for r in leased], [r["lease_token"] for r in leased]),
    ).fetchone() == (len(leased),)
    coordinate(coordinator)
    assert db.execute("SELECT count(*) FROM pg_locks WHERE NOT granted").fetchone() == (0,)

    # The producer's messages exist once it commits, and flow like any other.
    producer.commit()
    coordinate(coordinator)
    time.sleep(0.06)
    coordinate(coordinator)
    rest = dequeue(worker, 50)
    assert (
        sum(r["payload"].get("by") == "open" for r in rest)
        == {
            "enqueue": 2,
            "enqueue_many": 4,
            "urgent_delayed": 3,
        }[style]
    )


def test_policy_changes_do_not_wait_for_an_open_enqueue_transaction(db: Conn, connect: Any) -> None:
    enqueue_many(db, [{"payload": {}, "channel": "hot"} for _ in range(3)])
    producer = connect(autocommit=False)
    enqueue(producer, {"by": "open"}, channel="hot")
    admin = guarded(connect())
    admin.execute("SELECT hydra.channel_policy_set('hot', max_concurrency => 1)")  # becomes capped
    admin.execute("SELECT hydra.channel_policy_set('hot', max_concurrency => 2)")
    admin.execute("SELECT hydra.channel_policy_clear('hot')")
    admin.execute("SELECT hydra.channel_policy_set('hot', max_concurrency => 0)")
    assert dequeue(guarded(connect())) == []
    producer.commit()
    admin.execute("SELECT hydra.channel_policy_clear('hot')")
    assert len(dequeue(admin, 10)) == 4
