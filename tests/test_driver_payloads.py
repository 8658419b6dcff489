"""Payloads PostgreSQL stores but Python cannot decode (issue 9, item 3).

PostgreSQL accepts JSON nested ~10,000 deep and integers of thousands of digits; Python's
``json`` raises RecursionError from ~1,000 levels and ValueError past 4,300 digits. Such a
message must fail alone, with its error stored and without retry, while the worker (a real
``hydramq worker`` process) and a ``Client.dequeue`` caller go on serving the rest.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
from test_driver_daemons import Daemon, count, ends, spawn, wait_until

from hydramq import AsyncClient, Client

Conn = psycopg.Connection[Any]

DEEP = "(repeat('[', 5000) || repeat(']', 5000))::jsonb"
HUGE_INT = "repeat('9', 5001)::jsonb"
UNDECODABLE = "payload could not be decoded: "

__all__ = ["spawn"]  # the fixture, shared with the daemon tests


def _enqueue_sql(conn: Conn, payload_sql: str) -> int:
    row = conn.execute(
        f"SELECT message_id FROM hydra.enqueue({payload_sql}, num_attempts => 5)"
    ).fetchone()
    assert row is not None
    return int(row[0])


def _mixed_batch(conn: Conn) -> tuple[list[int], list[int]]:
    """Normal messages with the two undecodable ones among them: (normal ids, bad ids)."""
    client = Client(conn)
    normal = [client.enqueue({"sleep": 0.01, "i": i}).message_id or 0 for i in range(4)]
    bad = [_enqueue_sql(conn, DEEP)]
    normal += [client.enqueue({"sleep": 0.01, "i": i}).message_id or 0 for i in range(4, 8)]
    bad.append(_enqueue_sql(conn, HUGE_INT))
    normal += [client.enqueue({"sleep": 0.01, "i": 8}).message_id or 0]
    return normal, bad


def _assert_failed_alone(conn: Conn, bad: list[int]) -> None:
    rows = conn.execute(
        "SELECT id, state, attempt, last_error FROM hydra.message ORDER BY id"
    ).fetchall()
    assert [r[0] for r in rows] == bad, "only the undecodable messages may be left"
    (_, s1, a1, e1), (_, s2, a2, e2) = rows
    assert (s1, a1, s2, a2) == ("failed", 1, "failed", 1), "failed at once, without retry"
    assert e1.startswith(UNDECODABLE + "RecursionError"), e1
    assert e2.startswith(UNDECODABLE + "ValueError"), e2


def test_worker_fails_an_undecodable_payload_alone_and_keeps_serving(
    db: Conn, spawn: Callable[..., Daemon], tmp_path: Path
) -> None:
    normal, bad = _mixed_batch(db)
    # One dequeue takes the whole mix.
    w = spawn("worker", "driver_tasks:handle", "--slots", "20", name="worker")
    wait_until(lambda: count(db, "state <> 'failed'") == 0, 30, "every message to settle")
    _assert_failed_alone(db, bad)
    assert {m for m, _, _ in ends(tmp_path)} == set(normal)
    assert w.alive(), w.log
    # Still serving: a message enqueued afterwards is processed by the same process.
    later = Client(db).enqueue({"after": True}).message_id
    wait_until(lambda: count(db, "id = %s", (later,)) == 0, 30, "a later message")
    assert later in {m for m, _, _ in ends(tmp_path)}
    w.signal(signal.SIGTERM)
    assert w.wait(20) == 0, w.log
    assert "Traceback" not in w.log, w.log


def test_client_dequeue_fails_an_undecodable_payload_and_returns_the_rest(db: Conn) -> None:
    normal, bad = _mixed_batch(db)
    got = Client(db).dequeue(batch=20)
    assert [m.id for m in got] == normal
    assert all(m.payload_error is None and isinstance(m.payload, dict) for m in got)
    for m in got:
        assert Client(db).complete(m.id, m.lease_token)
    _assert_failed_alone(db, bad)


def test_async_client_dequeue_fails_an_undecodable_payload_and_returns_the_rest(
    db: Conn, dsn: str
) -> None:
    normal, bad = _mixed_batch(db)

    async def main() -> list[int]:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            client = AsyncClient(conn)
            got = await client.dequeue(batch=20)
            for m in got:
                assert await client.complete(m.id, m.lease_token)
            return [m.id for m in got]

    assert asyncio.run(main()) == normal
    _assert_failed_alone(db, bad)


def test_client_dequeue_in_a_rolled_back_transaction_leaves_the_message_untouched(
    db: Conn, connect: Callable[..., Conn]
) -> None:
    deep = _enqueue_sql(db, DEEP)
    conn = connect(autocommit=False)
    assert Client(conn).dequeue(batch=5) == []
    conn.rollback()  # the caller's transaction decides: the failure is undone with the lease
    row = db.execute("SELECT state, attempt FROM hydra.message WHERE id = %s", (deep,)).fetchone()
    assert row == ("ready", 0)


def test_inspect_reports_an_undecodable_payload_instead_of_raising(db: Conn) -> None:
    deep = _enqueue_sql(db, DEEP)
    info = Client(db).inspect(deep)
    assert info is not None and info.payload is None and info.state == "ready"
    assert (info.payload_error or "").startswith(UNDECODABLE + "RecursionError")
    fine = Client(db).enqueue({"a": [1, {"b": None}]}).message_id or 0
    info = Client(db).inspect(fine)
    assert info is not None and info.payload == {"a": [1, {"b": None}]}
    assert info.payload_error is None
