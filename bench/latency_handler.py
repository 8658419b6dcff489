"""The handler of the latency phase (``bench/driver_phases.py``), run by a real
``hydramq worker latency_handler:record_start`` process started from ``bench/``.

It notes when it started, on ``time.monotonic()`` (CLOCK_MONOTONIC: one clock for every
process of the machine, the one the producer reads right after its enqueue committed), by
appending ``"<message id> <seconds>"`` to ``$HYDRAMQ_BENCH_LATENCY_DIR/starts-<pid>.txt``:
one short ``write`` per message, no database round trip that would delay the next message.
"""

from __future__ import annotations

import os
import time
from typing import IO, Any

_sink: IO[str] | None = None


async def record_start(message: Any) -> None:
    """Record this handler's start for ``message.id``; nothing else."""
    started = time.monotonic()
    global _sink
    if _sink is None:
        folder = os.environ["HYDRAMQ_BENCH_LATENCY_DIR"]
        _sink = open(  # noqa: SIM115 - kept open (line-buffered) for the life of the worker
            os.path.join(folder, f"starts-{os.getpid()}.txt"), "a", buffering=1
        )
    _sink.write(f"{message.id} {started:.6f}\n")
