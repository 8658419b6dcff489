"""Phases of the Python-driver issue: what the real ``hydramq worker`` costs and how fast it
wakes up. Imported by ``phases.py`` (importing registers them, after the SQL phases).

* ``latency`` -- an idle queue; one message at a time, enqueue commit -> handler start, p50 and
  p99, through a real worker process started with the CLI, woken by LISTEN/NOTIFY and then
  polling only (``--no-listen``).
* ``e2e`` -- N pre-enqueued messages drained by ``hydramq worker hydramq.demo_tasks:noop
  --processes 2``, from the worker's start until the queue is empty, against the SQL-level
  drain of the same queue (2 processes x 10 connections, batch 100; the drain phase's loop)
  measured in the same phase, interleaved.
* ``notify`` -- single-message enqueue throughput (the enqueue phase's producers) while an idle
  worker is registered (``hydra.worker_idle`` on a connection that LISTENs, so every enqueue
  NOTIFYs) against none registered (no NOTIFY at all).

Each phase stores ``params``, its runs, a ``summary`` (printed by report.py) and ``targets``
(PASS/MISS, informational) in ``ctx.results[name]``.
"""

from __future__ import annotations

import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from common import CONNECTIONS_PER_PROCESS, ENQUEUE_CONNECTIONS_PER_PROCESS, Context, median, ratio
from phases import Shape, guarded, phase, purge_hydramq, run_drain, settle
from runner import RunResult, enqueue_for
from workloads import DRAIN_SYSTEMS, QUEUE, shape_chunks

BENCH_DIR = Path(__file__).resolve().parent

LATENCY_QUEUE = "bench_latency"
ENQUEUE_ONE = "SELECT message_id FROM hydra.enqueue(%s::jsonb, queue => %s)"
COUNT_QUEUE = "SELECT count(*) FROM hydra.message WHERE queue = %s"


@dataclass(frozen=True)
class DriverSizes:
    latency_messages: int  # measured messages per mode
    latency_warmup: int  # untimed first messages (worker start-up, plan caches)
    gap_min_s: float  # pause after an enqueue, uniform in [gap_min_s, gap_max_s], and
    gap_max_s: float  # at least until its handler started: the worker is idle at each enqueue
    latency_slots: int
    e2e_messages: int  # as many as the S1 drain (same-size comparisons)
    e2e_slots: int  # messages in flight per worker process
    e2e_batch: int  # per dequeue (as the SQL drain)
    e2e_processes: int

    @classmethod
    def for_ctx(cls, ctx: Context) -> DriverSizes:
        quick = getattr(ctx, "quick", ctx.sizes.s1_messages < 50_000)
        if quick:
            return cls(200, 10, 0.015, 0.045, 10, ctx.sizes.s1_messages, 300, 100, 2)
        return cls(1_000, 20, 0.015, 0.045, 10, ctx.sizes.s1_messages, 300, 100, 2)


def percentile(values: list[float], p: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default); None when empty."""
    if not values:
        return None
    xs = sorted(values)
    k = (len(xs) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def rnd(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


def judge(metric: str, value: float | None, target: float, op: str = ">=") -> dict[str, Any]:
    """One target row for report.verdicts (``op`` is ">=" or "<=")."""
    if value is None:
        verdict = "n/a"
    else:
        ok = value >= target if op == ">=" else value <= target
        verdict = "PASS" if ok else "MISS"
    return {"metric": metric, "target": target, "op": op,
            "value": None if value is None else round(value, 3), "verdict": verdict}


# --------------------------------------------------------------------------------------------
# a real worker process, started with the CLI
# --------------------------------------------------------------------------------------------
def hydramq_command() -> list[str]:
    """The ``hydramq`` console script of this interpreter's environment (``.venv/bin``)."""
    script = Path(sys.executable).with_name("hydramq")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "hydramq.cli"]


