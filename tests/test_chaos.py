"""Chaos: real worker and coordinator processes drain a queue while their processes are
SIGKILLed, their server sessions terminated and the server itself crashed (issue 9).

Thousands of messages over 50 channels (some capped, every one with ``num_attempts => 3`` and
a handler that fails ~10% of attempts, tests/chaos_tasks.py) are drained by two ``hydramq
worker`` processes and a ``hydramq coordinator``, while

* a worker is SIGKILLed a dozen times, each time while it holds messages, and restarted;
* every worker session is terminated with ``pg_terminate_backend`` every few kills;
* PostgreSQL is stopped with ``-m immediate`` and started again on the same port.

The server is this module's own (the crash would take the suite's server down with it) and
runs with ``fsync`` on: with it off a crash may lose committed transactions, which no queue
could survive. At the end:

* none lost: every message completed (its row is gone after a handler succeeded) or failed
  after its three attempts; nothing else is left;
* attempts: no attempt of a message was delivered twice (a lease belongs to one attempt), a
  failed message used all three, and each attempt that neither completed nor failed by its
  handler was consumed by a fault: its worker was killed, or its lease had expired before the
  next delivery started;
* every killed worker held leased messages when it died, and each came back on a later attempt
  (or failed, when it was the last one): the faults hit work;
* caps: sampled during the whole run, no capped channel ever had more messages processing, or
  slots held, than its ``max_concurrency``;
* the daemons reconnected by themselves: the workers alive before a termination round or the
  crash, and the coordinator, are the same processes afterwards, still taking work, and stop
  cleanly (exit 0).

CI runs a bounded plan (~4,000 messages, 12 kills, one crash); ``HYDRAMQ_CHAOS=long`` runs a
long one (20,000 messages, 48 kills, three crashes). Every wait is a bounded poll.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from chaos_tasks import FAILURE, fails, pace
from helpers import CAP_VIOLATIONS
from psycopg import sql
from test_driver_daemons import Daemon, wait_until

from hydramq import Client
from hydramq.server import LocalServer, _log_tail, _run, start_server

Conn = psycopg.Connection[Any]


@dataclass(frozen=True)
class Plan:
    messages: int
    channels: int
    capped: int  # channels c00.. with max_concurrency 1, 2 or 3
    kills: int
    terminate_every: int  # kills between two pg_terminate_backend rounds
    crashes: int
    slots: int  # per worker


LONG = os.environ.get("HYDRAMQ_CHAOS", "").strip().lower() == "long"
PLAN = (
    Plan(messages=20_000, channels=50, capped=10, kills=48, terminate_every=4, crashes=3, slots=8)
    if LONG
    else Plan(messages=4_000, channels=50, capped=10, kills=12, terminate_every=4, crashes=1,
              slots=8)
)  # fmt: skip
NUM_ATTEMPTS = 3
LEASE_SECS = 3  # max_processing_secs: how long a killed worker's messages wait for expiry
LEASE_EXPIRED = "lease expired"  # last_error of an attempt ended by lease expiry


# -- the server ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chaos_server() -> Iterator[LocalServer]:
    """A throwaway server of the suite's kind, crash-safe (fsync on)."""
    if os.environ.get("DATABASE_URL"):
        pytest.skip("the chaos tests crash their server: they need a throwaway one")
    kind = os.environ.get("HYDRAMQ_TEST_SERVER", "embedded").strip() or "embedded"
    if kind not in ("embedded", "debian"):
        pytest.skip(f"HYDRAMQ_TEST_SERVER={kind}: chaos runs in the embedded and debian runs")
    server = start_server(kind, fsync=True)
    try:
        server.install_extension_files()
        yield server
    finally:
        server.stop()


@pytest.fixture
def chaos_dsn(chaos_server: LocalServer) -> str:
    """A database of this test's own on the chaos server, with the extension."""
    name = f"chaos_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(chaos_server.dsn(), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    with psycopg.connect(chaos_server.dsn(name), autocommit=True) as conn:
        conn.execute("CREATE EXTENSION hydramq")
    return chaos_server.dsn(name)


