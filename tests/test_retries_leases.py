"""Retries, back-off, leases and delays (SPEC §6, §9): after the k-th failure a message waits
lock_secs * factor^(k-1); with no attempt left, or without retry, it fails at once; an expired
lease is a failed attempt and the stale token can no longer settle the message; heartbeat keeps
a lease; delayed messages wait for their delay and are released by coordinate()."""

from __future__ import annotations

import time
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from helpers import (
    complete,
    coordinate,
    dequeue,
    enqueue,
    enqueue_many,
    fail,
    heartbeat,
    state_of,
)

Conn = psycopg.Connection[Any]


def server_seconds_until(conn: Conn, moment: Any) -> float:
    """Seconds from the server's clock now until ``moment`` (negative once it passed)."""
    row = conn.execute(
        "SELECT extract(epoch FROM %s::timestamptz - clock_timestamp())", (moment,)
    ).fetchone()
    assert row is not None
    return float(row[0])


def remains(conn: Conn, moment: Any, promised: float) -> bool:
    """By the server's clock, ``moment`` is at most ``promised`` seconds away and not much
    less (the calls since it was set took some time)."""
    left = server_seconds_until(conn, moment)
    assert promised - 0.25 < left <= promised + 0.002, (left, promised)
    return True


def coordinate_before(conn: Conn, moment: Any) -> list[tuple[str, int]] | None:
    """``hydra.coordinate()``'s events if it ran before ``moment`` (by its own clock, now()),
    None if it ran too late to tell anything (a slow machine)."""
    row = conn.execute(
        "SELECT coalesce(array_agg(ARRAY[e.event, e.message_id::text]), '{}'), now() < %s"
        " FROM hydra.coordinate() e",
        (moment,),
    ).fetchone()
    assert row is not None
    return [(event, int(message_id)) for event, message_id in row[0]] if row[1] else None


def sleep_until(conn: Conn, moment: Any) -> None:
    time.sleep(max(0.0, server_seconds_until(conn, moment)) + 0.02)


@pytest.mark.parametrize(("lock_secs", "factor", "attempts"), [(0.1, 2, 4), (0.04, 3, 4)])
def test_backoff_after_the_kth_failure_is_lock_secs_times_factor_to_the_k_minus_1(
    db: Conn, lock_secs: float, factor: float, attempts: int
) -> None:
    message_id = enqueue(
        db, {}, num_attempts=attempts, lock_secs=lock_secs, lock_secs_factor=factor
    )
    for k in range(1, attempts):
        [leased] = dequeue(db)
        assert (leased["id"], leased["attempt"]) == (message_id, k)
        result = fail(db, leased)
        wait = Decimal(str(lock_secs)) * Decimal(factor) ** (k - 1)
        assert result["outcome"] == "locked" and result["attempt"] == k
        # Exact against the transaction time of the call, close against the server's clock.
        assert (result["available_at"] - result["now"]).total_seconds() == pytest.approx(
            float(wait), abs=1e-6
        )
        assert remains(db, result["available_at"], float(wait))
        # Not before its time: coordinate leaves it locked, dequeue finds nothing.
        if coordinate_before(db, result["available_at"]) is not None:
            assert state_of(db, message_id) == "locked"
            assert dequeue(db) == []
        sleep_until(db, result["available_at"])
        assert ("MESSAGE_UNLOCKED", message_id) in coordinate(db)

    [last] = dequeue(db)
    assert last["attempt"] == attempts
    result = fail(db, last)
    assert (result["outcome"], result["attempt"], result["available_at"]) == (
        "failed",
        attempts,
        None,
    )
    assert state_of(db, message_id) == "failed"


def test_a_message_without_attempts_left_fails_at_once(db: Conn) -> None:
    message_id = enqueue(db, {}, num_attempts=1, lock_secs=60)
    [leased] = dequeue(db)
    result = fail(db, leased)
    assert (result["outcome"], result["attempt"], result["available_at"]) == ("failed", 1, None)
    row = db.execute(
        "SELECT state, finished_at IS NOT NULL, available_at FROM hydra.message WHERE id = %s",
        (message_id,),
    ).fetchone()
    assert row == ("failed", True, None)
    coordinate(db)
    assert dequeue(db) == [] and state_of(db, message_id) == "failed"


