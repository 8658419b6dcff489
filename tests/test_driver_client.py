"""The driver's client API and event mapping (SPEC §3, §13), against the real test server.

The sync and async clients share one builder per SQL function; these tests prove they return
the same thing, run inside the caller's transaction, and that rows map to the right typed
events.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any
from uuid import uuid4

import psycopg
import pytest
from psycopg.rows import dict_row

from hydramq import AsyncClient, Client, FailResult, Message
from hydramq import events as ev
from hydramq.events import EventDispatcher, event_from_row

Conn = psycopg.Connection[Any]


def _normalise(value: Any, base: int) -> Any:
    """Make two runs comparable: ids relative to the run's first id; no times or tokens."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out = {}
        for f in dataclasses.fields(value):
            v = getattr(value, f.name)
            if f.name in ("lease_token", "lease_expires_at", "enqueued_at", "available_at",
                          "next_fire_at", "last_fire_at"):
                v = v is not None
            elif f.name in ("id", "message_id") and isinstance(v, int):
                v = v - base
            elif f.name == "detail":
                v = {k: x for k, x in dict(v).items() if k not in ("available_at",)}
            else:
                v = _normalise(v, base)
            out[f.name] = v
        return (type(value).__name__, out)
    if isinstance(value, (list, tuple)):
        return [_normalise(v, base) for v in value]
    if isinstance(value, datetime):
        return "<time>"
    return value


def _scenario_steps() -> list[tuple[str, Callable[[Any, dict[str, Any]], Any]]]:
    """The same API calls, written once, for a sync or an async client (``c``).

    Each step returns the client call's result (a value or an awaitable)."""
    q = "parity"

    def leased(st: dict[str, Any], i: int) -> Message:
        m: Message = st["leased"][i]
        return m

    return [
        ("enqueue", lambda c, st: c.enqueue({"n": 1}, queue=q, channel="a", priority=5)),
        ("enqueue named", lambda c, st: c.enqueue({"n": 2}, queue=q, channel="b", name="x")),
        ("enqueue dedup", lambda c, st: c.enqueue({"n": 3}, queue=q, channel="b", name="x")),
        ("enqueue_many", lambda c, st: c.enqueue_many(
            [{"payload": {"n": 4}}, {"payload": {"n": 5}, "channel": "c", "priority": 1}],
            queue=q, channel="a", num_attempts=2, lock_secs=0.0)),
        ("policy set", lambda c, st: c.channel_policy_set("c", max_concurrency=3, queue=q)),
        ("policies", lambda c, st: c.channel_policies(q)),
        ("status", lambda c, st: c.queue_status(q)),
        ("dequeue", lambda c, st: c.dequeue(q, batch=4)),
        ("complete", lambda c, st: c.complete(leased(st, 0).id, leased(st, 0).lease_token)),
        ("complete stale", lambda c, st: c.complete(leased(st, 0).id, uuid4())),
        ("fail retry", lambda c, st: c.fail(leased(st, 3).id, leased(st, 3).lease_token,
                                            error="boom")),
        ("heartbeat", lambda c, st: c.heartbeat(leased(st, 1).id, leased(st, 1).lease_token,
                                                extend_secs=60)),
        ("heartbeat stale", lambda c, st: c.heartbeat(leased(st, 0).id, leased(st, 0).lease_token)),
        ("fail_many", lambda c, st: c.fail_many(
            [leased(st, 1).id, leased(st, 2).id],
            [leased(st, 1).lease_token, leased(st, 2).lease_token],
            errors=["e1", "e2"], retry=False)),
        ("inspect", lambda c, st: c.inspect(leased(st, 1).id)),
        ("inspect missing", lambda c, st: c.inspect(leased(st, 0).id)),
        ("coordinate", lambda c, st: c.coordinate(100)),
        ("complete_many", lambda c, st: c.complete_many([], [])),
        ("policy clear", lambda c, st: c.channel_policy_clear("c", queue=q)),
        ("policy clear again", lambda c, st: c.channel_policy_clear("c", queue=q)),
        ("status after", lambda c, st: c.queue_status(q)),
        ("schedule set", lambda c, st: c.schedule_set(
            "nightly", "0 3 * * *", {"job": "report"}, queue=q, channel="a", tz="Europe/Paris",
            num_attempts=2)),
        ("schedule list", lambda c, st: c.schedule_list(q)),
        ("cron_next", lambda c, st: c.cron_next(
            "0 3 * * *", datetime(2026, 3, 28, 12, tzinfo=timezone.utc), "Europe/Paris")),
        ("schedule clear", lambda c, st: c.schedule_clear("nightly", queue=q, channel="a")),
        ("schedule clear again", lambda c, st: c.schedule_clear("nightly", queue=q, channel="a")),
    ]