def crash_and_restart(server: LocalServer) -> None:
    """``pg_ctl stop -m immediate`` (no shutdown checkpoint: crash recovery on start), then
    start it again on the same port, so that the daemons' DSN still reaches it."""
    # The server module runs pg_ctl as the OS user that owns the data directory.
    user = server._os_user
    ctl: list[str | Path] = [server.bindir / "pg_ctl", "-D", server.datadir, "-w", "-t", "60"]
    stopped = _run([*ctl, "stop", "-m", "immediate"], user, timeout=90)
    assert stopped.returncode == 0, stopped.stdout
    started = _run(
        [*ctl, "-l", server.log_file, "-o", f"-p {server.port}", "start"], user, timeout=90
    )
    assert started.returncode == 0, f"{started.stdout}\n{_log_tail(server.log_file)}"


class Admin:
    """The test's own session; reconnects (bounded) across terminations and the crash."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.conn: Conn | None = None

    def rows(self, query: str, params: tuple[Any, ...] = (), timeout: float = 60) -> list[Any]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.conn is None or self.conn.closed:
                    self.conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=5)
                return self.conn.execute(query, params).fetchall()  # type: ignore[arg-type]
            except psycopg.OperationalError:
                if self.conn is not None:
                    self.conn.close()
                self.conn = None
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def one(self, query: str, params: tuple[Any, ...] = ()) -> Any:
        return self.rows(query, params)[0][0]

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


# -- what the handlers logged --------------------------------------------------------------


@dataclass
class Delivery:
    id: int
    attempt: int
    pid: int
    started: float  # wall clock
    lease_expires: float  # as leased (heartbeats never run: handlers take < 50 ms)
    outcome: str | None = None  # 'ok' / 'fail' / None: never ended (its worker was killed)


class HandlerLog:
    """The handlers' logs, read incrementally (polls stay cheap as the logs grow)."""

    def __init__(self, workdir: Path) -> None:
        self.ends_path, self.starts_path = workdir / "ends.log", workdir / "starts.log"
        self._offsets = {self.ends_path: 0, self.starts_path: 0}
        self._rest = {self.ends_path: b"", self.starts_path: b""}
        self._by_key: dict[tuple[int, int, int], Delivery] = {}

    def _new_lines(self, path: Path) -> list[str]:
        if not path.exists():
            return []
        with path.open("rb") as f:
            f.seek(self._offsets[path])
            data = self._rest[path] + f.read()
            self._offsets[path] = f.tell()
        complete, _, self._rest[path] = data.rpartition(b"\n")  # a line being written waits
        return complete.decode().splitlines()

    def read(self) -> list[Delivery]:
        """Every delivery so far, oldest first."""
        # Ends first: a handler logs its start before its end, so every end read has its start.
        ends = self._new_lines(self.ends_path)
        for line in self._new_lines(self.starts_path):
            mid, attempt, pid, t, expires = line.split()
            d = Delivery(int(mid), int(attempt), int(pid), float(t), float(expires))
            self._by_key[(d.id, d.attempt, d.pid)] = d
        for line in ends:
            mid, attempt, pid, outcome = line.split()
            self._by_key[(int(mid), int(attempt), int(pid))].outcome = outcome
        return sorted(self._by_key.values(), key=lambda d: d.started)

    def running_until(self, pid: int, since: float, margin: float) -> list[Delivery]:
        """Handlers of worker ``pid``, started after ``since``, that will still be running
        ``margin`` seconds from now (their pace is known: chaos_tasks.pace)."""
        self.read()
        now = time.time()
        return [
            d for d in self._by_key.values()
            if d.pid == pid and d.outcome is None and d.started > since
            and d.started + pace(d.id, d.attempt) > now + margin
        ]  # fmt: skip


# -- the run -------------------------------------------------------------------------------


@dataclass
class CapSampler:
    """Samples the cap invariant (tests/helpers.py CAP_VIOLATIONS) until stopped."""

    dsn: str
    samples: int = 0
    busy_samples: int = 0  # samples that saw a capped channel at its cap
    violations: list[Any] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        admin = Admin(self.dsn)
        try:
            while not self.stop.is_set():
                try:
                    found = admin.rows(CAP_VIOLATIONS, timeout=1)
                    full = admin.one(
                        "SELECT count(*) FROM hydra.channel_limit"
                        " WHERE max_concurrency IS NOT NULL AND in_flight = max_concurrency"
                    )
                except psycopg.Error:
                    continue  # the server is down: sample again once it is back
                self.samples += 1
                self.busy_samples += bool(full)
                self.violations += found
                self.stop.wait(0.02)
        finally:
            admin.close()


