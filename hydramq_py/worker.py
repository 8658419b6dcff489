"""The worker daemon: dequeue → run handler → complete/fail, with ``slots`` messages at once.

Every queue decision is a SQL call; this loop only moves messages between the database and
the handler:

* **Slots and batches.** It dequeues at most ``min(batch, free slots)`` messages per call and
  starts a handler for each at once, so nothing waits in a local buffer that another worker
  could have served. Async handlers run on the event loop; plain functions in a thread pool of
  ``slots`` threads.
* **Acknowledgements** are batched: outcomes are collected and sent with
  ``hydra.complete_many`` / ``hydra.fail_many`` when ``ack_batch`` of them are pending or
  ``ack_interval`` seconds after the first one. A handler that raises fails its message only
  (``retry => true``); :class:`FailWithoutRetry` fails it without retry. A message whose
  payload Python cannot decode (``Message.payload_error``) is failed without retry and never
  reaches the handler.
* **Heartbeats.** A handler still running at half of its lease gets ``hydra.heartbeat`` calls.
* **Wake-ups.** When a dequeue finds nothing, the worker registers itself idle
  (``hydra.worker_idle``) on a dedicated LISTEN connection and waits for a NOTIFY on
  ``hydra_enqueue`` (payload: the pid of the LISTEN session whose registration the enqueue
  claimed, or empty: never a queue name, since any role may LISTEN), re-checking with
  exponential back-off (``poll_min`` → ``poll_max``) for messages that become ready by time
  (delays, back-off).
  Enqueue NOTIFYs only while some worker is registered idle, which keeps NOTIFY — whose commits
  PostgreSQL serialises — off the hot enqueue path. On getting work it calls
  ``hydra.worker_busy()``. ``listen=False`` polls only.
* **PgBouncer** in transaction pooling mode (``pgbouncer=True``): statements are sent
  unprepared, and no LISTEN (nor the idle registration, which names the server session) goes
  through the pooled ``dsn``: the worker LISTENs on ``listen_dsn`` (a direct connection to the
  server) when given, else polls only.
* **Stop.** The first SIGTERM/SIGINT stops dequeuing, lets in-flight handlers finish, flushes
  acknowledgements and returns 0; a second one returns :data:`EXIT_FORCED` at once, leaving
  in-flight messages to lease expiry (they are re-delivered: at-least-once).
* **Database outages** are retried with back-off and logged; they never end the worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import inspect
import logging
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import psycopg

from . import calls, sql
from .client import arun
from .events import (
    Event,
    EventDispatcher,
    Subscriber,
    completed_events,
    dequeued_events,
    failed_events,
)
from .models import Message
from .runtime import EXIT_FORCED, Stopper, call_with_retry, close_pool, make_pool

log = logging.getLogger("hydramq.worker")

#: A handler takes the leased message; it may be a plain or a coroutine function. Its return
#: value is ignored; raising fails the message.
Handler = Callable[[Message], Any]
S = TypeVar("S", bound=Subscriber)


class FailWithoutRetry(Exception):
    """Raise from a handler to fail the message at once, without using remaining attempts."""


@dataclass(slots=True)
class WorkerStats:
    """Counters of one worker process (handler outcomes as acknowledged by the database)."""

    dequeued: int = 0
    succeeded: int = 0
    failed: int = 0  # attempts that failed (retried or not)
    stale: int = 0  # acknowledgements refused because the lease was lost
    notified: int = 0  # idle waits ended by an enqueue's NOTIFY (not by the poll timer)


class Worker:
    """Runs ``handler`` for messages of ``queues`` until stopped. Use :meth:`run`.

    ``dsn`` is a libpq connection string. ``batch`` defaults to ``slots``. Subscribe to events
    with :meth:`on_event` before running.
    """

    def __init__(
        self,
        handler: Handler,
        dsn: str,
        *,
        queues: Sequence[str] = ("default",),
        slots: int = 10,
        batch: int | None = None,
        listen: bool = True,
        poll_min: float = 0.005,
        poll_max: float = 1.0,
        ack_batch: int | None = None,
        ack_interval: float = 0.005,
        events: EventDispatcher | None = None,
        name: str = "hydramq-worker",
        parent_pid: int | None = None,
        pgbouncer: bool = False,
        listen_dsn: str | None = None,
    ) -> None:
        if slots < 1:
            raise ValueError("slots must be at least 1")
        if batch is not None and batch < 1:
            raise ValueError("batch must be at least 1")
        if not queues:
            raise ValueError("queues must name at least one queue")
        self.handler = handler
        self.dsn = dsn
        self.queues = list(queues)
        self.slots = slots
        self.batch = batch or slots
        self.listen = listen
        self.poll_min = poll_min
        self.poll_max = max(poll_max, poll_min)
        self.ack_batch = ack_batch or max(1, min(slots, 100))
        self.ack_interval = ack_interval
        self.events = events or EventDispatcher()
        self.name = name
        self.parent_pid = parent_pid
        self.stats = WorkerStats()
        self.stopper = Stopper()
        self._is_async = _is_async_callable(handler)
        self._running: dict[asyncio.Task[None], Message] = {}
        self._slot_freed = asyncio.Event()
        self._executor: ThreadPoolExecutor | None = None
        self.pgbouncer = pgbouncer
        self._pool = make_pool(dsn, min_size=2, max_size=3, name=name, prepare=not pgbouncer)
        # LISTEN and hydra.worker_idle need one server session throughout: never through a
        # transaction pool.
        listen_on = listen_dsn or (None if pgbouncer else dsn)
        self.listen = listen and listen_on is not None
        self._listener = (
            _Listener(listen_on, self.queues, self.stopper, name)
            if listen and listen_on is not None
            else None
        )
        self._acks = _Acks(self)

    def on_event(self, callback: S, *, events: Sequence[str | type[Event]] | None = None) -> S:
        """Subscribe ``callback`` to this worker's events (called after commit)."""
        return self.events.subscribe(callback, events=events)

    def stop(self, *, now: bool = False) -> None:
        """Ask the worker to stop: gracefully, or at once with ``now=True``."""
        self.stopper.request(now=now)

    async def run(self, *, install_signal_handlers: bool = True) -> int:
        """Run until stopped. Returns 0 after a graceful stop, EXIT_FORCED after a forced one."""
        if install_signal_handlers:
            self.stopper.install_signal_handlers(self.name)
        if not self._is_async:
            self._executor = ThreadPoolExecutor(
                self.slots, thread_name_prefix=f"{self.name}-handler"
            )
        await self._pool.open(wait=False)
        log.info(
            "%s: started (queues=%s, slots=%d, batch=%d, listen=%s, pgbouncer=%s, pid=%d)",
            self.name,
            ",".join(self.queues),
            self.slots,
            self.batch,
            self.listen,
            self.pgbouncer,
            os.getpid(),
        )
        helpers = [asyncio.create_task(self._acks.run(), name="hydramq-acks")]
        if self.parent_pid is not None:
            helpers.append(
                asyncio.create_task(self.stopper.watch_parent(self.parent_pid, self.name))
            )
        main = asyncio.create_task(self._main(), name="hydramq-worker-main")
        forced = asyncio.create_task(self.stopper.forced.wait())
        try:
            await asyncio.wait({main, forced}, return_when=asyncio.FIRST_COMPLETED)
            if main.done() and not main.cancelled():
                main.result()
                code = 0
            else:
                code = EXIT_FORCED
                main.cancel()
                for task in list(self._running):
                    task.cancel()
                with contextlib.suppress(BaseException):
                    await asyncio.wait_for(main, 1.0)
                log.warning(
                    "%s: stopped at once; %d in-flight message(s) left to lease expiry",
                    self.name,
                    len(self._running),
                )
        finally:
            forced.cancel()
            for t in helpers:
                t.cancel()
            await asyncio.gather(*helpers, forced, return_exceptions=True)
            if self._listener is not None:
                await self._listener.close(unregister=not self.stopper.forced.is_set())
            await close_pool(self._pool, timeout=0.5 if self.stopper.forced.is_set() else 2.0)
            if self._executor is not None:
                self._executor.shutdown(wait=False, cancel_futures=True)
            self.stopper.remove_signal_handlers()
        s = self.stats
        log.info(
            "%s: stopped (dequeued=%d, succeeded=%d, failed=%d, stale=%d, notified=%d)",
            self.name,
            s.dequeued,
            s.succeeded,
            s.failed,
            s.stale,
            s.notified,
        )
        return code

    # -- main loop -------------------------------------------------------------------------

    async def _main(self) -> None:
        await self._dequeue_loop()
        if self._running:
            log.info("%s: waiting for %d in-flight message(s)", self.name, len(self._running))
            await asyncio.gather(*self._running, return_exceptions=True)
        await self._acks.close()

    async def _dequeue_loop(self) -> None:
        backoff = self.poll_min
        while not self.stopper.stopping:
            free = self.slots - len(self._running)
            if free <= 0:
                await self._wait_for_slot()
                continue
            leased = await call_with_retry(
                self._pool,
                calls.dequeue_for_worker(self.queues, min(free, self.batch)),
                what=f"{self.name}: dequeue",
                give_up=lambda: self.stopper.stopping,
                stopper=self.stopper,
            )
            if leased is None:  # stopping
                break
            if leased:
                backoff = self.poll_min
                self.stats.dequeued += len(leased)
                if self.events:
                    await self.events.dispatch(dequeued_events(m for m, _ in leased))
                for message, lease_secs in leased:
                    if message.payload_error is not None:
                        # Never reaches the handler; fails alone, the batch goes on.
                        log.warning(
                            "%s: message %s failed without retry: %s",
                            self.name,
                            message.id,
                            message.payload_error,
                        )
                        self._acks.fail(message, message.payload_error, False)
                        continue
                    self._start(message, lease_secs)
                if self._listener is not None:
                    # After starting the handlers: off the wake-up latency path.
                    await self._listener.busy()
                continue
            woke = await self._wait_for_work(backoff)
            backoff = self.poll_min if woke else min(backoff * 2, self.poll_max)

    async def _wait_for_slot(self) -> None:
        self._slot_freed.clear()
        if self.slots - len(self._running) > 0:
            return
        waiter = asyncio.create_task(self._slot_freed.wait())
        stop = asyncio.create_task(self.stopper.graceful.wait())
        await asyncio.wait({waiter, stop}, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        stop.cancel()

    async def _wait_for_work(self, timeout: float) -> bool:
        """Idle: wait for a NOTIFY for our queues (or just sleep) up to ``timeout``.
        Returns True when woken by a notification or a fresh idle registration (re-check
        at once), False on timeout."""
        if self._listener is not None:
            if await self._listener.go_idle():
                # Registered just now: a message enqueued between the empty dequeue and the
                # registration sent no NOTIFY, so look once more before waiting.
                return True
            if self._listener.registered:
                notified = await self._listener.wait(timeout)
                self.stats.notified += notified
                return notified
        await self.stopper.sleep(timeout)
        return False

    # -- handlers --------------------------------------------------------------------------

    def _start(self, message: Message, lease_secs: float) -> None:
        task = asyncio.create_task(
            self._process(message, lease_secs), name=f"hydramq-msg-{message.id}"
        )
        self._running[task] = message
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._running.pop(task, None)
        self._slot_freed.set()
        if not task.cancelled() and task.exception() is not None:  # pragma: no cover - bug guard
            log.error(
                "%s: internal error processing a message", self.name, exc_info=task.exception()
            )

    async def _process(self, message: Message, lease_secs: float) -> None:
        # Heartbeats start only for handlers still running at half their lease: a timer, not
        # a task per message, so short handlers cost nothing here.
        loop = asyncio.get_running_loop()
        beat: list[asyncio.Task[None]] = []
        timer = (
            loop.call_later(
                lease_secs / 2,
                lambda: beat.append(
                    loop.create_task(self._heartbeat(message, loop.time() + lease_secs / 2))
                ),
            )
            if lease_secs > 0
            else None
        )
        error: str | None = None
        retry = True
        try:
            await self._call_handler(message)
        except FailWithoutRetry as exc:
            error, retry = repr(exc), False
            log.info("%s: message %s failed without retry: %r", self.name, message.id, exc)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # noqa: BLE001 - a handler must never take the worker down
            error = repr(exc)
            log.warning(
                "%s: handler failed for message %s (attempt %d/%d): %r",
                self.name,
                message.id,
                message.attempt,
                message.num_attempts,
                exc,
                exc_info=log.isEnabledFor(logging.DEBUG),
            )
        finally:
            if timer is not None:
                timer.cancel()
            for task in beat:
                task.cancel()
        if error is None:
            self._acks.complete(message)
        else:
            self._acks.fail(message, error, retry)

    async def _call_handler(self, message: Message) -> None:
        if self._is_async:
            result = self.handler(message)
        else:
            assert self._executor is not None
            ctx = contextvars.copy_context()
            loop = asyncio.get_running_loop()
            result = await loop.run_in_executor(
                self._executor, functools.partial(ctx.run, self.handler, message)
            )
        if inspect.isawaitable(result):
            await result

    async def _heartbeat(self, message: Message, deadline: float) -> None:
        """Extend the lease now, then each time half of what remains of it has passed.
        ``deadline`` is the current lease end on the loop's clock."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                async with self._pool.connection(
                    timeout=max((deadline - loop.time()) / 4, 0.5)
                ) as conn:
                    hb = await arun(conn, calls.heartbeat(message.id, message.lease_token, None))
            except psycopg.Error as exc:
                log.warning("%s: heartbeat for message %s failed: %s", self.name, message.id, exc)
                await asyncio.sleep(max((deadline - loop.time()) / 4, 0.05))
                continue
            if hb is None:
                log.warning(
                    "%s: lease of message %s was lost (expired and re-delivered?); "
                    "its outcome will be refused",
                    self.name,
                    message.id,
                )
                return
            deadline = loop.time() + hb[1]
            log.debug("%s: lease of message %s extended to %s", self.name, message.id, hb[0])
            await asyncio.sleep(max((deadline - loop.time()) / 2, 0.05))


class _Acks:
    """Collects handler outcomes and sends them in batches (complete_many / fail_many)."""

    def __init__(self, worker: Worker) -> None:
        self.w = worker
        self._complete: list[Message] = []
        self._fail: list[tuple[Message, str, bool]] = []
        self._wake = asyncio.Event()
        self._closing = False
        self._closed = asyncio.Event()

    def _pending(self) -> int:
        return len(self._complete) + len(self._fail)

    def complete(self, message: Message) -> None:
        self._complete.append(message)
        self._wake.set()

    def fail(self, message: Message, error: str, retry: bool) -> None:
        self._fail.append((message, error, retry))
        self._wake.set()

    async def close(self) -> None:
        """Flush everything pending, then stop (the caller awaits the final flush)."""
        self._closing = True
        self._wake.set()
        await self._closed.wait()

    async def run(self) -> None:
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                if not self._closing and self._pending() < self.w.ack_batch:
                    # Give other handlers a moment to finish so they share the round trip.
                    await self.w.stopper.sleep(self.w.ack_interval, until_forced=True)
                    if self.w.stopper.forced.is_set():
                        return
                while self._pending():
                    await self._flush()
                if self._closing:
                    return
        finally:
            self._closed.set()

    async def _flush(self) -> None:
        done, self._complete = self._complete, []
        failed, self._fail = self._fail, []
        give_up = self.w.stopper.forced.is_set
        if done:
            ids = await call_with_retry(
                self.w._pool,
                calls.complete_many([m.id for m in done], [m.lease_token for m in done]),
                what=f"{self.w.name}: complete",
                give_up=give_up,
                stopper=self.w.stopper,
            )
            if ids is not None:
                accepted = set(ids)
                ok = [m for m in done if m.id in accepted]
                stale = len(done) - len(ok)
                self.w.stats.succeeded += len(ok)
                self.w.stats.stale += stale
                if stale:
                    log.warning(
                        "%s: %d completion(s) refused: lease lost before completion "
                        "(the message is or was re-delivered)",
                        self.w.name,
                        stale,
                    )
                if self.w.events:
                    await self.w.events.dispatch(completed_events(ok))
        for retry in (True, False):
            group = [f for f in failed if f[2] is retry]
            if not group:
                continue
            results = await call_with_retry(
                self.w._pool,
                calls.fail_many(
                    [m.id for m, _, _ in group],
                    [m.lease_token for m, _, _ in group],
                    [e for _, e, _ in group],
                    retry,
                ),
                what=f"{self.w.name}: fail",
                give_up=give_up,
                stopper=self.w.stopper,
            )
            if results is None:
                continue
            by_id = {m.id: (m, e) for m, e, _ in group}
            evs: list[Event] = []
            for res in results:
                entry = by_id.get(res.message_id)
                if entry is None:
                    continue
                if res.stale:
                    self.w.stats.stale += 1
                    log.warning(
                        "%s: failure of message %s refused: lease lost", self.w.name, res.message_id
                    )
                    continue
                self.w.stats.failed += 1
                evs.extend(failed_events(entry[0], res, error=entry[1], retry=retry))
            await self.w.events.dispatch(evs)


class _Listener:
    """The LISTEN connection and the idle registration (``hydra.worker_idle``/``worker_busy``).

    Failures drop the connection and fall back to polling until a reconnect (with back-off)
    succeeds; they are never fatal.
    """

    def __init__(self, dsn: str, queues: Sequence[str], stopper: Stopper, name: str) -> None:
        self.dsn = dsn
        self.queues = list(queues)
        self.stopper = stopper
        self.name = name
        self.conn: psycopg.AsyncConnection[Any] | None = None
        self.registered = False
        # The server's pid of the LISTEN session, as the server reports it (a proxy in between
        # would show the client a made-up pid); NOTIFY payloads name it.
        self.session_pid = ""
        self._retry_at = 0.0
        self._delay = 0.1

    async def _connection(self) -> psycopg.AsyncConnection[Any] | None:
        if self.conn is not None and not self.conn.closed:
            return self.conn
        loop = asyncio.get_running_loop()
        if loop.time() < self._retry_at:
            return None
        try:
            conn = await psycopg.AsyncConnection.connect(
                self.dsn, autocommit=True, application_name=f"{self.name}-listen"
            )
            await conn.execute(sql.LISTEN)
            cur = await conn.execute("SELECT pg_catalog.pg_backend_pid()")
            row = await cur.fetchone()
        except psycopg.Error as exc:
            log.warning(
                "%s: LISTEN connection unavailable (%s); polling meanwhile",
                self.name,
                str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__,
            )
            self._retry_at = loop.time() + self._delay
            self._delay = min(self._delay * 2, 5.0)
            return None
        self.conn = conn
        self.session_pid = str(row[0]) if row else ""
        self.registered = False
        self._delay = 0.1
        return conn

    async def _drop(self, exc: BaseException) -> None:
        log.warning("%s: LISTEN connection lost (%s); polling meanwhile", self.name, exc)
        conn, self.conn = self.conn, None
        self.registered = False
        self._retry_at = asyncio.get_running_loop().time() + self._delay
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()

    async def go_idle(self) -> bool:
        """Register as idle unless already registered. True when it registered just now."""
        if self.registered and self.conn is not None and not self.conn.closed:
            return False
        conn = await self._connection()
        if conn is None:
            return False
        try:
            await arun(conn, calls.worker_idle(self.queues))
        except psycopg.Error as exc:
            await self._drop(exc)
            return False
        self.registered = True
        return True

    async def busy(self) -> None:
        """Unregister after getting work (enqueue stops notifying for us)."""
        if not self.registered or self.conn is None:
            return
        self.registered = False
        try:
            await arun(self.conn, calls.worker_busy())
        except psycopg.Error as exc:
            await self._drop(exc)

    async def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` for a notification about one of our queues, or a stop."""
        conn = self.conn
        if conn is None:
            await self.stopper.sleep(timeout)
            return False
        notified = asyncio.create_task(self._notified(conn, timeout))
        stop = asyncio.create_task(self.stopper.graceful.wait())
        try:
            await asyncio.wait({notified, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            if not notified.done():
                notified.cancel()
                with contextlib.suppress(BaseException):
                    await notified
        if notified.cancelled():
            return False
        exc = notified.exception()
        if exc is not None:
            await self._drop(exc)
            return False
        woken = notified.result()
        if woken:
            # The enqueue that notified may have claimed our registration (one NOTIFY per
            # idle period): register again before the next wait.
            self.registered = False
        return woken

    async def _notified(self, conn: psycopg.AsyncConnection[Any], timeout: float) -> bool:
        async for note in conn.notifies(timeout=timeout):
            # Our pid (our registration was claimed), empty (wake every idle worker), or a
            # queue name (what extension 0.1.0 sends). Only a hint: a spurious one costs one
            # empty dequeue.
            if note.channel == sql.NOTIFY_CHANNEL and (
                not note.payload
                or note.payload == self.session_pid
                or note.payload in self.queues
            ):
                return True
        return False

    async def close(self, *, unregister: bool) -> None:
        conn, self.conn = self.conn, None
        if conn is None:
            return
        if unregister and self.registered:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(arun(conn, calls.worker_busy()), 1.0)
        self.registered = False
        with contextlib.suppress(Exception):
            await conn.close()


def _is_async_callable(fn: Callable[..., Any]) -> bool:
    while isinstance(fn, functools.partial):
        fn = fn.func
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 - async callable objects
    )
