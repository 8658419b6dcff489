"""Work per call must not grow with unrelated data. A queue may hold very many capped channels
(SPEC §2: channels cost nothing; §5 caps) and very many messages waiting on parents (§7): an
enqueue, a dequeue, a completion and a slot release touch the rows of the messages and
channels they serve, never every capped channel or every waiting edge. Measured as the shared
buffers the calls read (EXPLAIN ANALYZE counts the statements the functions run)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import psycopg
from helpers import dequeue, enqueue_many

Conn = psycopg.Connection[Any]

BUSY = 20  # capped channels with messages, served by every round below
# capped channels with a policy and nothing waiting: first this many, then this many more
# (both sizes keep the limit table's primary key two levels deep, so probes cost the same)
IDLE = 5000
MORE_IDLE = 15000
BATCH = 10


def buffers_of(conn: Conn, statement: str, params: tuple[Any, ...]) -> int:
    """Shared buffers read (hit or not) by running ``statement`` once."""
    row = conn.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + statement, params).fetchone()
    assert row is not None
    plan = (row[0] if isinstance(row[0], list) else json.loads(row[0]))[0]["Plan"]
    return int(plan["Shared Hit Blocks"]) + int(plan["Shared Read Blocks"])


def set_policies(conn: Conn, prefix: str, first: int, count: int, limit: str) -> None:
    """``channel_policy_set(channel => prefix || i, <limit> => ...)`` for i in first..first+count-1;
    ``limit`` is the named arguments, e.g. ``max_concurrency => 1``."""
    conn.execute(
        f"SELECT hydra.channel_policy_set(channel => %s || i, {limit}) "
        "FROM generate_series(%s::integer, %s::integer) i",
        (prefix, first, first + count - 1),
    )


def enqueue_in_thousands(
    conn: Conn, count: int, message: Callable[[int], dict[str, Any]], queue: str
) -> None:
    """Enqueues ``message(i)`` for i in range(count), a thousand per call."""
    for start in range(0, count, 1_000):
        enqueue_many(conn, [message(i) for i in range(start, start + 1_000)], queue=queue)


def complete_buffers(conn: Conn, leased: list[tuple[Any, ...]]) -> int:
    """Buffers read by ``complete_many`` of (id, lease_token) rows."""
    return buffers_of(
        conn,
        "SELECT * FROM hydra.complete_many(%s, %s)",
        ([r[0] for r in leased], [r[1] for r in leased]),
    )


def clear_busy_channels(conn: Conn) -> None:
    """The next round starts from empty busy channels, with no dead entries of earlier ones."""
    conn.execute("DELETE FROM hydra.message WHERE queue = 'default'")
    conn.execute("VACUUM hydra.message")
    conn.execute("UPDATE hydra.channel_limit SET in_flight = 0 WHERE channel LIKE 'busy%'")


def coordinate_buffers(conn: Conn) -> int:
    """Buffers read by one ``coordinate(batch => BATCH)`` call."""
    return buffers_of(conn, "SELECT * FROM hydra.coordinate(batch => %s)", (BATCH,))


def assert_flat(what: str, before: int, after: int) -> None:
    assert after <= before + 10, f"{what} read {before} then {after} buffers"


def one_round(conn: Conn) -> tuple[int, int, int]:
    """Buffers read by (refilling the busy channels, dequeuing a batch, releasing it)."""
    refill = [{"payload": i, "channel": f"busy{i % BUSY}"} for i in range(3 * BUSY)]
    put = buffers_of(conn, "SELECT * FROM hydra.enqueue_many(%s::jsonb)", (json.dumps(refill),))
    ids = [
        r[0]
        for r in conn.execute(
            "SELECT id FROM hydra.message WHERE state = 'ready' ORDER BY vtime, id LIMIT %s",
            (BATCH,),
        ).fetchall()
    ]
    assert len(ids) == BATCH
    took = buffers_of(conn, "SELECT * FROM hydra.dequeue(batch => %s)", (BATCH,))
    leased = conn.execute(
        "SELECT id, lease_token FROM hydra.message WHERE state = 'processing' ORDER BY id"
    ).fetchall()
    assert [r[0] for r in leased] == ids, "the dequeue under EXPLAIN leased what it should"
    released = complete_buffers(conn, leased)
    clear_busy_channels(conn)
    return put, took, released


def add_idle_channels(conn: Conn, first: int, count: int) -> None:
    set_policies(conn, "idle", first, count, "max_concurrency => 1")
    conn.execute("VACUUM ANALYZE hydra.channel_limit")
    one_round(conn)  # plans made again after the statistics changed: later rounds read none


def test_capped_dequeue_and_release_do_not_read_every_capped_channel(db: Conn) -> None:
    set_policies(db, "busy", 0, BUSY, "max_concurrency => 1")
    add_idle_channels(db, 1, IDLE)
    some = one_round(db)
    add_idle_channels(db, IDLE + 1, MORE_IDLE)
    many = one_round(db)

    # 15,000 more limit rows fill some 300 heap and index pages: reading them would show
    # here. Probing the busy channels' rows reads the same few pages as before.
    for what, before, after in zip(("enqueue", "dequeue", "release"), some, many, strict=True):
        assert_flat(what, before, after)


def test_completing_does_not_read_every_waiting_edge(db: Conn, connect: Any) -> None:
    # The worker's session plans its statements while the statistics say there is no edge (a
    # worker started, after a routine ANALYZE, before the application built its DAGs); the
    # edges then arrive from another session.
    db.execute("VACUUM ANALYZE hydra.dependency")
    worker = connect()

    def complete_a_batch() -> int:
        enqueue_many(worker, [{"payload": i} for i in range(BATCH)], queue="plain")
        leased = worker.execute(
            "SELECT id, lease_token FROM hydra.dequeue(queue => 'plain', batch => %s)", (BATCH,)
        ).fetchall()
        assert len(leased) == BATCH
        return complete_buffers(worker, leased)

    def add_edges(count: int) -> None:
        enqueue_in_thousands(
            db, count, lambda i: {"payload": i, "depends_on": [parents[i % 200]]}, "dag"
        )

    complete_a_batch()
    parents = enqueue_many(db, [{"payload": i} for i in range(200)], queue="dag")
    add_edges(5_000)
    complete_a_batch()
    some = complete_a_batch()
    add_edges(15_000)
    many = complete_a_batch()

    # 15,000 more unresolved edges fill some fifty pages of their index (both sizes keep it,
    # and the message table's key, two levels deep).
    assert_flat("complete", some, many)


def test_dequeue_does_not_read_every_size_limited_channel(db: Conn) -> None:
    # Size limits only (no cap): every dequeue still asks whether the queue caps a channel.
    def sized(first: int, count: int) -> None:
        set_policies(db, "sized", first, count, "max_size => 10")
        db.execute("VACUUM ANALYZE hydra.channel_limit")

    def dequeue_a_batch() -> int:
        enqueue_many(db, [{"payload": i, "channel": f"free{i}"} for i in range(BATCH)])
        took = buffers_of(db, "SELECT * FROM hydra.dequeue(batch => %s)", (BATCH,))
        db.execute("DELETE FROM hydra.message")
        db.execute("VACUUM hydra.message")
        return took

    sized(1, IDLE)
    dequeue_a_batch()
    some = dequeue_a_batch()
    sized(IDLE + 1, MORE_IDLE)
    dequeue_a_batch()
    many = dequeue_a_batch()
    assert_flat("dequeue", some, many)


def test_deduplicating_does_not_read_every_named_message(db: Conn) -> None:
    # Plans made while the statistics say the queue holds two named messages (a routine
    # ANALYZE of a young queue); the names then pile up without another ANALYZE.
    def named(first: int, count: int) -> None:
        enqueue_in_thousands(
            db, count, lambda i: {"payload": i, "name": f"job-{first + i}"}, "named"
        )

    def deduplicate() -> int:
        return buffers_of(
            db,
            "SELECT * FROM hydra.enqueue_many(%s::jsonb, queue => 'named')",
            (json.dumps([{"payload": 0, "name": "job-0"}, {"payload": 0, "name": "job-1"}]),),
        )

    enqueue_many(db, [{"payload": i, "name": f"job-{i}"} for i in range(2)], queue="named")
    db.execute("VACUUM ANALYZE hydra.message")
    deduplicate()
    named(2, IDLE)
    some = deduplicate()
    named(IDLE + 2, MORE_IDLE)
    many = deduplicate()
    row = db.execute("SELECT count(*) FROM hydra.message WHERE queue = 'named'").fetchone()
    assert row == (2 + IDLE + MORE_IDLE,), "a duplicate was stored"
    assert_flat("a deduplicated enqueue", some, many)


def test_coordinating_and_policies_do_not_read_every_message_or_channel(
    db: Conn, connect: Any
) -> None:
    # A coordinator and an admin whose sessions planned while the tables were small, and a
    # database that then grows: idle capped channels, and children waiting on a parent.
    coordinator = connect()
    admin = connect()
    set_policies(db, "busy", 0, BUSY, "max_concurrency => 1")
    waiting_on = enqueue_many(db, [{"payload": 0}], queue="parents")
    db.execute("VACUUM ANALYZE")
    coordinator.execute("SELECT count(*) FROM hydra.coordinate()")
    admin.execute("SELECT hydra.channel_policy_set(channel => 'warm-up', max_concurrency => 1)")

    def grow(first: int, count: int) -> None:
        set_policies(db, "idle", first, count, "max_concurrency => 1")
        enqueue_in_thousands(
            db, count, lambda i: {"payload": 0, "depends_on": waiting_on}, "children"
        )

    def measure(round_no: int) -> tuple[int, int]:
        enqueue_many(db, [{"payload": i, "channel": f"busy{i}"} for i in range(BUSY)])
        assert len(dequeue(db, BUSY)) == BUSY
        db.execute(
            "UPDATE hydra.message SET lease_expires_at = now() - interval '1 s' "
            "WHERE state = 'processing'"
        )
        expire = coordinate_buffers(coordinator)
        policy = buffers_of(
            admin,
            "SELECT hydra.channel_policy_set(channel => %s, max_concurrency => 1)",
            (f"new{round_no}",),
        )
        clear_busy_channels(db)
        return expire, policy

    grow(1, IDLE)
    measure(1)
    some = measure(2)
    grow(IDLE + 1, MORE_IDLE)
    measure(3)
    many = measure(4)
    for what, before, after in zip(("coordinate", "policy_set"), some, many, strict=True):
        assert_flat(what, before, after)


def test_repairing_parked_messages_reads_neither_their_backlogs_nor_idle_channels(
    db: Conn, connect: Any
) -> None:
    # Busy capped channels hold parked messages behind a full slot (nothing to repair) while
    # their backlogs deepen and idle capped channels, each with a free slot, multiply:
    # coordinate()'s look for parked messages beside a free slot reads the channels that have
    # parked messages, once each. (Both sizes keep the indexes read equally deep.)
    coordinator = connect()
    set_policies(db, "busy", 0, BUSY, "max_concurrency => 1")
    enqueue_many(db, [{"payload": i, "channel": f"busy{i % BUSY}"} for i in range(BUSY)])
    assert len(dequeue(db, BUSY)) == BUSY

    def grow(first: int, count: int, backlog: int) -> None:
        enqueue_in_thousands(
            db, backlog, lambda i: {"payload": i, "channel": f"busy{i % BUSY}"}, "default"
        )
        set_policies(db, "idle", first, count, "max_concurrency => 1")
        db.execute("VACUUM ANALYZE")

    # Backlogs of 1,000 then 4,000 parked messages keep the parked index two levels deep.
    grow(1, IDLE, 1_000)
    coordinate_buffers(coordinator)  # plans made again after the statistics changed
    some = coordinate_buffers(coordinator)
    grow(IDLE + 1, MORE_IDLE, 3_000)
    coordinate_buffers(coordinator)
    many = coordinate_buffers(coordinator)
    parked = db.execute("SELECT count(*) FROM hydra.message WHERE state = 'parked'").fetchone()
    assert parked == (4_000,)  # nothing was due for repair
    assert_flat("coordinate", some, many)
