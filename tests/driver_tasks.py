"""Handlers and event subscribers that the driver tests run inside real worker processes.

The payload drives the handler: ``sleep`` seconds of work, ``fail`` = ``"always"`` (raise
every attempt), ``"first"`` (raise on attempt 1 only) or ``"no_retry"`` (raise
FailWithoutRetry). Each start and end of a handler call is appended, as ``id attempt pid``,
to ``starts.log`` / ``ends.log`` in ``$DRIVER_TASKS_DIR``; ``record_event`` appends every event
as a JSON line to ``events-<pid>.jsonl`` there, with ``committed``: whether another session
already sees the change the event reports (it must, events come after commit).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

import psycopg

from hydramq import FailWithoutRetry, Message
from hydramq.events import Event


def _dir() -> Path:
    return Path(os.environ["DRIVER_TASKS_DIR"])


def _append(name: str, line: str) -> None:
    # O_APPEND writes of one short line are atomic across processes.
    with open(_dir() / name, "a") as f:
        f.write(line + "\n")


def _outcome(message: Message) -> None:
    payload: dict[str, Any] = message.payload if isinstance(message.payload, dict) else {}
    fail = payload.get("fail")
    if fail == "always":
        raise RuntimeError(f"always fails (message {message.id})")
    if fail == "first" and message.attempt == 1:
        raise RuntimeError("fails the first attempt")
    if fail == "no_retry":
        raise FailWithoutRetry("give up at once")


async def handle(message: Message) -> None:
    """Async handler (runs on the worker's event loop)."""
    _append("starts.log", f"{message.id} {message.attempt} {os.getpid()}")
    payload = message.payload if isinstance(message.payload, dict) else {}
    await asyncio.sleep(float(payload.get("sleep", 0)))
    _append("ends.log", f"{message.id} {message.attempt} {os.getpid()}")
    _outcome(message)


def handle_sync(message: Message) -> None:
    """Plain handler (runs in the worker's thread pool)."""
    _append("starts.log", f"{message.id} {message.attempt} {os.getpid()}")
    payload = message.payload if isinstance(message.payload, dict) else {}
    time.sleep(float(payload.get("sleep", 0)))
    _append("ends.log", f"{message.id} {message.attempt} {os.getpid()}")
    _outcome(message)


def broken_subscriber(event: Event) -> None:
    """A subscriber that always raises: it must be logged and never stop a daemon."""
    raise ValueError(f"subscriber bug on {event.name}")


_conn: psycopg.Connection[Any] | None = None


def _committed(event: Event) -> bool | None:
    """Does another session see what ``event`` reports? None when not checkable."""
    global _conn
    if _conn is None:
        _conn = psycopg.connect(os.environ["DATABASE_URL"], autocommit=True)
    row = _conn.execute(
        "SELECT state, attempt FROM hydra.message WHERE id = %s", (event.message_id,)
    ).fetchone()
    attempt = event.detail.get("attempt")
    if event.name == "MESSAGE_DEQUEUED":
        return row is None or row[1] >= attempt
    if event.name in ("MESSAGE_PROCESSED_SUCCESS", "MESSAGE_DELETED"):
        return row is None
    if event.name == "MESSAGE_FINALIZED":
        return row is None if event.detail.get("success") else (row is None or row[0] == "failed")
    if event.name == "MESSAGE_LOCKED" and attempt is not None:
        return row is None or row[0] != "processing" or row[1] > attempt
    if event.name in ("MESSAGE_UNLOCKED", "MESSAGE_RELEASED"):
        return row is None or row[0] not in ("locked", "pending")
    return None


def record_event(event: Event) -> None:
    line = {
        "t": time.monotonic(),
        "pid": os.getpid(),
        "event": event.name,
        "id": event.message_id,
        "channel": event.channel,
        "detail": dict(event.detail),
        "committed": _committed(event),
    }
    _append(f"events-{os.getpid()}.jsonl", json.dumps(line, default=str))
