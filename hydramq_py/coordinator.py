"""The coordinator daemon: a loop around ``SELECT * FROM hydra.coordinate(batch)``.

``hydra.coordinate`` does all time-driven work (releasing delayed messages, unlocking after
back-off, firing schedules, expiring leases, resolving dependencies, deleting finished rows)
in bounded batches and returns one row per event. This loop calls it again at once while it
returns a full batch (more work is probably due), otherwise every ``interval`` seconds, and
hands the rows to ``on_event`` subscribers after each call committed. Any number of
coordinators may run at once (the SQL takes its rows with SKIP LOCKED). Same signal handling
and outage behaviour as the worker. ``pgbouncer=True`` (PgBouncer in transaction pooling mode)
sends every statement unprepared; the coordinator keeps no other session state.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

from . import calls
from .events import Event, EventDispatcher, Subscriber
from .runtime import EXIT_FORCED, Stopper, call_with_retry, close_pool, make_pool

log = logging.getLogger("hydramq.coordinator")

S = TypeVar("S", bound=Subscriber)


@dataclass(slots=True)
class CoordinatorStats:
    calls: int = 0
    events: int = 0


class Coordinator:
    """Runs ``hydra.coordinate(batch)`` until stopped. Use :meth:`run`."""

    def __init__(
        self,
        dsn: str,
        *,
        batch: int = 1000,
        interval: float = 0.5,
        events: EventDispatcher | None = None,
        name: str = "hydramq-coordinator",
        pgbouncer: bool = False,
    ) -> None:
        if batch < 1:
            raise ValueError("batch must be at least 1")
        if interval < 0:
            raise ValueError("interval must not be negative")
        self.dsn = dsn
        self.batch = batch
        self.interval = interval
        self.events = events or EventDispatcher()
        self.name = name
        self.stats = CoordinatorStats()
        self.stopper = Stopper()
        self.pgbouncer = pgbouncer
        self._pool = make_pool(dsn, min_size=1, max_size=1, name=name, prepare=not pgbouncer)

    def on_event(self, callback: S, *, events: Sequence[str | type[Event]] | None = None) -> S:
        """Subscribe ``callback`` to the events of each coordination call (after commit)."""
        return self.events.subscribe(callback, events=events)

    def stop(self, *, now: bool = False) -> None:
        self.stopper.request(now=now)

    async def run_once(self) -> list[Event]:
        """One coordination call (retried while the database is unreachable); its events are
        dispatched before returning. Returns [] when stopped meanwhile."""
        events = await call_with_retry(
            self._pool,
            calls.coordinate(self.batch),
            what=f"{self.name}: coordinate",
            give_up=lambda: self.stopper.stopping,
            stopper=self.stopper,
        )
        if not events:
            return []
        self.stats.calls += 1
        self.stats.events += len(events)
        await self.events.dispatch(events)
        return events

    async def run(self, *, install_signal_handlers: bool = True) -> int:
        """Run until stopped. Returns 0 after a graceful stop, EXIT_FORCED after a forced one."""
        if install_signal_handlers:
            self.stopper.install_signal_handlers(self.name)
        await self._pool.open(wait=False)
        log.info(
            "%s: started (batch=%d, interval=%.3fs, pgbouncer=%s, pid=%d)",
            self.name,
            self.batch,
            self.interval,
            self.pgbouncer,
            os.getpid(),
        )
        main = asyncio.create_task(self._loop())
        forced = asyncio.create_task(self.stopper.forced.wait())
        code = 0
        try:
            await asyncio.wait({main, forced}, return_when=asyncio.FIRST_COMPLETED)
            if main.done():
                main.result()
            else:
                code = EXIT_FORCED
                main.cancel()
                await asyncio.gather(main, return_exceptions=True)
        finally:
            forced.cancel()
            await asyncio.gather(forced, return_exceptions=True)
            await close_pool(self._pool, timeout=0.5 if code else 2.0)
            self.stopper.remove_signal_handlers()
        log.info(
            "%s: stopped (%d calls with work, %d events)",
            self.name,
            self.stats.calls,
            self.stats.events,
        )
        return code

    async def _loop(self) -> None:
        while not self.stopper.stopping:
            events = await self.run_once()
            if len(events) >= self.batch:
                continue  # a full batch: more is probably due
            await self.stopper.sleep(self.interval)