def worker_sessions(admin: Admin, pid: int) -> int:
    return int(admin.one(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name IN (%s, %s)",
        (f"hydramq-worker-{pid}", f"hydramq-worker-{pid}-listen"),
    ))  # fmt: skip


def test_chaos_loses_nothing_and_explains_every_redelivery(
    chaos_server: LocalServer, chaos_dsn: str, tmp_path: Path
) -> None:
    dsn = chaos_dsn
    admin = Admin(dsn)
    channels = [f"c{i:02d}" for i in range(PLAN.channels)]
    caps = {ch: 1 + i % 3 for i, ch in enumerate(channels[: PLAN.capped])}
    for ch, cap in caps.items():
        admin.rows("SELECT hydra.channel_policy_set(%s, max_concurrency => %s)", (ch, cap))
    ids: list[int] = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        client = Client(conn)
        for lo in range(0, PLAN.messages, 1000):
            batch = [
                {"payload": {"n": n}, "channel": channels[n % PLAN.channels]}
                for n in range(lo, min(lo + 1000, PLAN.messages))
            ]
            results = client.enqueue_many(
                batch, num_attempts=NUM_ATTEMPTS, lock_secs=0.1, max_processing_secs=LEASE_SECS
            )
            ids += [r.message_id for r in results if r.message_id is not None]
    assert len(ids) == PLAN.messages

    handlers = HandlerLog(tmp_path)
    sampler = CapSampler(dsn)
    sampling = threading.Thread(target=sampler.run, name="cap-sampler", daemon=True)
    sampling.start()
    daemons: list[Daemon] = []

    def spawn(*args: str) -> Daemon:
        d = Daemon(list(args), dsn, tmp_path, f"{args[0]}-{len(daemons)}")
        daemons.append(d)
        return d

    def start_worker() -> Daemon:
        return spawn("worker", "chaos_tasks:handle", "--slots", str(PLAN.slots))

    def busy(worker: Daemon, since: float, before: str) -> None:
        """Wait until ``worker`` runs a handler, started after ``since``, that is sure to be
        running still when the fault hits: it holds that lease then."""
        wait_until(
            lambda: bool(handlers.running_until(worker.proc.pid, since, margin=0.1)), 30,
            f"worker {worker.proc.pid} to be running handlers before {before}; if the queue"
            " drained before the faults ran out, pace the handler or enqueue more",
            interval=0.01,
        )  # fmt: skip

    held_at_kill: dict[int, dict[int, int]] = {}  # killed pid -> {message id: attempt held}
    survivors: list[tuple[str, float, list[Daemon]]] = []  # (fault, when, workers alive across)
    terminated = 0
    last_fault = 0.0
    try:
        coordinator = spawn("coordinator", "--interval", "0.1")
        workers = [start_worker(), start_worker()]
        crash_after = {
            PLAN.kills * (i + 1) // (PLAN.crashes + 1) for i in range(PLAN.crashes)
        }  # fmt: skip
        for k in range(1, PLAN.kills + 1):
            slot = k % 2
            victim = workers[slot]
            # Kill it while handlers of its own, started since the last fault, are running: it
            # holds leases (and has taken work again after that fault).
            busy(victim, last_fault, f"kill {k}")
            victim.proc.kill()
            victim.wait(10)
            # Its sessions may still be committing a dequeue or an acknowledgement sent just
            # before the kill: read what it held only once they have ended.
            wait_until(lambda v=victim: worker_sessions(admin, v.proc.pid) == 0, 15,
                       "the killed worker's sessions to end")
            attempts_by_id = {d.id: d.attempt for d in handlers.read()
                              if d.pid == victim.proc.pid}
            processing = admin.rows(
                "SELECT id, attempt FROM hydra.message WHERE state = 'processing'"
                " AND id = ANY(%s)", (list(attempts_by_id),))
            held = {mid: a for mid, a in processing if attempts_by_id[mid] == a}
            assert held, f"kill {k}: worker {victim.proc.pid} held no message when it died"
            held_at_kill[victim.proc.pid] = held
            workers[slot] = start_worker()

            if k % PLAN.terminate_every == 0:
                # Terminate every worker session (not the coordinator's) while work is leased.
                for w in workers:
                    busy(w, last_fault, f"pg_terminate_backend after kill {k}")
                leased = admin.one("SELECT count(*) FROM hydra.message WHERE state = 'processing'")
                n = admin.one(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE application_name LIKE 'hydramq-worker-%%'"
                    " AND datname = current_database()")
                assert n >= 2 and leased > 0, (n, leased)
                terminated += n
                last_fault = time.time()
                survivors.append(("pg_terminate_backend", last_fault, list(workers)))
            if k in crash_after:
                for w in workers:
                    busy(w, last_fault, f"the crash after kill {k}")
                leased = admin.one("SELECT count(*) FROM hydra.message WHERE state = 'processing'")
                assert leased > 0, "the server crash must hit leased work"
                last_fault = time.time()
                crash_and_restart(chaos_server)
                survivors.append(("crash", last_fault, list(workers)))
            time.sleep(0.2)

        wait_until(
            lambda: admin.one("SELECT count(*) FROM hydra.message WHERE state <> 'failed'") == 0,
            120, "every message to complete or fail", interval=0.2,
        )  # fmt: skip
        for d in (*workers, coordinator):
            assert d.alive(), d.log
            d.signal(signal.SIGTERM)
        for d in (*workers, coordinator):
            assert d.wait(30) == 0, d.log
    finally:
        sampler.stop.set()
        sampling.join(10)
        for d in daemons:
            if d.alive():
                d.proc.kill()
                d.proc.wait()

    # -- none lost, attempts as they say ------------------------------------------------------
    failed = {r[0]: (r[1], r[2]) for r in admin.rows(
        "SELECT id, attempt, last_error FROM hydra.message WHERE state = 'failed'")}
    remaining = admin.one("SELECT count(*) FROM hydra.message")
    assert remaining == len(failed), "a message was left neither completed nor failed"
    log = handlers.read()
    by_id: dict[int, list[Delivery]] = defaultdict(list)
    for d in log:
        by_id[d.id].append(d)
    assert set(by_id) | set(failed) == set(ids), "a message was never delivered nor failed"
    killed = set(held_at_kill)
    redelivered = {"kill": 0, "expired lease": 0}
    for mid in ids:
        ds = sorted(by_id[mid], key=lambda d: d.attempt)
        attempts = [d.attempt for d in ds]
        assert len(attempts) == len(set(attempts)), f"message {mid}: an attempt ran twice {ds}"
        assert all(1 <= a <= NUM_ATTEMPTS for a in attempts), ds
        for d in ds:
            assert d.outcome == ("fail" if fails(mid, d.attempt) else "ok") or (
                d.outcome is None and d.pid in killed
            ), f"message {mid}: {d} ended unlike its handler says"
        for d, nxt in zip(ds, ds[1:], strict=False):
            if d.outcome == "fail":
                continue  # a retry: its handler failed
            # Delivered again although its handler did not fail: explained by a kill of its
            # worker or by the lease having expired before the next delivery began.
            if d.pid in killed:
                redelivered["kill"] += 1
            else:
                assert nxt.started >= d.lease_expires, (
                    f"message {mid} re-delivered while its lease was live: {d} then {nxt}")
                redelivered["expired lease"] += 1
        if mid in failed:
            attempt, error = failed[mid]
            assert attempt == NUM_ATTEMPTS, f"message {mid} failed after {attempt} attempt(s)"
            last = ds[-1] if ds and ds[-1].attempt == NUM_ATTEMPTS else None
            if last is not None and last.outcome == "fail":
                # Its handler's failure, or the lease expired before that failure was stored.
                assert FAILURE in (error or "") or error == LEASE_EXPIRED, (mid, error)
            else:  # its last attempt was never settled by a handler: a kill or lost lease
                assert error == LEASE_EXPIRED, (mid, error, ds)
        else:
            assert ds and ds[-1].outcome == "ok", f"message {mid} completed without a success {ds}"

    # -- the faults hit work ------------------------------------------------------------------
    assert len(held_at_kill) == PLAN.kills
    for pid, held in held_at_kill.items():
        for mid, attempt in held.items():
            later = [d.attempt for d in by_id[mid] if d.attempt > attempt]
            assert later or (mid in failed and attempt == NUM_ATTEMPTS), (
                f"message {mid}, held by killed worker {pid} at attempt {attempt}, never came back")

    # -- caps ---------------------------------------------------------------------------------
    assert sampler.violations == [], sampler.violations[:10]
    assert sampler.samples >= 20 and sampler.busy_samples > 0, vars(sampler)

    # -- the daemons reconnected by themselves ------------------------------------------------
    # Every worker alive across a fault (killed or not later on) took work after it, with the
    # connections it re-opened itself; the coordinator ran from start to end.
    for fault, when, alive in survivors:
        for w in alive:
            assert any(d.pid == w.proc.pid and d.started > when for d in log), (
                f"worker {w.proc.pid} took no work after the {fault}:\n{w.log[-3000:]}")
            if fault == "crash":
                assert "reachable again" in w.log, w.log[-3000:]
    assert "reachable again" in coordinator.log, coordinator.log[-3000:]

    completed = len(ids) - len(failed)
    print(
        f"\nchaos: {len(ids)} messages, {completed} completed, {len(failed)} failed;"
        f" {len(log)} deliveries, {sum(d.outcome == 'fail' for d in log)} handler failures;"
        f" re-delivered after a kill {redelivered['kill']}, after an expired lease"
        f" {redelivered['expired lease']}; {PLAN.kills} kills holding"
        f" {sum(map(len, held_at_kill.values()))} messages, {terminated} sessions terminated,"
        f" {PLAN.crashes} crash(es); {sampler.samples} cap samples"
        f" ({sampler.busy_samples} with a channel at its cap)"
    )
    admin.close()



