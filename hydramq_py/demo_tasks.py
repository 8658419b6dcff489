"""Handlers and the event recorder of ``hydramq demo`` (run inside real worker processes).

The payload says what to simulate: ``work`` seconds of (async) work, ``fail_first`` to fail
the first attempt (the queue retries it after a back-off), ``always_fail`` to fail every
attempt (the message ends as failed once its attempts are used up).

``record_event`` is the ``--on-event`` subscriber: it appends each event as a JSON line to a
file of this process in ``$HYDRAMQ_DEMO_EVENTS``, which the demo's live view reads.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import IO, Any

from .events import Event
from .models import Message


class DemoFailure(RuntimeError):
    """A failure the demo asked for."""


async def handle(message: Message) -> None:
    """The demo's handler: simulated work, and failures where the payload asks for them."""
    payload: Any = message.payload if isinstance(message.payload, dict) else {}
    await asyncio.sleep(float(payload.get("work", 0.02)))
    if payload.get("always_fail"):
        raise DemoFailure(f"{payload.get('what', 'task')} failed (attempt {message.attempt})")
    if payload.get("fail_first") and message.attempt == 1:
        raise DemoFailure("transient failure on the first attempt")


_sink: IO[str] | None = None


def record_event(event: Event) -> None:
    """Append ``event`` to this process's JSON-lines file in $HYDRAMQ_DEMO_EVENTS."""
    global _sink
    if _sink is None:
        folder = os.environ.get("HYDRAMQ_DEMO_EVENTS")
        if not folder:
            return
        _sink = open(  # noqa: SIM115 - kept open for the life of the process
            os.path.join(folder, f"events-{os.getpid()}.jsonl"), "a", buffering=1
        )
    _sink.write(json.dumps(event.as_dict(), default=str) + "\n")


async def noop(message: Message) -> None:
    """Does nothing: for measuring what the driver itself costs (``make bench``)."""