def test_failing_without_retry_fails_at_once_even_with_attempts_left(db: Conn) -> None:
    message_id = enqueue(db, {}, num_attempts=5, lock_secs=0)
    [leased] = dequeue(db)
    result = fail(db, leased, retry=False)
    assert (result["outcome"], result["attempt"], result["available_at"]) == ("failed", 1, None)
    coordinate(db)
    assert dequeue(db) == [] and state_of(db, message_id) == "failed"


def test_fail_many_retries_per_message_as_told(db: Conn) -> None:
    ids = enqueue_many(db, [{"payload": {"k": k}} for k in range(3)], num_attempts=3)
    leased = dequeue(db, 3)
    rows = db.execute(
        "SELECT message_id, outcome, attempt FROM hydra.fail_many(%s, %s,"
        " retries => ARRAY[true, false, NULL]) ORDER BY message_id",
        ([r["id"] for r in leased], [r["lease_token"] for r in leased]),
    ).fetchall()
    # NULL in retries falls back to retry (true by default).
    assert rows == [(ids[0], "locked", 1), (ids[1], "failed", 1), (ids[2], "locked", 1)]


def test_an_expired_lease_is_redelivered_and_the_stale_token_is_refused(db: Conn) -> None:
    message_id = enqueue(db, {}, num_attempts=3, lock_secs=0, max_processing_secs=0.2)
    [stale] = dequeue(db)
    assert stale["attempt"] == 1
    assert remains(db, stale["lease_expires_at"], 0.2)
    assert coordinate_before(db, stale["lease_expires_at"]) in ([], None)  # not expired yet
    sleep_until(db, stale["lease_expires_at"])

    events = coordinate(db)
    assert ("MESSAGE_LOCKED", message_id) in events  # the expiry counts as a failed attempt
    [fresh] = dequeue(db)
    assert (fresh["id"], fresh["attempt"]) == (message_id, 2)
    assert fresh["lease_token"] != stale["lease_token"]

    # The first worker comes back: it can no longer settle or extend the message.
    assert complete(db, stale) is False
    assert fail(db, stale)["outcome"] == "stale"
    assert fail(db, stale, retry=False)["outcome"] == "stale"
    assert heartbeat(db, stale, 60) is None
    row = db.execute(
        "SELECT state, attempt, lease_token, lease_expires_at FROM hydra.message WHERE id = %s",
        (message_id,),
    ).fetchone()
    assert row == ("processing", 2, fresh["lease_token"], fresh["lease_expires_at"])
    assert complete(db, fresh) is True
    assert state_of(db, message_id) is None


def test_an_expired_lease_backs_off_like_a_failure(db: Conn) -> None:
    message_id = enqueue(
        db, {}, num_attempts=2, lock_secs=0.3, lock_secs_factor=2, max_processing_secs=0.1
    )
    [leased] = dequeue(db)
    sleep_until(db, leased["lease_expires_at"])
    row = db.execute(
        "SELECT e.detail->>'available_at', now() FROM hydra.coordinate() e"
        " WHERE e.event = 'MESSAGE_LOCKED' AND e.message_id = %s",
        (message_id,),
    ).fetchone()
    assert row is not None
    available_at = db.execute("SELECT %s::timestamptz", (row[0],)).fetchone()[0]  # type: ignore[index]
    assert (available_at - row[1]).total_seconds() == pytest.approx(0.3, abs=1e-6)
    assert dequeue(db) == []
    sleep_until(db, available_at)
    coordinate(db)
    [again] = dequeue(db)
    assert (again["id"], again["attempt"]) == (message_id, 2)


def test_an_expired_lease_without_attempts_left_fails_the_message(db: Conn) -> None:
    message_id = enqueue(db, {}, max_processing_secs=0.1)  # num_attempts defaults to 1
    [leased] = dequeue(db)
    sleep_until(db, leased["lease_expires_at"])
    events = coordinate(db)
    assert ("MESSAGE_ATTEMPTS_EXHAUSTED", message_id) in events
    assert ("MESSAGE_FINALIZED", message_id) in events
    assert state_of(db, message_id) == "failed"
    assert complete(db, leased) is False
    assert dequeue(db) == []


