"""Small shared pieces of the benchmark: run context, progress output, back-off, statistics.

Nothing here talks SQL; the statements live in ``workloads.py`` (hydramq and baselines) and
the DDL of the baselines in ``baselines.py``.
"""

from __future__ import annotations

import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any

# Drain and enqueue runs use this many OS processes, each with this many connections
# (one thread per connection; psycopg releases the GIL while it waits on the server).
PROCESSES = 2
CONNECTIONS_PER_PROCESS = 10
ENQUEUE_CONNECTIONS_PER_PROCESS = 4
BATCH = 100

# Idle consumers sleep 1 ms, 2 ms, 4 ms ... up to 20 ms between empty dequeues (PERF-NOTES:
# tight polling starves a 2-core machine).
BACKOFF_MIN_S = 0.001
BACKOFF_MAX_S = 0.020


@dataclass
class Sizes:
    """Every size the phases use; ``quick`` and ``full`` differ only here."""

    s1_messages: int
    s2_channels: int
    s2_per_channel: int
    s3_channels: int
    s3_per_channel: int
    enqueue_seconds: float
    fairness_noisy: int
    fairness_quiet_channels: int
    fairness_quiet_each: int
    rounds: int
    drain_timeout_s: float  # a drain run still unfinished after this is reported INCOMPLETE

    @classmethod
    def for_mode(cls, quick: bool) -> Sizes:
        if quick:
            return cls(20_000, 4_000, 5, 300, 20, 3.0, 5_000, 100, 10, 1, 30.0)
        return cls(50_000, 10_000, 5, 1_000, 20, 8.0, 5_000, 100, 10, 3, 90.0)


@dataclass
class Context:
    """What a phase gets: where to connect, what sizes to use, where to put its numbers."""

    dsn: str
    sizes: Sizes
    progress: Progress
    hydramq: bool  # False when the extension could not be created: baselines only
    shapes: tuple[str, ...] = ()  # drain shapes to run (empty: all)
    stats: bool = False  # pg_stat_statements available: keep each run's top statements
    results: dict[str, Any] = field(default_factory=dict)


class Backoff:
    """Exponential sleep for a consumer whose dequeue came back empty."""

    def __init__(self) -> None:
        self.delay = BACKOFF_MIN_S

    def reset(self) -> None:
        self.delay = BACKOFF_MIN_S

    def sleep(self) -> None:
        time.sleep(self.delay)
        self.delay = min(self.delay * 2, BACKOFF_MAX_S)


class Progress:
    """Live progress: one line per step, rewritten in place on a terminal, throttled otherwise."""

    def __init__(self, stream: Any = None) -> None:
        self.stream = stream or sys.stdout
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.t0 = time.monotonic()
        self._label = ""
        self._step_t0 = 0.0
        self._last_print = 0.0
        self._open = False

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def section(self, title: str) -> None:
        self._close()
        self._write(f"\n[{self.elapsed():6.1f}s] == {title}\n")

    def note(self, text: str) -> None:
        self._close()
        self._write(f"[{self.elapsed():6.1f}s]    {text}\n")

    def start(self, label: str) -> None:
        self._close()
        self._label = label
        self._step_t0 = time.monotonic()
        self._last_print = 0.0
        self._open = True
        self.update("starting")

    def update(self, status: str, force: bool = False) -> None:
        now = time.monotonic()
        if not self.tty and not force and now - self._last_print < 5.0:
            return
        self._last_print = now
        line = (f"[{self.elapsed():6.1f}s]    {self._label:<34} "
                f"{now - self._step_t0:6.1f}s  {status}")
        if self.tty:
            self._write("\r\x1b[2K" + line)
        elif status != "starting":
            self._write(line + "\n")

    def done(self, status: str) -> None:
        if not self._open:
            return
        if self.tty:
            self.update(status, force=True)
            self._write("\n")
        else:
            line = (f"[{self.elapsed():6.1f}s]    {self._label:<34} "
                    f"{time.monotonic() - self._step_t0:6.1f}s  {status}")
            self._write(line + "\n")
        self._open = False

    def _close(self) -> None:
        if self._open:
            self.done("")

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def fmt_rate(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.0f}"


def fmt_ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"