def _sync_run(conn: Conn) -> list[tuple[str, Any]]:
    client = Client(conn)
    st: dict[str, Any] = {}
    out = []
    with conn.transaction(force_rollback=True):
        for name, step in _scenario_steps():
            result = step(client, st)
            if name == "dequeue":
                st["leased"] = result
            out.append((name, result))
    return out


async def _async_run(dsn: str) -> list[tuple[str, Any]]:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as aconn:
        client = AsyncClient(aconn)
        st: dict[str, Any] = {}
        out = []
        async with aconn.transaction(force_rollback=True):
            for name, step in _scenario_steps():
                result = await step(client, st)
                if name == "dequeue":
                    st["leased"] = result
                out.append((name, result))
        return out


def _first_id(run: list[tuple[str, Any]]) -> int:
    first = run[0][1]
    assert first.message_id is not None
    return int(first.message_id)


def test_sync_and_async_clients_give_identical_results(dsn: str, db: Conn) -> None:
    sync = _sync_run(db)
    async_ = asyncio.run(_async_run(dsn))
    norm_sync = [(n, _normalise(r, _first_id(sync))) for n, r in sync]
    norm_async = [(n, _normalise(r, _first_id(async_))) for n, r in async_]
    assert norm_sync == norm_async
    # ...and the results mean what they should.
    results = dict(sync)
    assert results["enqueue"].enqueued
    assert results["enqueue dedup"].deduplicated
    assert results["enqueue dedup"].message_id == results["enqueue named"].message_id
    assert [r.result for r in results["enqueue_many"]] == ["enqueued", "enqueued"]
    assert len(results["dequeue"]) == 4
    assert results["complete"] is True and results["complete stale"] is False
    assert results["fail retry"].outcome == "locked"
    assert results["heartbeat"] is not None and results["heartbeat stale"] is None
    assert sorted(r.outcome for r in results["fail_many"]) == ["failed", "failed"]
    assert results["inspect"].state == "failed" and results["inspect missing"] is None
    assert results["policy clear"] is True and results["policy clear again"] is False
    assert [p.max_concurrency for p in results["policies"]] == [3]
    [sched] = results["schedule list"]
    assert (sched.name, sched.cron, sched.tz, sched.channel) == (
        "nightly", "0 3 * * *", "Europe/Paris", "a")
    assert sched.next_fire_at == results["schedule set"]
    # 03:00 Paris on 29 March 2026 is after the spring-forward: UTC+2
    assert results["cron_next"] == datetime(2026, 3, 29, 1, tzinfo=timezone.utc)
    assert results["schedule clear"] is True and results["schedule clear again"] is False


def test_client_runs_inside_the_callers_transaction(dsn: str, db: Conn, connect: Any) -> None:
    other = connect()
    with psycopg.connect(dsn) as conn:  # not autocommit: a transaction is open until commit
        r = Client(conn).enqueue({"x": 1}, channel="tx")
        assert r.enqueued
        assert Client(other).inspect(r.message_id or 0) is None  # not committed yet
        conn.rollback()
        assert Client(conn).queue_status() == []
        r2 = Client(conn).enqueue({"x": 2}, channel="tx")
        conn.commit()
    info = Client(other).inspect(r2.message_id or 0)
    assert info is not None and info.state == "ready" and info.channel == "tx"


def test_client_reads_rows_as_tuples_whatever_the_row_factory(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True, row_factory=dict_row) as conn:
        client = Client(conn)
        r = client.enqueue({"x": 1}, delay_secs=0.0, depends_on=None)
        [m] = client.dequeue()
        assert m.id == r.message_id and m.payload == {"x": 1} and m.channel is None


def test_client_works_with_a_pooled_connection(dsn: str) -> None:
    from psycopg_pool import ConnectionPool

    with ConnectionPool(dsn, min_size=1, max_size=1, open=True) as pool:
        with pool.connection() as conn:
            r = Client(conn).enqueue({"pooled": True}, queue="p")
        with pool.connection() as conn:
            [m] = Client(conn).dequeue("p")
    assert m.id == r.message_id