class CliWorker:
    """``hydramq worker TARGET --queue Q --slots N [--processes P] [--no-listen]`` with
    ``DATABASE_URL`` set, run from ``bench/`` (so ``latency_handler`` imports), its output in a
    log file. Stopped with SIGTERM sent to its own pid (the supervisor of ``--processes``
    forwards it to its workers), SIGKILL to that pid if it does not exit in time."""

    def __init__(self, dsn: str, target: str, queue: str, *, slots: int, processes: int = 1,
                 batch: int | None = None, listen: bool = True, logdir: Path,
                 env: dict[str, str] | None = None) -> None:
        self.argv = [*hydramq_command(), "worker", target, "--queue", queue,
                     "--slots", str(slots), "--processes", str(processes)]
        if batch is not None:
            self.argv += ["--batch", str(batch)]
        if not listen:
            self.argv.append("--no-listen")
        self.env = {**os.environ, "DATABASE_URL": dsn, **(env or {})}
        self.env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(BENCH_DIR), os.environ.get("PYTHONPATH")) if p)
        self.log_path = logdir / f"worker-{queue}-{int(time.monotonic() * 1000)}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def command(self) -> str:
        return " ".join(["hydramq", *self.argv[1:]] if self.argv[0].endswith("hydramq")
                        else self.argv)

    def start(self) -> None:
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(self.argv, cwd=BENCH_DIR, env=self.env,
                                         stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 20.0) -> int | None:
        """Graceful stop; returns the exit code (None if it had to be killed)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
                return None
        return self.proc.returncode

    def exit_code(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def log_tail(self, lines: int = 12) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class StartLog:
    """Reads the ``starts-<pid>.txt`` files latency_handler appends to, incrementally."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.starts: dict[int, float] = {}
        self._offsets: dict[Path, int] = {}
        self._partial: dict[Path, str] = {}

    def refresh(self) -> None:
        for path in self.folder.glob("starts-*.txt"):
            with open(path) as f:
                f.seek(self._offsets.get(path, 0))
                data = self._partial.get(path, "") + f.read()
                self._offsets[path] = f.tell()
            *lines, self._partial[path] = data.split("\n")
            for line in lines:
                mid, t = line.split()
                self.starts.setdefault(int(mid), float(t))

    def get(self, message_id: int) -> float | None:
        if message_id not in self.starts:
            self.refresh()
        return self.starts.get(message_id)


