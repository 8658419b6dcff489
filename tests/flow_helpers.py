"""Small helpers shared by the behaviour tests: one call per SQL function, the events
``hydra.coordinate()`` returns, and watching another session wait on a lock.

Every helper takes the connection to use, so that tests can interleave several sessions
explicitly. Nothing here decides queue behaviour: it only calls the extension.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.rows import dict_row

Conn = psycopg.Connection[Any]


@dataclass(frozen=True)
class Event:
    """One row of ``hydra.coordinate()``."""

    event: str
    message_id: int | None
    queue: str | None
    channel: str | None
    detail: dict[str, Any]


# SQL types of the enqueue options, so that Python ints and floats bind unambiguously.
OPTION_TYPES = {
    "queue": "text", "channel": "text", "priority": "integer", "name": "text",
    "num_attempts": "integer", "lock_secs": "numeric", "lock_secs_factor": "numeric",
    "delay_secs": "numeric", "depends_on": "bigint[]", "cascade_failure": "boolean",
    "max_processing_secs": "numeric",
}


def _named(options: dict[str, Any]) -> str:
    return ", ".join(f"{name} => %({name})s::{OPTION_TYPES[name]}" for name in options)


def enqueue(conn: Conn, payload: Any = None, **options: Any) -> tuple[str, int]:
    """``hydra.enqueue(payload, <options as named arguments>)`` -> (result, message_id)."""
    args = _named(options)
    query = "SELECT result, message_id FROM hydra.enqueue(%(payload)s::jsonb"
    query += (", " + args if args else "") + ")"
    params = {"payload": json.dumps({} if payload is None else payload), **options}
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0], row[1]


def enqueue_many(conn: Conn, messages: list[dict[str, Any]], **options: Any) -> list[tuple]:
    """``hydra.enqueue_many(messages, ...)`` -> [(ord, result, message_id), ...]."""
    args = (", " + _named(options)) if options else ""
    query = f"SELECT ord, result, message_id FROM hydra.enqueue_many(%(m)s::jsonb{args})"
    return conn.execute(query, {"m": json.dumps(messages), **options}).fetchall()


def dequeue(conn: Conn, queue: str = "default", batch: int = 1) -> list[dict[str, Any]]:
    """Leased rows of ``hydra.dequeue`` as dicts."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            "SELECT * FROM hydra.dequeue(queue => %s, batch => %s)", (queue, batch)
        ).fetchall()


def complete(conn: Conn, leased: dict[str, Any]) -> bool:
    row = conn.execute(
        "SELECT hydra.complete(%s, %s)", (leased["id"], leased["lease_token"])
    ).fetchone()
    assert row is not None
    return bool(row[0])


def fail(conn: Conn, leased: dict[str, Any], retry: bool = True) -> str:
    """``hydra.fail`` -> outcome ('locked' | 'failed' | 'stale')."""
    row = conn.execute(
        "SELECT outcome FROM hydra.fail(%s, %s, 'test failure', %s)",
        (leased["id"], leased["lease_token"], retry),
    ).fetchone()
    assert row is not None
    return str(row[0])


def coordinate(conn: Conn, **options: Any) -> list[Event]:
    args = ", ".join(f"{name} => %({name})s" for name in options)
    rows = conn.execute(
        f"SELECT event, message_id, queue, channel, detail FROM hydra.coordinate({args})",
        options,
    ).fetchall()
    return [Event(r[0], r[1], r[2], r[3], r[4] or {}) for r in rows]


def coordinate_until_quiet(conn: Conn, rounds: int = 20) -> list[Event]:
    """Calls ``hydra.coordinate()`` until a call reports nothing; returns every event."""
    events: list[Event] = []
    for _ in range(rounds):
        batch = coordinate(conn)
        if not batch:
            return events
        events.extend(batch)
    raise AssertionError(f"coordinate() still busy after {rounds} rounds: {events[-5:]}")


def events_of(events: list[Event], message_id: int) -> list[str]:
    return [e.event for e in events if e.message_id == message_id]


def state_of(conn: Conn, message_id: int) -> str | None:
    """The message's state, or None when its row is gone (succeeded, or purged)."""
    row = conn.execute("SELECT state FROM hydra.message WHERE id = %s", (message_id,)).fetchone()
    return None if row is None else str(row[0])


def count_messages(conn: Conn) -> int:
    row = conn.execute("SELECT count(*) FROM hydra.message").fetchone()
    assert row is not None
    return int(row[0])


def count_edges(conn: Conn) -> int:
    row = conn.execute("SELECT count(*) FROM hydra.dependency").fetchone()
    assert row is not None
    return int(row[0])


def backend_pid(conn: Conn) -> int:
    row = conn.execute("SELECT pg_backend_pid()").fetchone()
    assert row is not None
    return int(row[0])


def wait_until_blocked(
    observer: Conn, pid: int, by: list[int] | None = None, timeout: float = 10.0
) -> list[int]:
    """Waits until session ``pid`` waits on a lock (held by one of ``by``, when given: that is
    ``pg_isolation_test_session_is_blocked``); returns the pids blocking it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = observer.execute(
            "SELECT pg_blocking_pids(%s), pg_isolation_test_session_is_blocked(%s, %s)",
            (pid, pid, by or []),
        ).fetchone()
        assert row is not None
        if row[1] if by else row[0]:
            return list(row[0])
        time.sleep(0.01)
    raise AssertionError(f"session {pid} never blocked on a lock within {timeout}s")


class Background:
    """Runs ``fn(*args)`` in a thread; ``result()`` joins it and returns its value or
    re-raises. A connection used by the thread must not be touched by the test meanwhile
    (psycopg would make the test wait for it): read what you need, such as its backend pid,
    before starting."""

    def __init__(self, fn: Callable[..., Any], *args: Any) -> None:
        self._value: Any = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(fn, args), daemon=True)
        self._thread.start()

    def _run(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        try:
            self._value = fn(*args)
        except BaseException as exc:  # handed to the test thread by result()
            self._error = exc

    def done(self) -> bool:
        return not self._thread.is_alive()

    def result(self, timeout: float = 15.0) -> Any:
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise AssertionError(f"background call still running after {timeout}s")
        if self._error is not None:
            raise self._error
        return self._value
