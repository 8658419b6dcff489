"""What one producer can do to the others (issue 9, items 4-6): hydramq is shared by many
tenants' producers, so none of them may stall another's settlement, jump another's channel
order, take over another's de-duplication name, learn queue names without a grant, or store a
payload beyond its queue's limit. Each test also checks that the queue keeps serving everyone
else afterwards.

Waits are bounded: sessions that must not wait run with a lock_timeout, and a session that
must wait is watched with ``pg_isolation_test_session_is_blocked``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
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
from psycopg import sql
from psycopg.conninfo import make_conninfo

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
    assert db.execute("SELECT count(*) FROM hydra.edge_check").fetchone() == (0,)


# --------------------------------------------------------------------------------------------
# Item 6c: a per-queue payload size limit (default 1 MiB) on every enqueue path
# --------------------------------------------------------------------------------------------

BIG = 2 * 1024 * 1024  # characters of a payload string beyond the default 1 MiB


def _big(size: int) -> str:
    return f"jsonb_build_object('x', repeat('a', {size}))"


ENQUEUE_PATHS = {
    "enqueue fast path": "SELECT hydra.enqueue({p}, queue => %(q)s)",
    "enqueue general path": "SELECT hydra.enqueue({p}, queue => %(q)s, name => 'n1')",
    "enqueue_many plain path":
        "SELECT hydra.enqueue_many(jsonb_build_array(jsonb_build_object('payload', 1),"
        " jsonb_build_object('payload', {p})), queue => %(q)s)",
    "enqueue_many general path":
        "SELECT hydra.enqueue_many(jsonb_build_array(jsonb_build_object('payload', 1),"
        " jsonb_build_object('payload', {p}, 'name', 'n2')), queue => %(q)s)",
    "schedule_set":
        "SELECT hydra.schedule_set('s', '* * * * *', {p}, queue => %(q)s)",
}


def _refused(db: Conn, query: str, queue: str) -> str:
    with pytest.raises(psycopg.errors.InvalidParameterValue) as info:
        db.execute(query, {"q": queue})
    return str(info.value)


@pytest.mark.parametrize("path", list(ENQUEUE_PATHS))
def test_a_payload_above_the_default_limit_is_refused_on_every_path(
    db: Conn, path: str
) -> None:
    message = _refused(db, ENQUEUE_PATHS[path].format(p=_big(BIG)), "default")
    assert message.startswith("payload: must be at most 1048576 bytes")
    assert db.execute("SELECT count(*) FROM hydra.message").fetchone() == (0,)
    assert db.execute("SELECT count(*) FROM hydra.schedule").fetchone() == (0,)
    # Just under the default goes through, and the queue serves as before.
    db.execute(ENQUEUE_PATHS[path].format(p=_big(1024 * 1024 - 100)), {"q": "default"})
    enqueue(db, {"small": 1}, channel="other-tenant")
    assert len(dequeue(db, batch=10)) >= (0 if path == "schedule_set" else 1)


@pytest.mark.parametrize("path", list(ENQUEUE_PATHS))
def test_a_queue_limit_applies_to_that_queue_only(db: Conn, path: str) -> None:
    db.execute("SELECT hydra.queue_set('tight', max_payload_bytes => 2048)")
    message = _refused(db, ENQUEUE_PATHS[path].format(p=_big(3000)), "tight")
    assert message.startswith("payload: must be at most 2048 bytes in queue 'tight'")
    db.execute(ENQUEUE_PATHS[path].format(p=_big(3000)), {"q": "roomy"})
    db.execute(ENQUEUE_PATHS[path].format(p=_big(1000)), {"q": "tight"})


def test_queue_settings_are_checked_listed_and_cleared(db: Conn) -> None:
    for bad in (0, 1023, 268435456, -1):
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="^max_payload_bytes: "):
            db.execute("SELECT hydra.queue_set('q', max_payload_bytes => %s)", (bad,))
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="^queue: "):
        db.execute("SELECT hydra.queue_set(NULL, max_payload_bytes => 4096)")
    db.execute("SELECT hydra.queue_set('q', max_payload_bytes => 4096)")
    db.execute("SELECT hydra.queue_set('r')")
    assert db.execute("SELECT queue, max_payload_bytes FROM hydra.queues ORDER BY 1").fetchall() \
        == [("q", 4096), ("r", 1048576)]
    assert db.execute("SELECT hydra.queue_clear('q')").fetchone() == (True,)
    assert db.execute("SELECT hydra.queue_clear('q')").fetchone() == (False,)
    db.execute(f"SELECT hydra.enqueue({_big(8000)}, queue => 'q')")


def test_a_schedule_whose_payload_no_longer_fits_skips_its_tick_and_others_fire(
    db: Conn,
) -> None:
    db.execute(f"SELECT hydra.schedule_set('big', '* * * * *', {_big(3000)}, queue => 'q')")
    db.execute("SELECT hydra.schedule_set('small', '* * * * *', '{}', queue => 'q')")
    db.execute("SELECT hydra.queue_set('q', max_payload_bytes => 2048)")
    db.execute("SET client_min_messages = error")
    fired = db.execute(
        "SELECT detail->>'schedule' FROM hydra._fire_due_schedules_at(10, now() + interval '2 min')"
    ).fetchall()
    assert fired == [("small",)]
    row = db.execute("SELECT last_error FROM hydra.schedule WHERE name = 'big'").fetchone()
    assert row is not None and "payload: must be at most 2048 bytes" in row[0]


def test_a_payload_read_compressed_from_a_table_is_measured_uncompressed(db: Conn) -> None:
    # 2 MiB of one letter compresses to a few kB: its stored size must not fool the limit.
    db.execute(f"CREATE TABLE staged AS SELECT {_big(BIG)} AS p")
    assert db.execute("SELECT pg_column_size(p) < 1048576 FROM staged").fetchone() == (True,)
    for query in ("SELECT hydra.enqueue(p) FROM staged",
                  "SELECT hydra.enqueue_many(jsonb_build_array(jsonb_build_object('payload', p)))"
                  " FROM staged"):
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="^payload: "):
            db.execute(query)


# --------------------------------------------------------------------------------------------
# Item 6a: de-duplication names belong to (queue, channel): no tenant pre-empts another's
# --------------------------------------------------------------------------------------------


def test_a_tenant_cannot_pre_empt_another_tenants_deduplication_name(db: Conn) -> None:
    # The attacker enqueues the victim's name first, in its own channel.
    _, planted = enqueue(db, {"by": "attacker"}, channel="attacker", name="invoice-123")
    result, victim = enqueue(db, {"by": "victim"}, channel="victim", name="invoice-123")
    assert result == "enqueued" and victim != planted
    assert enqueue(db, {"again": 1}, channel="victim", name="invoice-123") == (
        "deduplicated", victim)
    # The same through enqueue_many, the name given per element and as the call's default.
    rows = enqueue_many(db, [{"payload": {"by": "victim"}, "channel": "victim",
                              "name": "invoice-124"},
                             {"payload": {"by": "attacker"}, "channel": "attacker"}],
                        name="invoice-124")
    assert [r[1] for r in rows] == ["enqueued", "enqueued"]
    served = sorted((m["channel"], json.dumps(m["payload"])) for m in dequeue(db, batch=10))
    assert served == [("attacker", json.dumps({"by": "attacker"}))] * 2 + [
        ("victim", json.dumps({"by": "victim"}))] * 2


def test_a_name_held_by_an_open_transaction_in_another_channel_makes_no_one_wait(
    db: Conn, connect: Any
) -> None:
    attacker = connect(autocommit=False)
    enqueue(attacker, {}, channel="attacker", name="invoice-9")
    victim = guarded(connect())
    assert enqueue(victim, {}, channel="victim", name="invoice-9")[0] == "enqueued"
    attacker.rollback()


# --------------------------------------------------------------------------------------------
# Item 6b: NOTIFY hydra_enqueue tells a role without a grant no queue name, and a NOTIFY from
# anyone is only a hint
# --------------------------------------------------------------------------------------------


@pytest.fixture
def outsider(db: Conn, dsn: str) -> Iterator[Conn]:
    """A session of a role with no hydra grant at all (LISTEN and NOTIFY need none)."""
    name = f"hydra_test_outsider_{uuid.uuid4().hex[:8]}"
    db.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD 'secret'").format(sql.Identifier(name)))
    try:
        with psycopg.connect(make_conninfo(dsn, user=name, password="secret"),
                             autocommit=True) as conn:
            yield conn
    finally:
        db.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
        db.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


def _notes(conn: Conn) -> list[str]:
    conn.execute("SELECT 1")  # a round trip delivers pending notifications
    return [n.payload for n in conn.notifies(timeout=0.2) if n.channel == "hydra_enqueue"]


def test_a_role_without_a_grant_learns_no_queue_name_from_notifications(
    db: Conn, connect: Any, outsider: Conn
) -> None:
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        outsider.execute("SELECT hydra.enqueue('{}')")
    outsider.execute("LISTEN hydra_enqueue")
    worker = connect()
    worker.execute("LISTEN hydra_enqueue")
    worker.execute("SELECT hydra.worker_idle(ARRAY['payroll-acme'])")
    enqueue(db, {}, queue="payroll-acme")  # claims the registration: the worker's pid
    assert _notes(outsider) == [str(worker.info.backend_pid)]
    slow = connect(autocommit=False)
    worker.execute("SELECT hydra.worker_idle(ARRAY['payroll-acme'])")
    enqueue(slow, {}, queue="payroll-acme")  # holds the claim
    enqueue(db, {}, queue="payroll-acme")  # finds none to claim: an empty hint
    assert _notes(outsider) == [""]
    slow.rollback()
    assert all("payroll" not in p for p in _notes(worker))


def test_spurious_notifications_are_harmless_hints(
    db: Conn, connect: Any, outsider: Conn
) -> None:
    worker = connect()
    worker.execute("LISTEN hydra_enqueue")
    worker.execute("SELECT hydra.worker_idle(ARRAY['q'])")
    for payload in ("q", "", str(worker.info.backend_pid), "x" * 7000):
        outsider.execute("SELECT pg_notify('hydra_enqueue', %s)", (payload,))
    assert len(_notes(worker)) == 4
    # Nothing changed: the worker is still registered, the next enqueue wakes it, the queue
    # serves everything.
    assert db.execute("SELECT count(*) FROM hydra.waiting_worker").fetchone() == (1,)
    enqueue(db, {"n": 1}, queue="q")
    assert _notes(worker) == [str(worker.info.backend_pid)]
    assert payloads(dequeue(db, queue="q")) == [{"n": 1}]
