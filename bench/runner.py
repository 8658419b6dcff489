"""Multi-process load generators: drain a pre-filled queue, or enqueue for a fixed time.

Both use ``PROCESSES`` spawned OS processes (spawned, not forked, so that no libpq socket of
the parent is shared), each with one thread per connection. Workers connect first, report
ready, and wait on a start event; the clock starts when the parent sets it. Times are
``time.monotonic()`` (CLOCK_MONOTONIC, the same clock in every process on Linux).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

import psycopg
from common import BATCH, PROCESSES, Backoff, Progress
from workloads import DRAIN_SYSTEMS, PRODUCERS, batch_docs

_MP = mp.get_context("spawn")


@dataclass
class RunResult:
    """Outcome of one timed run (drain or enqueue)."""

    messages: int
    seconds: float
    complete: bool = True
    dequeue_calls: int = 0
    empty_dequeues: int = 0
    stale: int = 0
    retries: dict[str, int] = field(default_factory=dict)  # aborted statements retried
    errors: list[str] = field(default_factory=list)
    top_statements: list[dict[str, Any]] | None = None  # --stats: pg_stat_statements
    load1: float = field(default_factory=lambda: os.getloadavg()[0])  # at the end of the run

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"messages": self.messages, "seconds": round(self.seconds, 4),
                "msgs_per_s": round(self.rate, 1), "complete": self.complete,
                "dequeue_calls": self.dequeue_calls, "empty_dequeues": self.empty_dequeues,
                "stale_completions": self.stale, "retries": self.retries,
                "loadavg_1min_after": round(self.load1, 2),
                "errors": self.errors[:5],
                **({"top_statements": self.top_statements} if self.top_statements else {})}


def _merge_counts(parts: Any) -> dict[str, int]:
    total: dict[str, int] = {}
    for part in parts:
        for key, n in part.items():
            total[key] = total.get(key, 0) + n
    return total


def _connect_all(dsn: str, conns: int, ready_q: Any) -> list[psycopg.Connection]:
    try:
        return [psycopg.connect(dsn, autocommit=True) for _ in range(conns)]
    except Exception as exc:
        ready_q.put(f"connect failed: {exc}")
        raise SystemExit(1) from exc


def _await_ready(ready_q: Any, procs: list[Any], start_evt: Any, stop_evt: Any) -> None:
    """Wait until every worker process has its connections open (they report a pid)."""
    for _ in procs:
        msg = ready_q.get(timeout=120)
        if isinstance(msg, str):
            stop_evt.set()
            start_evt.set()  # release the waiting threads; they see stop_evt and return
            for p in procs:
                p.join(timeout=10)
            raise RuntimeError(f"benchmark worker could not start: {msg}")


# --------------------------------------------------------------------------------------------
# drain
# --------------------------------------------------------------------------------------------
# A worker retries a statement that the server aborted to break a deadlock or a serialization
# conflict, as a real driver would; each retry is counted and reported.
RETRYABLE = (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure)
MAX_RETRIES = 10


def _retrying(fn: Any, counts: dict[str, int], stop_evt: Any, *args: Any) -> Any:
    for attempt in range(MAX_RETRIES + 1):
        try:
            return fn(*args)
        except RETRYABLE as exc:
            key = type(exc).__name__
            counts[key] = counts.get(key, 0) + 1
            if attempt == MAX_RETRIES or stop_evt.is_set():
                raise
    raise AssertionError("unreachable")


def _drain_thread(system_name: str, batch: int, expected: int, counter: Any,
                  start_evt: Any, stop_evt: Any, conn: psycopg.Connection,
                  out: dict[str, Any], ready: threading.Semaphore) -> None:
    system = DRAIN_SYSTEMS[system_name]
    backoff = Backoff()
    try:
        system.warm_up(conn)
    except Exception:  # noqa: BLE001 - reported to the parent, which marks the run failed
        out["error"] = traceback.format_exc(limit=3)
        stop_evt.set()
    ready.release()
    start_evt.wait()
    calls = empties = stale = 0
    last_done = 0.0
    retries: dict[str, int] = {}
    try:
        while not stop_evt.is_set():
            ids, tokens = _retrying(system.dequeue, retries, stop_evt, conn, batch)
            calls += 1
            if not ids:
                empties += 1
                if counter.value >= expected:
                    break
                backoff.sleep()
                continue
            backoff.reset()
            done = _retrying(system.complete, retries, stop_evt, conn, ids, tokens)
            stale += len(ids) - done
            last_done = time.monotonic()
            with counter.get_lock():
                counter.value += done
                total = counter.value
            if total >= expected:
                break
    except Exception:  # noqa: BLE001 - reported to the parent, which marks the run failed
        out["error"] = traceback.format_exc(limit=3)
        stop_evt.set()
    out.update(calls=calls, empties=empties, stale=stale, last_done=last_done, retries=retries)


def _drain_process(dsn: str, system_name: str, batch: int, conns: int, expected: int,
                   counter: Any, start_evt: Any, stop_evt: Any, ready_q: Any,
                   result_q: Any) -> None:
    connections = _connect_all(dsn, conns, ready_q)
    outs: list[dict[str, Any]] = [{} for _ in connections]
    warmed = threading.Semaphore(0)
    threads = [threading.Thread(target=_drain_thread,
                                args=(system_name, batch, expected, counter, start_evt,
                                      stop_evt, c, o, warmed), daemon=True)
               for c, o in zip(connections, outs, strict=True)]
    for t in threads:
        t.start()
    for _ in threads:
        warmed.acquire()
    ready_q.put(os.getpid())
    for t in threads:
        t.join()
    for c in connections:
        c.close()
    result_q.put(outs)


def drain(dsn: str, system_name: str, expected: int, progress: Progress,
          connections_per_process: int, timeout_s: float = 300.0,
          batch: int = BATCH) -> RunResult:
    """Drain ``expected`` pre-filled messages with PROCESSES x connections consumers."""
    counter = _MP.Value("q", 0)
    start_evt, stop_evt = _MP.Event(), _MP.Event()
    ready_q, result_q = _MP.Queue(), _MP.Queue()
    procs = [_MP.Process(target=_drain_process,
                         args=(dsn, system_name, batch, connections_per_process, expected,
                               counter, start_evt, stop_evt, ready_q, result_q), daemon=True)
             for _ in range(PROCESSES)]
    for p in procs:
        p.start()
    _await_ready(ready_q, procs, start_evt, stop_evt)
    t0 = time.monotonic()
    start_evt.set()
    results: list[dict[str, Any]] = []
    timed_out = False
    while len(results) < len(procs):
        now = time.monotonic()
        done = counter.value
        progress.update(f"{done:>9,}/{expected:,} msgs  {done / max(now - t0, 1e-9):>9,.0f}/s")
        if not timed_out and now - t0 > timeout_s:
            timed_out = True
            stop_evt.set()
        try:
            results.extend([result_q.get(timeout=0.25)])
        except Exception:  # noqa: BLE001 - queue.Empty: keep polling
            if not any(p.is_alive() for p in procs) and result_q.empty():
                break
    for p in procs:
        p.join(timeout=10)
    outs = [o for r in results for o in r]
    last = max((o.get("last_done", 0.0) for o in outs), default=0.0)
    res = RunResult(messages=counter.value, seconds=max(last - t0, 1e-9),
                    complete=counter.value >= expected and not timed_out,
                    dequeue_calls=sum(o.get("calls", 0) for o in outs),
                    empty_dequeues=sum(o.get("empties", 0) for o in outs),
                    stale=sum(o.get("stale", 0) for o in outs),
                    retries=_merge_counts(o.get("retries", {}) for o in outs),
                    errors=[o["error"] for o in outs if "error" in o])
    if len(results) < len(procs):
        res.complete = False
        res.errors.append("a worker process died without reporting")
    return res


# --------------------------------------------------------------------------------------------
# time-boxed enqueue
# --------------------------------------------------------------------------------------------
def _enqueue_thread(producer_name: str, seed: int, t0: Any, seconds: float, counter: Any,
                    start_evt: Any, stop_evt: Any, conn: psycopg.Connection,
                    out: dict[str, Any]) -> None:
    producer = PRODUCERS[producer_name]
    docs = batch_docs(seed) if producer.per_call > 1 else []
    k = seed * 1000
    done = 0
    start_evt.wait()
    deadline = t0.value + seconds
    try:
        while not stop_evt.is_set():
            n = producer.run_once(conn, k, docs)
            k += 1
            if time.monotonic() > deadline:
                break
            done += n
            with counter.get_lock():
                counter.value += n
    except Exception:  # noqa: BLE001 - reported to the parent
        out["error"] = traceback.format_exc(limit=3)
        stop_evt.set()
    out["done"] = done


def _enqueue_process(dsn: str, producer_name: str, proc_index: int, conns: int, t0: Any,
                     seconds: float, counter: Any, start_evt: Any, stop_evt: Any,
                     ready_q: Any, result_q: Any) -> None:
    connections = _connect_all(dsn, conns, ready_q)
    outs: list[dict[str, Any]] = [{} for _ in connections]
    threads = [threading.Thread(target=_enqueue_thread,
                                args=(producer_name, proc_index * conns + i, t0, seconds,
                                      counter, start_evt, stop_evt, c, outs[i]), daemon=True)
               for i, c in enumerate(connections)]
    for t in threads:
        t.start()
    ready_q.put(os.getpid())
    for t in threads:
        t.join()
    for c in connections:
        c.close()
    result_q.put(outs)


def enqueue_for(dsn: str, producer_name: str, seconds: float, progress: Progress,
                connections_per_process: int) -> RunResult:
    """Enqueue with PROCESSES x connections producers for ``seconds``; count what committed
    before the deadline."""
    counter = _MP.Value("q", 0)
    t0 = _MP.Value("d", 0.0)
    start_evt, stop_evt = _MP.Event(), _MP.Event()
    ready_q, result_q = _MP.Queue(), _MP.Queue()
    procs = [_MP.Process(target=_enqueue_process,
                         args=(dsn, producer_name, i, connections_per_process, t0, seconds,
                               counter, start_evt, stop_evt, ready_q, result_q), daemon=True)
             for i in range(PROCESSES)]
    for p in procs:
        p.start()
    _await_ready(ready_q, procs, start_evt, stop_evt)
    t0.value = time.monotonic()
    start_evt.set()
    results: list[dict[str, Any]] = []
    while len(results) < len(procs):
        now = time.monotonic()
        done = counter.value
        progress.update(f"{done:>9,} msgs  {done / max(now - t0.value, 1e-9):>9,.0f}/s")
        if now - t0.value > seconds + 60:
            stop_evt.set()
        try:
            results.extend([result_q.get(timeout=0.25)])
        except Exception:  # noqa: BLE001 - queue.Empty: keep polling
            if not any(p.is_alive() for p in procs) and result_q.empty():
                break
    for p in procs:
        p.join(timeout=10)
    outs = [o for r in results for o in r]
    res = RunResult(messages=sum(o.get("done", 0) for o in outs), seconds=seconds,
                    errors=[o["error"] for o in outs if "error" in o])
    res.complete = not res.errors and len(results) == len(procs)
    return res