def test_bad_enqueue_option_is_a_clear_client_error(db: Conn) -> None:
    with pytest.raises(TypeError, match="unexpected option 'colour'"):
        Client(db).enqueue({}, colour="red")  # type: ignore[call-arg]
    with pytest.raises(psycopg.DataError, match="num_attempts"):
        Client(db).enqueue({}, num_attempts=0)


# -- event mapping (no database) -----------------------------------------------------------


def _message(mid: int = 7, attempt: int = 1, num_attempts: int = 3) -> Message:
    now = datetime.now(timezone.utc)
    return Message(mid, "q", "ch", {}, None, None, attempt, num_attempts, uuid4(),
                   now + timedelta(seconds=30), now)


def test_every_spec_event_name_has_a_typed_class() -> None:
    names = {
        "MESSAGE_ENQUEUED", "MESSAGE_RELEASED", "MESSAGE_DROPPED", "MESSAGE_DEQUEUED",
        "MESSAGE_PROCESSED_SUCCESS", "MESSAGE_PROCESSED_FAIL", "MESSAGE_LOCKED",
        "MESSAGE_UNLOCKED", "MESSAGE_FINALIZED", "MESSAGE_DELETED",
        "MESSAGE_DEPENDENCY_RESOLVED", "MESSAGE_DEPENDENCIES_UNMET",
        "MESSAGE_ATTEMPTS_EXHAUSTED",
    }
    assert set(ev.EVENT_TYPES) == names
    for name in names:
        e = event_from_row(name, 1, "q", None, {"success": True, "parent_id": 3})
        assert e.name == name and type(e) is ev.EVENT_TYPES[name]
    resolved = event_from_row("MESSAGE_DEPENDENCY_RESOLVED", 1, "q", None,
                              {"parent_id": 3, "success": False})
    assert isinstance(resolved, ev.MessageDependencyResolved)
    assert resolved.parent_id == 3 and resolved.success is False
    unknown = event_from_row("MESSAGE_FROM_THE_FUTURE", 1, "q", None, None)
    assert isinstance(unknown, ev.UnknownEvent)
    assert unknown.detail["event"] == "MESSAGE_FROM_THE_FUTURE"


def test_worker_results_map_to_events_in_lifecycle_order() -> None:
    m = _message()
    assert [e.name for e in ev.completed_events([m])] == [
        "MESSAGE_PROCESSED_SUCCESS", "MESSAGE_FINALIZED", "MESSAGE_DELETED"]
    assert ev.completed_events([m])[1].detail["success"] is True
    locked = ev.failed_events(m, FailResult(m.id, "locked", 1, datetime.now(timezone.utc)),
                              error="E", retry=True)
    assert [e.name for e in locked] == ["MESSAGE_PROCESSED_FAIL", "MESSAGE_LOCKED"]
    assert isinstance(locked[1], ev.MessageLocked) and locked[1].available_at is not None
    exhausted = ev.failed_events(m, FailResult(m.id, "failed", 3, None), error="E", retry=True)
    assert [e.name for e in exhausted] == [
        "MESSAGE_PROCESSED_FAIL", "MESSAGE_ATTEMPTS_EXHAUSTED", "MESSAGE_FINALIZED"]
    assert isinstance(exhausted[2], ev.MessageFinalized) and exhausted[2].success is False
    no_retry = ev.failed_events(m, FailResult(m.id, "failed", 1, None), error="E", retry=False)
    assert [e.name for e in no_retry] == ["MESSAGE_PROCESSED_FAIL", "MESSAGE_FINALIZED"]
    assert ev.failed_events(m, FailResult(m.id, "stale", None, None), error="E", retry=True) == []


def test_a_broken_subscriber_is_logged_and_the_others_still_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    got: list[str] = []
    seen_async: list[str] = []

    def broken(e: ev.Event) -> None:
        raise RuntimeError("bug")

    async def async_sub(e: ev.Event) -> None:
        seen_async.append(e.name)

    d = EventDispatcher()
    d.subscribe(broken)
    d.subscribe(lambda e: got.append(e.name), events=[ev.MessageDeleted])
    d.subscribe(async_sub)
    with caplog.at_level(logging.ERROR, logger="hydramq.events"):
        asyncio.run(d.dispatch(ev.completed_events([_message()])))
    assert got == ["MESSAGE_DELETED"]
    assert len(seen_async) == 3
    assert sum("subscriber" in r.message for r in caplog.records) == 3
    with pytest.raises(ValueError, match="unknown event"):
        d.subscribe(broken, events=["MESSAGE_NOPE"])