# --------------------------------------------------------------------------------------------
# latency: enqueue -> handler start
# --------------------------------------------------------------------------------------------
def run_latency(ctx: Context, conn: psycopg.Connection, sz: DriverSizes, listen: bool,
                tmp: Path) -> dict[str, Any]:
    mode = "LISTEN/NOTIFY" if listen else "polling"
    ctx.progress.start(f"latency {mode}")
    folder = tmp / ("listen" if listen else "poll")
    folder.mkdir()
    worker = CliWorker(ctx.dsn, "latency_handler:record_start", LATENCY_QUEUE,
                       slots=sz.latency_slots, listen=listen, logdir=tmp,
                       env={"HYDRAMQ_BENCH_LATENCY_DIR": str(folder)})
    starts = StartLog(folder)
    rng = random.Random(20240604)  # the same gaps for both modes
    sent: dict[int, tuple[float, float]] = {}  # id -> (before the call, after the commit)
    measured: list[int] = []
    late = 0
    total = sz.latency_warmup + sz.latency_messages
    worker.start()
    try:
        for i in range(total):
            payload = json.dumps({"i": i})
            t_send = time.monotonic()
            row = conn.execute(ENQUEUE_ONE, (payload, LATENCY_QUEUE)).fetchone()
            t_commit = time.monotonic()  # autocommit: the statement returned = committed
            assert row is not None
            mid = int(row[0])
            sent[mid] = (t_send, t_commit)
            if i >= sz.latency_warmup:
                measured.append(mid)
            time.sleep(rng.uniform(sz.gap_min_s, sz.gap_max_s))
            # Do not enqueue the next one before this one's handler started: each message
            # meets an idle worker. The first waits for the worker's start-up.
            deadline = time.monotonic() + (60.0 if i == 0 else 5.0)
            while starts.get(mid) is None:
                if not worker.alive():
                    raise RuntimeError(f"worker exited ({worker.exit_code()}): "
                                       f"{worker.log_tail()}")
                if time.monotonic() > deadline:
                    late += 1
                    break
                time.sleep(0.002)
            if i % 20 == 0 or i == total - 1:
                lat = [(starts.starts[m] - sent[m][1]) * 1000 for m in measured
                       if m in starts.starts]
                p50 = percentile(lat, 50)
                ctx.progress.update(
                    f"{i + 1:>5}/{total} msgs" + (f"  p50 {p50:6.2f} ms" if p50 is not None
                                                  else "  (warm-up)"))
    finally:
        code = worker.stop()
    starts.refresh()
    lat_ms = [(starts.starts[m] - sent[m][1]) * 1000 for m in measured if m in starts.starts]
    from_send = [(starts.starts[m] - sent[m][0]) * 1000 for m in measured if m in starts.starts]
    missing = len(measured) - len(lat_ms)
    left = conn.execute(COUNT_QUEUE, (LATENCY_QUEUE,)).fetchone()
    registered = conn.execute("SELECT count(*) FROM hydra.waiting_worker").fetchone()
    out = {
        "mode": mode, "command": worker.command, "messages": len(measured),
        "handled": len(lat_ms), "missing": missing, "waited_over_5s": late,
        "p50_ms": rnd(percentile(lat_ms, 50), 3), "p90_ms": rnd(percentile(lat_ms, 90), 3),
        "p99_ms": rnd(percentile(lat_ms, 99), 3), "max_ms": rnd(max(lat_ms, default=None), 3),
        "mean_ms": rnd(statistics.fmean(lat_ms), 3) if lat_ms else None,
        "min_ms": rnd(min(lat_ms, default=None), 3),
        "p50_from_send_ms": rnd(percentile(from_send, 50), 3),
        "p99_from_send_ms": rnd(percentile(from_send, 99), 3),
        "worker_exit_code": code, "left_in_queue": int(left[0]) if left else None,
        "idle_registrations_left": int(registered[0]) if registered else None,
        "loadavg_1min_after": round(os.getloadavg()[0], 2),
    }
    ctx.progress.done(f"p50 {out['p50_ms']} ms  p99 {out['p99_ms']} ms  max {out['max_ms']} ms  "
                      f"({len(lat_ms):,} msgs" + (f", {missing} MISSING" if missing else "")
                      + f"; worker exit {code})")
    if out["left_in_queue"]:
        purge_hydramq(conn)
    return out


@phase("latency", "latency: idle queue, enqueue -> handler start, real CLI worker "
                  "(LISTEN/NOTIFY, then polling)")
def latency_phase(ctx: Context) -> None:
    if not ctx.hydramq:
        ctx.results["latency"] = {"skipped": "hydramq extension not available"}
        return
    sz = DriverSizes.for_ctx(ctx)
    entry: dict[str, Any] = {"params": {
        "messages_per_mode": sz.latency_messages, "warmup_messages": sz.latency_warmup,
        "gap_after_enqueue_s": [sz.gap_min_s, sz.gap_max_s], "worker_slots": sz.latency_slots,
        "worker_processes": 1, "handler": "latency_handler:record_start (bench/)",
        "clock": "time.monotonic(): producer right after the enqueue returned (autocommit), "
                 "handler on entry"}}
    ctx.results["latency"] = entry
    with tempfile.TemporaryDirectory(prefix="hydramq-bench-latency-") as tmpdir, \
            psycopg.connect(ctx.dsn, autocommit=True) as conn:
        for listen in (True, False):
            key = "listen" if listen else "poll"
            try:
                entry[key] = run_latency(ctx, conn, sz, listen, Path(tmpdir))
            except (psycopg.Error, RuntimeError, OSError) as exc:
                ctx.progress.done(f"ERROR: {exc}")
                entry[key] = {"error": str(exc)}
    rows = []
    for key in ("listen", "poll"):
        r = entry.get(key, {})
        if "error" in r:
            rows.append({"mode": key, "error": r["error"].splitlines()[0]})
            continue
        rows.append({"mode": f"{r['mode']:<13}", "msgs": r["handled"],
                     "p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"], "max_ms": r["max_ms"],
                     **({"missing": r["missing"]} if r["missing"] else {})})
    listen_r = entry.get("listen", {})
    entry["summary"] = rows
    entry["targets"] = [judge("latency p50 LISTEN/NOTIFY ms", listen_r.get("p50_ms"), 5.0,
                              "<=")]


