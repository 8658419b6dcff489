"""Per-channel max_concurrency (SPEC §5): never exceeded under many concurrent workers, 0 pauses
a channel, raising the cap resumes it, clearing restores unlimited, and a channel at its cap
never stops the others (work-conserving)."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from typing import Any

import psycopg
import pytest
from helpers import (
    Threads,
    cap_violations,
    complete,
    coordinate,
    dequeue,
    enqueue,
    enqueue_many,
    fail,
    set_policy,
)

Conn = psycopg.Connection[Any]


def channels_of(rows: list[dict[str, Any]]) -> list[str | None]:
    return [r["channel"] for r in rows]


def drain_leases(conn: Conn) -> list[dict[str, Any]]:
    """Dequeues (without settling) until nothing more is handed out."""
    leased: list[dict[str, Any]] = []
    while rows := dequeue(conn, 5):
        leased += rows
    return leased


def in_flight(conn: Conn) -> dict[str, int]:
    return dict(conn.execute("SELECT channel, in_flight FROM hydra.channel_limit").fetchall())


def processing(conn: Conn, channel: str) -> int:
    row = conn.execute(
        "SELECT count(*) FROM hydra.message WHERE channel = %s AND state = 'processing'",
        (channel,),
    ).fetchone()
    assert row is not None
    return int(row[0])


@pytest.mark.parametrize("policy_churn", [False, True], ids=["fixed caps", "caps being set"])
def test_max_concurrency_is_never_exceeded_by_sixteen_concurrent_dequeuers(
    db: Conn, connect: Any, policy_churn: bool
) -> None:
    # With policy_churn an admin keeps setting caps while the workers run: the same value
    # again, or one more (never less, so that the invariant holds at every instant).
    caps = {f"capped-{i:02d}": i % 3 + 1 for i in range(50)}
    for channel, cap in caps.items():
        set_policy(db, channel, cap)
    channels = [*caps, "free-1", "free-2"]
    ids = enqueue_many(
        db,
        [{"payload": {"k": k}, "channel": ch} for k in range(30) for ch in channels],
        num_attempts=3,
        lock_secs=0,
    )
    total = len(ids)
    completed: Counter[int] = Counter()
    locked = Counter[int]()
    lock = threading.Lock()
    worker_conns = [connect() for _ in range(16)]
    observer, coordinator, admin = connect(), connect(), connect()
    stop = threading.Event()
    policy_changes = 0

    def finished() -> bool:
        with lock:
            return len(completed) >= total

    def work(i: int) -> None:
        conn, rng = worker_conns[i], random.Random(i)
        while not stop.is_set() and not finished():
            rows = dequeue(conn, rng.randint(1, 4))
            if not rows:
                time.sleep(0.002)
                continue
            time.sleep(rng.random() * 0.004)  # "processing"
            done = []
            for row in rows:
                if row["attempt"] < row["num_attempts"] and rng.random() < 0.25:
                    assert fail(conn, row)["outcome"] == "locked"
                    with lock:
                        locked[row["id"]] += 1
                else:
                    done.append(row)
            if rng.random() < 0.5:
                got = [
                    r[0]
                    for r in conn.execute(
                        "SELECT * FROM hydra.complete_many(%s, %s)",
                        ([r["id"] for r in done], [r["lease_token"] for r in done]),
                    ).fetchall()
                ]
            else:
                got = [r["id"] for r in done if complete(conn, r)]
            assert sorted(got) == sorted(r["id"] for r in done)
            with lock:
                completed.update(got)

    violations: list[Any] = []
    checks = 0

    def watch(_: int) -> None:
        nonlocal checks
        while not stop.is_set() and not finished():
            violations.extend(cap_violations(observer))
            checks += 1
            time.sleep(0.005)

    def unlock(_: int) -> None:  # back-off is 0: coordinate makes failed messages ready again
        while not stop.is_set() and not finished():
            coordinate(coordinator)
            time.sleep(0.02)

    def churn(_: int) -> None:
        nonlocal policy_changes
        rng = random.Random("churn")
        while policy_churn and not stop.is_set() and not finished():
            channel = rng.choice(list(caps))
            caps[channel] = min(caps[channel] + rng.choice([0, 0, 1]), 4)
            set_policy(admin, channel, caps[channel])
            policy_changes += 1
            time.sleep(0.003)

    threads = Threads(16, work, stop=stop)
    helpers = [
        Threads(1, watch, "watch", stop),
        Threads(1, unlock, "coordinate", stop),
        Threads(1, churn, "policy", stop),
    ]
    deadline = time.monotonic() + 90
    while threads.alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    threads.join(5)
    for helper in helpers:
        helper.join(5)

    assert not violations, f"cap exceeded: {violations[:10]}"
    assert checks >= 10, "the invariant was hardly checked while workers ran"
    assert policy_changes >= 10 or not policy_churn
    assert sum(locked.values()) > 0, "no failure was exercised"
    assert set(completed) == set(ids), f"{total - len(completed)} messages never completed"
    assert max(completed.values()) == 1, "a message was completed twice"
    assert db.execute("SELECT count(*) FROM hydra.message").fetchone() == (0,)
    assert set(in_flight(db).values()) == {0}


def test_zero_max_concurrency_pauses_a_channel_while_others_keep_flowing(db: Conn) -> None:
    enqueue_many(db, [{"payload": {}, "channel": "paused"} for _ in range(6)])
    set_policy(db, "paused", 0)
    enqueue_many(db, [{"payload": {}, "channel": "other"} for _ in range(5)])

    leased = drain_leases(db)
    assert channels_of(leased) == ["other"] * 5
    assert dequeue(db) == []

    # Raising the cap resumes the channel, up to the cap.
    set_policy(db, "paused", 2)
    resumed = drain_leases(db)
    assert channels_of(resumed) == ["paused"] * 2
    assert complete(db, resumed[0])
    assert channels_of(drain_leases(db)) == ["paused"]

    # Clearing the policy restores "unlimited": the rest comes out while two still run.
    assert db.execute("SELECT hydra.channel_policy_clear('paused')").fetchone() == (True,)
    assert channels_of(drain_leases(db)) == ["paused"] * 3
    assert db.execute(
        "SELECT count(*) FROM hydra.message WHERE channel = 'paused' AND state = 'processing'"
    ).fetchone() == (5,)


def test_a_channel_paused_before_its_messages_arrive_holds_them(db: Conn) -> None:
    set_policy(db, "paused", 0)
    enqueue(db, {}, channel="paused")
    enqueue(db, {})
    assert channels_of(drain_leases(db)) == [None]
    set_policy(db, None, 0)  # the default channel can be paused too
    enqueue(db, {})
    assert drain_leases(db) == []
    set_policy(db, "paused", None)  # a policy without a cap is unlimited
    assert channels_of(drain_leases(db)) == ["paused"]


def test_a_capped_channel_at_its_cap_does_not_stop_other_channels(db: Conn) -> None:
    set_policy(db, "A", 1)
    for channel in "ABC":
        enqueue_many(db, [{"payload": {"k": k}, "channel": channel} for k in range(10)])
    first = dequeue(db, 3)
    assert channels_of(first) == ["A", "B", "C"]
    # A is at its cap: single dequeues keep serving B and C in turn.
    rest = [dequeue(db)[0] for _ in range(18)]
    assert channels_of(rest) == ["B", "C"] * 9
    assert dequeue(db) == []
    # Its slot comes back when A's message finishes.
    assert complete(db, first[0])
    assert channels_of(dequeue(db, 5)) == ["A"]


def test_channels_at_their_cap_do_not_hide_ready_work_of_other_channels(db: Conn) -> None:
    # Ten channels capped at 1 and busy, each with more ready messages queued ahead of one
    # message of an uncapped channel: a single dequeue must still find that message.
    for i in range(10):
        set_policy(db, f"busy-{i}", 1)
    enqueue_many(db, [{"payload": {}, "channel": f"busy-{i}"} for _ in range(5) for i in range(10)])
    assert len(dequeue(db, 10)) == 10
    enqueue(db, {"tag": "free"}, channel="free")
    rows = dequeue(db)
    assert [r["payload"] for r in rows] == [{"tag": "free"}]


def test_batch_dequeue_takes_no_more_than_the_cap_of_each_channel(db: Conn) -> None:
    set_policy(db, "A", 2)
    set_policy(db, "B", 1)
    for channel in "ABC":
        enqueue_many(db, [{"payload": {}, "channel": channel} for _ in range(6)])
    rows = dequeue(db, 10)
    assert Counter(channels_of(rows)) == {"A": 2, "B": 1, "C": 6}
    # Fair order among the admitted ones: round 0, then round 1 without the full B.
    assert channels_of(rows)[:5] == ["A", "B", "C", "A", "C"]
    assert in_flight(db) == {"A": 2, "B": 1}


def test_a_cap_set_while_messages_run_counts_them(db: Conn) -> None:
    enqueue_many(db, [{"payload": {}, "channel": "A"} for _ in range(6)])
    running = dequeue(db, 3)
    set_policy(db, "A", 2)
    assert in_flight(db) == {"A": 3}
    assert dequeue(db) == []
    assert complete(db, running[0])
    assert dequeue(db) == []  # still 2 running: at the cap
    assert complete(db, running[1])
    assert channels_of(dequeue(db, 5)) == ["A"]
    assert cap_violations(db) == []


def test_failed_and_expired_attempts_give_their_slot_back(db: Conn) -> None:
    set_policy(db, "A", 1)
    enqueue(db, {"k": 1}, channel="A", num_attempts=2, lock_secs=0)
    enqueue(db, {"k": 2}, channel="A", max_processing_secs=0.2)
    enqueue(db, {"k": 3}, channel="A")

    [first] = dequeue(db, 5)
    assert fail(db, first)["outcome"] == "locked"
    [second] = dequeue(db, 5)  # the failed attempt released the slot
    assert second["payload"] == {"k": 2}
    time.sleep(0.25)
    events = coordinate(db)  # expires k=2 (no attempts left) and unlocks k=1
    assert ("MESSAGE_ATTEMPTS_EXHAUSTED", second["id"]) in events
    assert ("MESSAGE_UNLOCKED", first["id"]) in events
    third = dequeue(db, 5)
    assert len(third) == 1 and in_flight(db) == {"A": 1}
    assert complete(db, third[0])
    last = dequeue(db, 5)
    assert len(last) == 1 and complete(db, last[0])
    assert in_flight(db) == {"A": 0}
    assert db.execute("SELECT count(*) FROM hydra.message WHERE state <> 'failed'").fetchone() == (
        0,
    )


def test_a_policy_change_racing_a_dequeue_keeps_the_slot_count(db: Conn, connect: Any) -> None:
    # A dequeue holds its channel's slot update uncommitted while the policy is set again
    # (same cap): the policy change must not write back a slot count it read before the
    # dequeue committed.
    set_policy(db, "A", 2)
    enqueue_many(db, [{"payload": {}, "channel": "A"} for _ in range(5)])
    worker, admin = connect(autocommit=False), connect()
    assert len(dequeue(worker)) == 1  # in_flight 0 -> 1, not committed yet
    admin_pid = admin.info.backend_pid
    change = Threads(1, lambda _: set_policy(admin, "A", 2), "policy")
    deadline = time.monotonic() + 10
    while not db.execute("SELECT pg_blocking_pids(%s) <> '{}'", (admin_pid,)).fetchone()[0]:
        assert time.monotonic() < deadline and change.alive(), "the policy change never waited"
        time.sleep(0.01)
    worker.commit()
    change.join(10)

    drain_leases(db)
    assert processing(db, "A") == 2  # one more slot, not two
    assert cap_violations(db) == []


def test_a_dequeue_never_deadlocks_with_a_worker_settling_in_channel_order(
    db: Conn, connect: Any
) -> None:
    # The lock order (docs/design.md): limit rows in ascending (queue, channel). A worker
    # completes its messages of channels "a" then "z" in one transaction, in that order; a
    # dequeue that meets z's waiting message first and a's second must not take z's limit row
    # and then wait for a's, or the two wait for each other.
    set_policy(db, "a", 1)
    set_policy(db, "z", 1)
    enqueue(db, {"k": "z0"}, channel="z")
    enqueue(db, {"k": "a0"}, channel="a")
    enqueue(db, {"k": "z1"}, channel="z")
    enqueue(db, {"k": "a1"}, channel="a")
    settler, dequeuer = connect(autocommit=False), connect()
    leased = {r["channel"]: r for r in dequeue(settler, 2)}
    settler.commit()
    assert complete(settler, leased["a"])  # holds a's limit row until commit

    got = Threads(1, lambda _: dequeue(dequeuer, 1), "dequeue")
    deadline = time.monotonic() + 3
    while got.alive() and time.monotonic() < deadline:
        if db.execute(
            "SELECT pg_blocking_pids(%s) <> '{}'", (dequeuer.info.backend_pid,)
        ).fetchone()[0]:
            break
        time.sleep(0.01)
    try:
        assert complete(settler, leased["z"])
        settler.commit()
    finally:
        settler.rollback()
        got.join(10)


def test_a_policy_set_racing_a_policy_clear_counts_the_running_messages(
    db: Conn, connect: Any
) -> None:
    # One admin clears the cap (not committed yet) while another sets it again: whichever
    # way the two land, the channel's running messages must hold slots afterwards.
    set_policy(db, "A", 2)
    enqueue_many(db, [{"payload": {}, "channel": "A"} for _ in range(6)])
    assert len(dequeue(db, 5)) == 2
    clearer, setter = connect(autocommit=False), connect()
    clearer.execute("SELECT hydra.channel_policy_clear('A')")
    change = Threads(1, lambda _: set_policy(setter, "A", 2), "policy")
    deadline = time.monotonic() + 10
    while not db.execute(
        "SELECT pg_blocking_pids(%s) <> '{}'", (setter.info.backend_pid,)
    ).fetchone()[0]:
        assert time.monotonic() < deadline and change.alive(), "the policy set never waited"
        time.sleep(0.01)
    clearer.commit()
    change.join(10)

    drain_leases(db)
    assert processing(db, "A") == 2
    assert cap_violations(db) == []


def wait_until_waiting(observer: Conn, conn: Conn, group: Threads, what: str) -> None:
    """Waits until ``conn``'s session waits on a lock (its call runs in ``group``)."""
    deadline = time.monotonic() + 10
    while not observer.execute(
        "SELECT pg_blocking_pids(%s) <> '{}'", (conn.info.backend_pid,)
    ).fetchone()[0]:
        assert time.monotonic() < deadline and group.alive(), f"{what} never waited"
        time.sleep(0.01)


