"""The handler that tests/test_chaos.py runs inside real ``hydramq worker`` processes.

Each call appends its start, as ``id attempt pid start_time lease_expires_at``, to
``starts.log`` in ``$DRIVER_TASKS_DIR``, works for a few milliseconds (:func:`pace`, so that
kills find work in flight) and appends ``id attempt pid ok|fail`` to ``ends.log``. Whether an
attempt fails is a function of (message id, attempt) -- about 10% of them -- so that the test
can tell what each attempt was meant to do without trusting the worker that ran it. A payload
``{"die": true}`` SIGKILLs the worker process that runs it (a message that keeps killing its
workers).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import time
from pathlib import Path

from hydramq import Message

FAILURE = "chaos failure"


def _draw(message_id: int, attempt: int) -> int:
    digest = hashlib.blake2b(f"{message_id}:{attempt}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def fails(message_id: int, attempt: int) -> bool:
    """Does this attempt's handler raise? True for about 10% of (id, attempt) pairs."""
    return _draw(message_id, attempt) % 10 == 0


def pace(message_id: int, attempt: int) -> float:
    """Seconds of work: 10 to 40 ms, and 200 to 400 ms for one attempt in 16 (the test kills
    a worker while one of those runs, so that it surely holds that lease when it dies)."""
    draw = _draw(message_id, attempt) >> 8
    if draw % 16 == 0:
        return 0.200 + (draw >> 4) % 201 / 1000
    return 0.010 + (draw >> 4) % 31 / 1000


def _append(name: str, line: str) -> None:
    # O_APPEND writes of one short line are atomic across processes.
    with open(Path(os.environ["DRIVER_TASKS_DIR"]) / name, "a") as f:
        f.write(line + "\n")


async def handle(message: Message) -> None:
    mid, attempt, pid = message.id, message.attempt, os.getpid()
    expires = message.lease_expires_at.timestamp()
    _append("starts.log", f"{mid} {attempt} {pid} {time.time():.6f} {expires:.6f}")
    if isinstance(message.payload, dict) and message.payload.get("die"):
        os.kill(pid, signal.SIGKILL)
    await asyncio.sleep(pace(mid, attempt))
    failed = fails(mid, attempt)
    _append("ends.log", f"{mid} {attempt} {pid} {'fail' if failed else 'ok'}")
    if failed:
        raise RuntimeError(FAILURE)