def extend(conn: Conn, leased: dict[str, Any], secs: float | None) -> tuple[Any, float]:
    """``hydra.heartbeat`` -> (new deadline, seconds granted from the call's now())."""
    row = conn.execute(
        "SELECT d, extract(epoch FROM d - now())::float8"
        " FROM hydra.heartbeat(%s, %s, %s::numeric) d",
        (leased["id"], leased["lease_token"], secs),
    ).fetchone()
    assert row is not None
    return row[0], row[1]


def test_heartbeat_extends_a_lease_so_coordinate_does_not_expire_it(db: Conn) -> None:
    message_id = enqueue(db, {}, num_attempts=2, lock_secs=0, max_processing_secs=0.3)
    [leased] = dequeue(db)
    time.sleep(0.1)
    deadline, granted = extend(db, leased, 2)
    assert deadline > leased["lease_expires_at"] and granted == 2
    sleep_until(db, leased["lease_expires_at"])  # the original deadline has passed

    assert coordinate(db) == []
    assert state_of(db, message_id) == "processing"
    # Without extend_secs a heartbeat grants max_processing_secs again.
    assert extend(db, leased, None)[1] == pytest.approx(0.3, abs=1e-6)
    assert complete(db, leased) is True


def test_a_settled_lease_cannot_be_settled_twice(db: Conn) -> None:
    enqueue(db, {}, num_attempts=3)
    [leased] = dequeue(db)
    assert complete(db, leased) is True
    assert complete(db, leased) is False
    assert fail(db, leased)["outcome"] == "stale"
    assert heartbeat(db, leased) is None


def test_a_delayed_message_is_not_dequeued_before_its_delay(db: Conn) -> None:
    message_id = enqueue(db, {"tag": "later"}, delay_secs=0.4)
    enqueue(db, {"tag": "now"})
    assert [r["payload"]["tag"] for r in dequeue(db, 5)] == ["now"]
    available_at = db.execute(
        "SELECT available_at FROM hydra.message WHERE id = %s", (message_id,)
    ).fetchone()[0]  # type: ignore[index]
    assert remains(db, available_at, 0.4)
    if coordinate_before(db, available_at) is not None:
        assert state_of(db, message_id) == "pending"
        assert dequeue(db) == []

    sleep_until(db, available_at)
    assert dequeue(db) == []  # due, but only coordinate() releases it
    assert coordinate(db) == [("MESSAGE_RELEASED", message_id)]
    assert [r["id"] for r in dequeue(db)] == [message_id]


def test_delays_given_per_message_in_a_batch_are_kept(db: Conn) -> None:
    ids = enqueue_many(
        db,
        [{"payload": {"k": 0}}, {"payload": {"k": 1}, "delay_secs": 0.3}, {"payload": {"k": 2}}],
        delay_secs=0,
    )
    assert sorted(r["id"] for r in dequeue(db, 5)) == [ids[0], ids[2]]
    available_at = db.execute(
        "SELECT available_at FROM hydra.message WHERE id = %s", (ids[1],)
    ).fetchone()[0]  # type: ignore[index]
    if coordinate_before(db, available_at) is not None:  # it ran before the delay ended
        sleep_until(db, available_at)
        assert coordinate(db) == [("MESSAGE_RELEASED", ids[1])]
    else:  # a slow machine: that late call may have released it already
        sleep_until(db, available_at)
        coordinate(db)
    assert [r["id"] for r in dequeue(db, 5)] == [ids[1]]


def test_a_released_message_joins_the_back_of_the_current_round(db: Conn) -> None:
    enqueue_many(db, [{"payload": {"tag": f"{c}{k}"}, "channel": c} for c in "AB" for k in (1, 2)])
    enqueue(db, {"tag": "D1"}, channel="D", delay_secs=0.2)
    assert [r["payload"]["tag"] for r in dequeue(db)] == ["A1"]
    time.sleep(0.25)
    coordinate(db)
    order = [r["payload"]["tag"] for r in dequeue(db, 10)]
    assert order == ["B1", "D1", "A2", "B2"]