# --------------------------------------------------------------------------------------------
# end-to-end throughput of the CLI worker
# --------------------------------------------------------------------------------------------
def fill_queue(ctx: Context, conn: psycopg.Connection, shape: Shape) -> None:
    """Pre-enqueue ``shape`` into the bench queue exactly as the drain phase does (untimed)."""
    filled, next_analyze = 0, 1000
    for doc in shape_chunks(shape.channels, shape.per_channel, shape.prefix, shape.chunk):
        filled += DRAIN_SYSTEMS["hydramq"].fill(conn, doc)
        ctx.progress.update(f"pre-enqueue {filled:,}/{shape.messages:,} (untimed)")
        if filled >= next_analyze:
            conn.execute("ANALYZE")
            next_analyze *= 4


def run_cli_drain(ctx: Context, conn: psycopg.Connection, shape: Shape, sz: DriverSizes,
                  round_no: int, tmp: Path) -> dict[str, Any]:
    n = shape.messages
    ctx.progress.start(f"e2e CLI worker x{sz.e2e_processes} r{round_no + 1}")
    fill_queue(ctx, conn, shape)
    ctx.progress.update("vacuum + checkpoint (untimed)", force=True)
    settle(conn)
    worker = CliWorker(ctx.dsn, "hydramq.demo_tasks:noop", QUEUE, slots=sz.e2e_slots,
                       batch=sz.e2e_batch, processes=sz.e2e_processes, logdir=tmp)
    timeout = ctx.sizes.drain_timeout_s + 30.0
    t0 = time.monotonic()
    worker.start()
    t_first = left_first = None
    left = n
    t_end = None
    error = None
    try:
        while True:
            row = conn.execute(COUNT_QUEUE, (QUEUE,)).fetchone()
            now = time.monotonic()
            left = int(row[0]) if row else 0
            if t_first is None and left < n:
                t_first, left_first = now, left
            if left == 0:
                t_end = now
                break
            if not worker.alive():
                error = f"worker exited ({worker.exit_code()}): {worker.log_tail()}"
                break
            if now - t0 > timeout:
                error = f"not drained after {timeout:.0f}s"
                break
            done = n - left
            ctx.progress.update(f"{done:>9,}/{n:,} msgs  {done / max(now - t0, 1e-9):>9,.0f}/s")
            # Poll often only near the end (each poll is a count over the queue).
            if t_first is None:
                time.sleep(0.025)
            else:
                rate = (left_first - left) / max(now - t_first, 1e-3)
                time.sleep(min(0.1, max(0.005, left / max(rate, 1.0) / 4)))
    finally:
        code = worker.stop()
    if left:
        purge_hydramq(conn)
    seconds = (t_end - t0) if t_end is not None else time.monotonic() - t0
    steady = (ratio(left_first, t_end - t_first) if t_end is not None and t_first is not None
              and t_end > t_first else None)
    out = {"messages": n - left, "seconds": round(seconds, 4),
           "msgs_per_s": round((n - left) / seconds, 1) if seconds > 0 else 0.0,
           "complete": left == 0 and error is None,
           "startup_s": round(t_first - t0, 3) if t_first is not None else None,
           "msgs_per_s_after_first_dequeue": rnd(steady, 1),
           "worker_exit_code": code, "command": worker.command,
           "loadavg_1min_after": round(os.getloadavg()[0], 2),
           "errors": [error] if error else []}
    status = f"{out['msgs_per_s']:>9,.0f} msgs/s  ({n - left:,} in {seconds:.2f}s, start-up " \
             f"{out['startup_s']}s; {out['msgs_per_s_after_first_dequeue']} msgs/s after it)"
    if error:
        status += f"  ERROR: {error.splitlines()[0]}"
    ctx.progress.done(status)
    return out


@phase("e2e", "end-to-end: hydramq worker --processes 2 (no-op handler) vs the SQL-level "
              "drain of the same queue")