def test_capping_a_channel_never_deadlocks_with_a_completing_worker(db: Conn, connect: Any) -> None:
    # The lock order (docs/design.md): message rows before limit rows, and nobody waits on a
    # message row while holding a limit row. A channel that had a cap, lost it (its limit row
    # stays) and gets one again; meanwhile a worker completes a message that still holds a
    # slot from the first cap, and another worker's dequeue is not committed yet.
    set_policy(db, "A", 1)
    enqueue(db, {"k": "m"}, channel="A")
    [m] = dequeue(db)
    set_policy(db, "A", None)  # uncapped, the limit row stays; m keeps its slot
    enqueue(db, {"k": "r"}, channel="A")
    slow_worker, admin, worker = connect(autocommit=False), connect(), connect()
    assert len(dequeue(slow_worker)) == 1  # r: leased, not committed

    capping = Threads(1, lambda _: set_policy(admin, "A", 2), "policy")
    wait_until_waiting(db, admin, capping, "the policy change")  # for r's row
    completing = Threads(1, lambda _: complete(worker, m), "complete")
    time.sleep(0.2)  # let the complete run as far as it can
    slow_worker.commit()
    capping.join(10)
    completing.join(10)
    assert cap_violations(db) == []


def test_coordinate_gives_parked_messages_a_free_slot_a_batch_of_channels_at_a_time(
    db: Conn,
) -> None:
    # Parked messages beside a free slot are what a slot release that met a busy limit row
    # leaves behind. Made here by widening the caps behind the API's back; coordinate()
    # un-parks up to the free slots of each channel, at most batch channels per call, in
    # channel order, and leaves channels without a free slot alone.
    for c in ("a", "b", "c", "full"):
        set_policy(db, c, 1)
    enqueue_many(db, [{"payload": i, "channel": c} for c in ("a", "b", "c", "full")
                      for i in range(4)])
    assert sorted(channels_of(dequeue(db, 10))) == ["a", "b", "c", "full"]
    db.execute("UPDATE hydra.channel_limit SET max_concurrency = 3 WHERE channel <> 'full'")

    def ready() -> dict[str, int]:
        rows = db.execute("SELECT channel, count(*) FROM hydra.message WHERE state = 'ready'"
                          " GROUP BY channel").fetchall()
        return dict(rows)

    db.execute("SELECT count(*) FROM hydra.coordinate(batch => 2)")
    assert ready() == {"a": 2, "b": 2}
    db.execute("SELECT count(*) FROM hydra.coordinate(batch => 2)")
    assert ready() == {"a": 2, "b": 2, "c": 2}
    assert in_flight(db) == {"a": 3, "b": 3, "c": 3, "full": 1}
    # The slots so taken are real: dequeues lease the un-parked messages, and no more.
    assert Counter(channels_of(drain_leases(db))) == {"a": 2, "b": 2, "c": 2}
    assert cap_violations(db) == []
