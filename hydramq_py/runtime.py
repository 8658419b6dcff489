"""What the worker and coordinator daemons share: stop signals, retries, the connection pool.

* :class:`Stopper` turns SIGTERM/SIGINT into a graceful stop (first signal) and an immediate
  stop (second signal), and lets loops sleep in a way a stop interrupts.
* :func:`call_with_retry` runs one SQL call on a pool and retries it with exponential
  back-off when the database is unreachable or the connection dropped; it gives up only when
  the caller says so (a stop). A lost connection is logged, never fatal.
* :func:`make_pool` opens an autocommit ``AsyncConnectionPool`` that starts even while the
  database is down (it keeps trying in the background), without server-side prepared
  statements when the daemon runs behind PgBouncer (``pgbouncer=True``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg
from psycopg_pool import AsyncConnectionPool

from .calls import Call
from .client import arun

log = logging.getLogger("hydramq.runtime")

T = TypeVar("T")

#: Exit code of a daemon stopped by a second signal (in-flight work abandoned).
EXIT_FORCED = 1


class Stopper:
    """Graceful and immediate stop requests, from signals or from code."""

    def __init__(self) -> None:
        self.graceful = asyncio.Event()
        self.forced = asyncio.Event()
        self._installed: list[signal.Signals] = []

    @property
    def stopping(self) -> bool:
        return self.graceful.is_set()

    def request(self, *, now: bool = False) -> None:
        """First call: stop gracefully. A second call, or ``now=True``: stop at once."""
        if now or self.graceful.is_set():
            self.graceful.set()
            self.forced.set()
        else:
            self.graceful.set()

    def install_signal_handlers(self, what: str) -> None:
        """SIGTERM/SIGINT → :meth:`request`. Must be called from the running loop."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, self._on_signal, sig, what)
            except (NotImplementedError, RuntimeError):  # pragma: no cover - not on Unix
                continue
            self._installed.append(sig)

    def remove_signal_handlers(self) -> None:
        with contextlib.suppress(RuntimeError):
            loop = asyncio.get_running_loop()
            for sig in self._installed:
                loop.remove_signal_handler(sig)
        self._installed.clear()

    def _on_signal(self, sig: signal.Signals, what: str) -> None:
        if self.graceful.is_set():
            log.warning("%s: second %s, stopping now", what, sig.name)
            self.request(now=True)
        else:
            log.info(
                "%s: %s received, finishing in-flight work (signal again to stop now)",
                what,
                sig.name,
            )
            self.request()

    async def sleep(self, seconds: float, *, until_forced: bool = False) -> bool:
        """Sleep up to ``seconds``; return True early when a stop (graceful, or only a forced
        one with ``until_forced``) is requested."""
        ev = self.forced if until_forced else self.graceful
        if ev.is_set():
            return True
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(ev.wait(), timeout=seconds)
        return ev.is_set()

    async def watch_parent(self, parent_pid: int, what: str) -> None:
        """Stop gracefully when the supervising process (``--processes``) went away."""
        while not self.graceful.is_set():
            if os.getppid() != parent_pid:
                log.warning("%s: supervisor %d is gone, stopping", what, parent_pid)
                self.request()
                return
            await self.sleep(1.0)


def is_transient(exc: BaseException) -> bool:
    """Errors worth retrying: the connection or the server is (temporarily) unavailable."""
    if isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError)):
        return True
    if isinstance(exc, psycopg.errors.AdminShutdown | psycopg.errors.CannotConnectNow):
        return True
    return False


async def call_with_retry(
    pool: AsyncConnectionPool[Any],
    call: Call[T],
    *,
    what: str,
    give_up: Callable[[], bool],
    stopper: Stopper,
    max_delay: float = 5.0,
) -> T | None:
    """Run ``call`` on a pooled connection, retrying failures with exponential back-off.

    Returns None when ``give_up()`` turned true before the call succeeded. Connection errors
    are logged as warnings, any other database error as an error (it may be a server being
    upgraded); neither is raised.
    """
    delay = 0.05
    failures = 0
    while True:
        if give_up():
            return None
        try:
            async with pool.connection(timeout=max(delay * 4, 2.0)) as conn:
                result = await arun(conn, call)
            if failures:
                log.info("%s: database reachable again after %d failure(s)", what, failures)
            return result
        except psycopg.Error as exc:
            failures += 1
            if is_transient(exc):
                log.warning(
                    "%s: database connection problem (%s); retrying in %.2fs",
                    what,
                    _one_line(exc),
                    delay,
                )
                with contextlib.suppress(Exception):
                    await pool.check()
            else:
                log.error("%s failed: %s; retrying in %.2fs", what, _one_line(exc), delay)
        if await _sleep_unless(stopper, delay, give_up):
            return None
        delay = min(delay * 2, max_delay)


async def _sleep_unless(stopper: Stopper, delay: float, give_up: Callable[[], bool]) -> bool:
    end = asyncio.get_running_loop().time() + delay
    while True:
        if give_up():
            return True
        left = end - asyncio.get_running_loop().time()
        if left <= 0:
            return False
        await stopper.sleep(min(left, 0.05), until_forced=True)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def make_pool(
    dsn: str, *, min_size: int, max_size: int, name: str, prepare: bool = True
) -> AsyncConnectionPool[Any]:
    """An autocommit pool; open it with ``await pool.open()`` (does not wait for the server).

    ``prepare=False`` turns off psycopg's automatic server-side prepared statements
    (``prepare_threshold=None``): behind PgBouncer in transaction pooling mode (before 1.21,
    or without ``max_prepared_statements``) a statement prepared in one transaction's server
    session is missing, or already exists, in the next one's."""
    kwargs: dict[str, Any] = {"autocommit": True, "application_name": name}
    if not prepare:
        kwargs["prepare_threshold"] = None
    return AsyncConnectionPool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        kwargs=kwargs,
        open=False,
        name=name,
    )


async def close_pool(pool: AsyncConnectionPool[Any], timeout: float = 2.0) -> None:
    with contextlib.suppress(Exception):
        await pool.close(timeout=timeout)