def e2e_phase(ctx: Context) -> None:
    if not ctx.hydramq:
        ctx.results["e2e"] = {"skipped": "hydramq extension not available"}
        return
    sz = DriverSizes.for_ctx(ctx)
    shape = Shape("e2e/SQL", 1, sz.e2e_messages, False, "s1c", 1000)  # S1-shaped
    entry: dict[str, Any] = {
        "params": {"messages": sz.e2e_messages, "channels": 1, "worker_processes":
                   sz.e2e_processes, "worker_slots": sz.e2e_slots,
                   "worker_batch": sz.e2e_batch, "handler": "hydramq.demo_tasks:noop",
                   "sql_drain": f"2 processes x {CONNECTIONS_PER_PROCESS} connections, "
                                "batch 100 (as the drain phase)",
                   "clock": "CLI: from starting the worker command until a count of the "
                            "queue reads 0; SQL: the drain phase's clock"},
        "runs": {"cli": [], "sql": []}}
    ctx.results["e2e"] = entry
    with tempfile.TemporaryDirectory(prefix="hydramq-bench-e2e-") as tmpdir, \
            psycopg.connect(ctx.dsn, autocommit=True) as conn:
        for r in range(ctx.sizes.rounds):
            order = ("sql", "cli") if r % 2 == 0 else ("cli", "sql")
            for system in order:
                if system == "sql":
                    res = guarded(ctx, conn, "hydramq", run_drain, ctx, conn, shape, "hydramq", r)
                    entry["runs"]["sql"].append(res.as_dict())
                else:
                    try:
                        entry["runs"]["cli"].append(run_cli_drain(ctx, conn, shape, sz, r,
                                                                  Path(tmpdir)))
                    except (psycopg.Error, RuntimeError, OSError) as exc:
                        ctx.progress.done(f"ERROR: {exc}")
                        entry["runs"]["cli"].append({"complete": False, "msgs_per_s": 0.0,
                                                     "errors": [str(exc)]})
    rates: dict[str, float | None] = {}
    for system, runs in entry["runs"].items():
        rates[system] = median([x["msgs_per_s"] for x in runs if x.get("complete")])
    steady = median([x["msgs_per_s_after_first_dequeue"] for x in entry["runs"]["cli"]
                     if x.get("complete") and x.get("msgs_per_s_after_first_dequeue")])
    entry["median_msgs_per_s"] = rates
    entry["median_msgs_per_s_after_first_dequeue"] = steady
    entry["ratio_to_sql_drain"] = ratio(rates["cli"], rates["sql"])
    entry["ratio_to_sql_drain_after_first_dequeue"] = ratio(steady, rates["sql"])
    s1 = ctx.results.get("drain", {}).get("S1", {}).get("median_msgs_per_s", {}).get("hydramq")
    entry["drain_phase_s1_msgs_per_s"] = s1
    entry["ratio_to_drain_phase_s1"] = ratio(rates["cli"], s1)
    entry["round_ratios"] = [ratio(c.get("msgs_per_s"), s.get("msgs_per_s"))
                             for c, s in zip(entry["runs"]["cli"], entry["runs"]["sql"],
                                             strict=False)]
    fmt = (lambda v: "n/a" if v is None else f"{v:,.0f}")  # noqa: E731
    fr = (lambda v: "n/a" if v is None else f"{v:.2f}x")  # noqa: E731
    entry["summary"] = [
        {"system": f"CLI worker x{sz.e2e_processes}", "msgs": sz.e2e_messages,
         "msgs_per_s": fmt(rates["cli"]), "vs_sql_drain": fr(entry["ratio_to_sql_drain"]),
         "after_startup": f"{fmt(steady)} ({fr(entry['ratio_to_sql_drain_after_first_dequeue'])})"},
        {"system": "SQL drain 2x10 ", "msgs": sz.e2e_messages, "msgs_per_s": fmt(rates["sql"])},
    ]
    entry["targets"] = [judge("e2e CLI worker / SQL drain", entry["ratio_to_sql_drain"], 0.5)]