def test_a_message_that_kills_every_worker_is_delivered_num_attempts_times_then_fails(
    chaos_dsn: str, tmp_path: Path
) -> None:
    """The bound on a message that keeps killing its workers (SPEC section 6): each expired
    lease is a failed attempt, so it is delivered at most ``num_attempts`` times, then failed
    with 'lease expired'; the messages its workers held alongside it are all served."""
    admin = Admin(dsn := chaos_dsn)
    options: dict[str, Any] = {"lock_secs": 0.1, "max_processing_secs": 1}
    with psycopg.connect(dsn, autocommit=True) as conn:
        client = Client(conn)
        poison = client.enqueue(
            {"die": True}, channel="poison", num_attempts=NUM_ATTEMPTS, **options
        ).message_id
        # Leased next to the poison, they lose an attempt each time it kills their worker.
        normal = [r.message_id for r in client.enqueue_many(
            [{"payload": {"n": n}, "channel": "ok"} for n in range(30)], num_attempts=10,
            **options)]
    daemons = [Daemon(["coordinator", "--interval", "0.1"], dsn, tmp_path, "coordinator")]
    try:
        def poison_state() -> str:
            return str(admin.one("SELECT state FROM hydra.message WHERE id = %s", (poison,)))

        for i in range(NUM_ATTEMPTS + 1):  # bounded: one more round than it may take
            wait_until(lambda: poison_state() != "processing", 30, "the poison's lease to end")
            if poison_state() == "failed":
                break
            w = Daemon(["worker", "chaos_tasks:handle", "--slots", "4"], dsn, tmp_path,
                       f"worker-{i}")
            daemons.append(w)
            wait_until(lambda w=w: not w.alive(), 30, "the poison message to kill its worker")
        state, attempt, error = admin.rows(
            "SELECT state, attempt, last_error FROM hydra.message WHERE id = %s", (poison,))[0]
        assert (state, attempt, error) == ("failed", NUM_ATTEMPTS, LEASE_EXPIRED)
        handlers = HandlerLog(tmp_path)
        runs = [d for d in handlers.read() if d.id == poison]
        assert [d.attempt for d in runs] == list(range(1, NUM_ATTEMPTS + 1))
        killed = {w.proc.pid for w in daemons[1:] if w.proc.poll() == -signal.SIGKILL}
        assert {d.pid for d in runs} == killed and len(killed) == NUM_ATTEMPTS
        # The poison never runs again; a healthy worker drains what the dead ones held.
        w = Daemon(["worker", "chaos_tasks:handle", "--slots", "4"], dsn, tmp_path, "drain")
        daemons.append(w)
        wait_until(lambda: admin.one("SELECT count(*) FROM hydra.message") == 1
                   and "started" in w.log, 30, "the other messages to complete")
        for d in (w, daemons[0]):
            d.signal(signal.SIGTERM)
            assert d.wait(20) == 0, d.log
        log = handlers.read()
        assert {d.id for d in log if d.outcome == "ok"} >= set(normal)
        assert len([d for d in log if d.id == poison]) == NUM_ATTEMPTS
    finally:
        admin.close()
        for d in daemons:
            if d.alive():
                d.proc.kill()
                d.proc.wait()
