"""Small helpers for the queue-behaviour tests: one wrapper per SQL call the tests make, a
snapshot of everything the extension stores (to prove a failed call wrote nothing), the
concurrency-cap invariant, and a runner for worker threads.

Every helper takes the connection to use, so a test can interleave sessions explicitly.
Nothing here decides queue behaviour: it only calls the extension and reads its tables.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import psycopg
from psycopg.rows import dict_row

Conn = psycopg.Connection[Any]
Leased = dict[str, Any]  # one row of hydra.dequeue()


def numeric(options: dict[str, Any]) -> dict[str, Any]:
    """Floats as Decimal: PostgreSQL picks no function for a float8 given to a numeric
    argument."""
    return {k: Decimal(str(v)) if isinstance(v, float) else v for k, v in options.items()}


def enqueue(conn: Conn, payload: Any = None, **options: Any) -> int:
    """``hydra.enqueue(payload, <options as named arguments>)``; returns the new message id."""
    options = numeric(options)
    args = "".join(f", {name} => %({name})s" for name in options)
    row = conn.execute(
        f"SELECT result, message_id FROM hydra.enqueue(%(payload)s::jsonb{args})",
        {"payload": json.dumps({} if payload is None else payload), **options},
    ).fetchone()
    assert row is not None and row[0] == "enqueued", row
    return int(row[1])


def enqueue_many(conn: Conn, messages: list[dict[str, Any]], **options: Any) -> list[int]:
    """``hydra.enqueue_many(messages, ...)``; returns the new ids in the order of ``messages``."""
    options = numeric(options)
    args = "".join(f", {name} => %({name})s" for name in options)
    rows = conn.execute(
        f"SELECT ord, result, message_id FROM hydra.enqueue_many(%(m)s::jsonb{args}) ORDER BY ord",
        {"m": json.dumps(messages), **options},
    ).fetchall()
    assert [r[0] for r in rows] == list(range(1, len(messages) + 1)), rows
    assert all(r[1] == "enqueued" for r in rows), rows
    return [int(r[2]) for r in rows]


def dequeue(conn: Conn, batch: int = 1, queue: str = "default") -> list[Leased]:
    """Leased rows of ``hydra.dequeue(queue, batch)`` as dicts, in the order returned."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            "SELECT * FROM hydra.dequeue(queue => %s, batch => %s)", (queue, batch)
        ).fetchall()


def complete(conn: Conn, leased: Leased) -> bool:
    row = conn.execute(
        "SELECT hydra.complete(%s, %s)", (leased["id"], leased["lease_token"])
    ).fetchone()
    assert row is not None
    return bool(row[0])


def fail(conn: Conn, leased: Leased, retry: bool = True) -> dict[str, Any]:
    """``hydra.fail`` -> its row plus ``now`` (the server's transaction time of the call)."""
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            "SELECT f.*, now() AS now FROM hydra.fail(%s, %s, 'test failure', %s) f",
            (leased["id"], leased["lease_token"], retry),
        ).fetchone()
    assert row is not None
    return row


def heartbeat(conn: Conn, leased: Leased, extend_secs: float | None = None) -> Any:
    row = conn.execute(
        "SELECT hydra.heartbeat(%s, %s, %s::numeric)",
        (leased["id"], leased["lease_token"], extend_secs),
    ).fetchone()
    assert row is not None
    return row[0]


def coordinate(conn: Conn) -> list[tuple[str, int | None]]:
    """``hydra.coordinate()`` -> [(event, message_id), ...]."""
    rows = conn.execute("SELECT event, message_id FROM hydra.coordinate()").fetchall()
    return [(r[0], r[1]) for r in rows]


def set_policy(conn: Conn, channel: str | None, max_concurrency: int | None) -> None:
    conn.execute(
        "SELECT hydra.channel_policy_set(channel => %s, max_concurrency => %s)",
        (channel, max_concurrency),
    )


def state_of(conn: Conn, message_id: int) -> str | None:
    """The message's state, or None once its row is gone (it succeeded)."""
    row = conn.execute("SELECT state FROM hydra.message WHERE id = %s", (message_id,)).fetchone()
    return None if row is None else str(row[0])


def snapshot(conn: Conn) -> dict[str, str]:
    """Every table of schema hydra, row by row, as one text per table: equal snapshots taken
    before and after a call mean the call wrote nothing."""
    tables = [
        r[0]
        for r in conn.execute(
            "SELECT format('%I.%I', schemaname, tablename) FROM pg_tables"
            " WHERE schemaname = 'hydra' ORDER BY tablename"
        ).fetchall()
    ]
    return {
        table: conn.execute(
            f"SELECT count(*) || ':' || coalesce(md5(string_agg(t::text, ',' ORDER BY t::text)),"
            f" '') FROM {table} t"
        ).fetchone()[0]  # type: ignore[index]
        for table in tables
        if not table.endswith(".waiting_worker")
    }


# The concurrency-cap invariant, as one snapshot of one session sees it: for every capped
# channel, messages processing <= in_flight (slots held) <= max_concurrency.
CAP_VIOLATIONS = """
SELECT l.channel, l.max_concurrency, l.in_flight, coalesce(p.n, 0) AS processing
  FROM hydra.channel_limit l
  LEFT JOIN (SELECT queue, channel, count(*) AS n FROM hydra.message
              WHERE state = 'processing' GROUP BY queue, channel) p
    ON p.queue = l.queue AND p.channel = l.channel
 WHERE l.max_concurrency IS NOT NULL
   AND (coalesce(p.n, 0) > l.max_concurrency OR l.in_flight > l.max_concurrency
        OR coalesce(p.n, 0) > l.in_flight)
"""


def cap_violations(conn: Conn) -> list[tuple[Any, ...]]:
    return conn.execute(CAP_VIOLATIONS).fetchall()


class Threads:
    """Runs ``fn(i)`` for i in range(n), each in its own thread. ``stop`` (shared between
    groups when given) is set by ``join()`` and by the first function that raises;
    ``join()`` re-raises that exception."""

    def __init__(
        self,
        n: int,
        fn: Callable[[int], None],
        name: str = "worker",
        stop: threading.Event | None = None,
    ) -> None:
        self.stop = stop or threading.Event()
        self.errors: list[BaseException] = []
        self._threads = [
            threading.Thread(target=self._run, args=(fn, i), name=f"{name}-{i}", daemon=True)
            for i in range(n)
        ]
        for thread in self._threads:
            thread.start()

    def _run(self, fn: Callable[[int], None], i: int) -> None:
        try:
            fn(i)
        except BaseException as exc:  # handed to the test thread by join()
            self.errors.append(exc)
            self.stop.set()

    def alive(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    def join(self, timeout: float = 60.0) -> None:
        self.stop.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        stuck = [t.name for t in self._threads if t.is_alive()]
        if self.errors:
            raise self.errors[0]
        assert not stuck, f"threads still running after {timeout}s: {stuck}"