# --------------------------------------------------------------------------------------------
# the cost of NOTIFY on enqueue
# --------------------------------------------------------------------------------------------
class IdleListener:
    """What an idle worker leaves behind: a connection that LISTENs on hydra_enqueue and is
    registered with ``hydra.worker_idle``, so every enqueue into the queue NOTIFYs. Unlike a
    real worker it never gets busy (never unregisters): the worst case. A thread consumes
    the notifications, as a worker would."""

    def __init__(self, dsn: str, queue: str) -> None:
        self.conn = psycopg.connect(dsn, autocommit=True)
        self.conn.execute("LISTEN hydra_enqueue")
        self.conn.execute("SELECT hydra.worker_idle(ARRAY[%s])", (queue,))
        self.received = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._consume, daemon=True)
        self._thread.start()

    def _consume(self) -> None:
        while not self._stop.is_set():
            for _ in self.conn.notifies(timeout=0.2):
                self.received += 1

    def close(self) -> int:
        self._stop.set()
        self._thread.join(5)
        try:
            self.conn.execute("SELECT hydra.worker_busy()")
        finally:
            self.conn.close()
        return self.received


NOTIFY_SETUPS = {
    # key: (label, what runs beside the producers)
    "idle_worker": "idle worker registered",
    "no_worker": "no worker",
    "worker_listen": "CLI worker, LISTEN",
    "worker_poll": "CLI worker, --no-listen",
}
WORKER_READY = ("SELECT count(*) FROM pg_catalog.pg_stat_activity WHERE datname = "
                "current_database() AND application_name LIKE 'hydramq-worker%%' "
                "AND query LIKE '%%dequeue%%'")


def wait_worker_ready(conn: psycopg.Connection, worker: CliWorker, timeout: float = 60.0) -> None:
    """Until the worker's pool connection has run a dequeue (it is up and polling/idle)."""
    deadline = time.monotonic() + timeout
    while True:
        row = conn.execute(WORKER_READY).fetchone()
        if row and row[0]:
            return
        if not worker.alive():
            raise RuntimeError(f"worker exited ({worker.exit_code()}): {worker.log_tail()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"worker not ready after {timeout:.0f}s: {worker.log_tail()}")
        time.sleep(0.05)


def run_notify(ctx: Context, conn: psycopg.Connection, setup: str, round_no: int,
               extra: dict[str, Any], tmp: Path) -> RunResult:
    seconds = ctx.sizes.enqueue_seconds
    ctx.progress.start(f"notify: {NOTIFY_SETUPS[setup]} r{round_no + 1}")
    purge_hydramq(conn)
    stale = conn.execute("DELETE FROM hydra.waiting_worker").rowcount  # nobody else is idle
    settle(conn)
    listener = IdleListener(ctx.dsn, QUEUE) if setup == "idle_worker" else None
    worker = None
    if setup in ("worker_listen", "worker_poll"):
        worker = CliWorker(ctx.dsn, "hydramq.demo_tasks:noop", QUEUE, slots=10,
                           listen=setup == "worker_listen", logdir=tmp)
    received = 0
    try:
        if worker is not None:
            ctx.progress.update("starting the worker (untimed)", force=True)
            worker.start()
            wait_worker_ready(conn, worker)
        row = conn.execute("SELECT count(*) FROM hydra.waiting_worker WHERE queue = %s",
                           (QUEUE,)).fetchone()
        registered = int(row[0]) if row else 0
        res = enqueue_for(ctx.dsn, "hydramq_one", seconds, ctx.progress,
                          ENQUEUE_CONNECTIONS_PER_PROCESS)
    finally:
        if listener is not None:
            received = listener.close()
        code = worker.stop() if worker is not None else None
    left = conn.execute(COUNT_QUEUE, (QUEUE,)).fetchone()
    extra.update(registered_idle_workers_at_start=registered, stale_registrations_removed=stale,
                 left_in_queue=int(left[0]) if left else None)
    if listener is not None:
        extra["notifications_received"] = received
    if worker is not None:
        extra.update(worker_command=worker.command, worker_exit_code=code)
    status = f"{res.rate:>9,.0f} msgs/s  ({res.messages:,} in {seconds:.0f}s"
    status += f"; {received:,} notifications)" if listener is not None else ")"
    if res.errors:
        status += f"  ERROR: {res.errors[0].strip().splitlines()[-1]}"
    ctx.progress.done(status)
    return res


@phase("notify", "NOTIFY cost: single enqueue, 2 processes x 4 connections; idle worker "
                 "registered vs none, and a real worker with LISTEN vs --no-listen")
def notify_phase(ctx: Context) -> None:
    if not ctx.hydramq:
        ctx.results["notify"] = {"skipped": "hydramq extension not available"}
        return
    entry: dict[str, Any] = {
        "params": {"seconds": ctx.sizes.enqueue_seconds, "processes": 2,
                   "connections_per_process": ENQUEUE_CONNECTIONS_PER_PROCESS,
                   "statement": "hydra.enqueue, 1 message per transaction (enqueue phase)",
                   "idle_worker": "one connection: LISTEN hydra_enqueue + "
                                  "hydra.worker_idle(ARRAY['bench']), registered throughout "
                                  "(every enqueue NOTIFYs: the worst case)",
                   "no_worker": "nothing registered (no enqueue NOTIFYs)",
                   "worker_listen / worker_poll": "hydramq worker hydramq.demo_tasks:noop "
                                                  "--slots 10 consuming the queue, with "
                                                  "LISTEN / with --no-listen"},
        "runs": {k: [] for k in NOTIFY_SETUPS}}
    ctx.results["notify"] = entry
    setups = list(NOTIFY_SETUPS)
    with tempfile.TemporaryDirectory(prefix="hydramq-bench-notify-") as tmpdir, \
            psycopg.connect(ctx.dsn, autocommit=True) as conn:
        for r in range(ctx.sizes.rounds):
            # pairs stay adjacent; within a pair the order alternates by round
            order = setups if r % 2 == 0 else [setups[1], setups[0], setups[3], setups[2]]
            for setup in order:
                extra: dict[str, Any] = {}
                res = guarded(ctx, conn, "hydramq", run_notify, ctx, conn, setup, r, extra,
                              Path(tmpdir))
                entry["runs"][setup].append(res.as_dict() | extra)
        purge_hydramq(conn)
    rates = {k: median([x["msgs_per_s"] for x in runs if x["complete"]])
             for k, runs in entry["runs"].items()}
    entry["median_msgs_per_s"] = rates
    entry["ratio_idle_worker_to_none"] = ratio(rates["idle_worker"], rates["no_worker"])
    entry["ratio_listen_to_poll_worker"] = ratio(rates["worker_listen"], rates["worker_poll"])
    entry["round_ratios_idle_worker_to_none"] = [
        ratio(a["msgs_per_s"], b["msgs_per_s"]) for a, b in
        zip(entry["runs"]["idle_worker"], entry["runs"]["no_worker"], strict=False)]
    entry["round_ratios_listen_to_poll_worker"] = [
        ratio(a["msgs_per_s"], b["msgs_per_s"]) for a, b in
        zip(entry["runs"]["worker_listen"], entry["runs"]["worker_poll"], strict=False)]
    fmt = (lambda v: "n/a" if v is None else f"{v:,.0f}")  # noqa: E731
    fr = (lambda v: "n/a" if v is None else f"{v:.2f}x")  # noqa: E731
    r1, r2 = entry["ratio_idle_worker_to_none"], entry["ratio_listen_to_poll_worker"]
    entry["summary"] = [
        {"setup": "idle worker registered", "msgs_per_s": fmt(rates["idle_worker"]),
         "vs": f"none {fmt(rates['no_worker'])}", "ratio": fr(r1),
         "notifications": sum(x.get("notifications_received", 0)
                              for x in entry["runs"]["idle_worker"])},
        {"setup": "CLI worker LISTEN     ", "msgs_per_s": fmt(rates["worker_listen"]),
         "vs": f"--no-listen {fmt(rates['worker_poll'])}", "ratio": fr(r2)}]
    entry["targets"] = [judge("notify idle-worker/none enqueue", r1, 0.9),
                        judge("notify CLI LISTEN/no-listen enq", r2, 0.9)]


# The flows ablation (issue 3) lives in ablation.py; importing it registers its phase after
# the ones above (bench.py loads bench/*_phases.py modules only).
import ablation  # noqa: E402,F401
