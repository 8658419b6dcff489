"""Worker and coordinator daemons as operators run them: real processes started through the CLI
(``python -m hydramq.cli worker|coordinator``) against the test server.

Handlers and event recorders live in ``tests/driver_tasks.py``; they log each handler start
and end and each event to files, which the tests read. Every wait is bounded.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from hydramq import Client

Conn = psycopg.Connection[Any]
TESTS = Path(__file__).resolve().parent


class Daemon:
    """One ``hydramq`` CLI process with its own log file."""

    def __init__(self, args: list[str], dsn: str, workdir: Path, name: str) -> None:
        self.log_path = workdir / f"{name}.log"
        env = {
            **os.environ,
            "DATABASE_URL": dsn,
            "DRIVER_TASKS_DIR": str(workdir),
            "PYTHONPATH": os.pathsep.join(
                p for p in (str(TESTS), os.environ.get("PYTHONPATH")) if p
            ),
        }
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "hydramq.cli", "-v", *args],
                env=env, stdout=log, stderr=subprocess.STDOUT, cwd=workdir,
            )

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            msg = f"process did not exit within {timeout}s; log:\n{self.log}"
            raise AssertionError(msg) from None

    def alive(self) -> bool:
        return self.proc.poll() is None


@pytest.fixture
def spawn(dsn: str, tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    started: list[Daemon] = []

    def factory(*args: str, name: str = "daemon") -> Daemon:
        d = Daemon(list(args), dsn, tmp_path, f"{name}-{len(started)}")
        started.append(d)
        return d

    yield factory
    for d in started:
        if d.alive():
            d.proc.kill()
            d.proc.wait()


def wait_until(cond: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def _records(path: Path) -> list[tuple[int, int, int]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        mid, attempt, pid = line.split()
        out.append((int(mid), int(attempt), int(pid)))
    return out


def starts(workdir: Path) -> list[tuple[int, int, int]]:
    return _records(workdir / "starts.log")


def ends(workdir: Path) -> list[tuple[int, int, int]]:
    return _records(workdir / "ends.log")


def count(conn: Conn, where: str = "true", params: tuple[Any, ...] = ()) -> int:
    row = conn.execute(f"SELECT count(*) FROM hydra.message WHERE {where}", params).fetchone()
    assert row is not None
    return int(row[0])


def enqueue(conn: Conn, n: int, queue: str = "default", **options: Any) -> list[int]:
    payload = options.pop("payload", {})
    results = Client(conn).enqueue_many([{"payload": payload}] * n, queue=queue, **options)
    return [r.message_id for r in results if r.message_id is not None]


def worker_sessions(conn: Conn) -> list[int]:
    return [r[0] for r in conn.execute(
        "SELECT pid FROM pg_stat_activity WHERE application_name LIKE 'hydramq-worker%%'"
        " AND datname = current_database()")]


# -- graceful and forced stops -------------------------------------------------------------


def test_sigterm_mid_load_finishes_in_flight_messages_and_loses_none(
    db: Conn, spawn: Callable[..., Daemon], tmp_path: Path
) -> None:
    ids = enqueue(db, 120, payload={"sleep": 0.2})
    w = spawn("worker", "driver_tasks:handle", "--slots", "10", name="worker")
    wait_until(lambda: len(ends(tmp_path)) >= 20, 20, "20 handlers to finish")
    w.signal(signal.SIGTERM)
    assert w.wait(20) == 0, w.log
    started = {(m, a) for m, a, _ in starts(tmp_path)}
    assert started == {(m, a) for m, a, _ in ends(tmp_path)}, "an in-flight handler was cut off"
    assert count(db, "state = 'processing'") == 0, "an in-flight message was not acknowledged"
    assert count(db) == len(ids) - len(started)  # finished ones are gone, the rest untouched
    assert count(db, "state = 'ready'") == len(ids) - len(started)
    assert "finishing in-flight work" in w.log

    w2 = spawn("worker", "driver_tasks:handle", "--slots", "20", name="worker2")
    wait_until(lambda: count(db) == 0, 30, "the rest to be processed")
    w2.signal(signal.SIGINT)
    assert w2.wait(20) == 0, w2.log
    processed = [m for m, _, _ in starts(tmp_path)]
    assert sorted(set(processed)) == sorted(ids)
    assert len(processed) == len(ids), "a message was processed twice after a graceful stop"


def test_second_signal_stops_at_once_leaving_messages_to_lease_expiry(
    db: Conn, spawn: Callable[..., Daemon], tmp_path: Path
) -> None:
    enqueue(db, 3, payload={"sleep": 30})
    w = spawn("worker", "driver_tasks:handle_sync", "--slots", "3", name="worker")
    wait_until(lambda: len(starts(tmp_path)) == 3, 15, "3 handlers to start")
    w.signal(signal.SIGTERM)
    time.sleep(0.3)
    assert w.alive()  # graceful: waiting for its 30 s handlers
    t0 = time.monotonic()
    w.signal(signal.SIGTERM)
    code = w.wait(10)
    assert code != 0 and time.monotonic() - t0 < 5, w.log
    assert count(db, "state = 'processing'") == 3  # left to lease expiry
    assert ends(tmp_path) == []


def test_sigkill_of_a_worker_mid_load_loses_no_message(
    db: Conn, spawn: Callable[..., Daemon], tmp_path: Path
) -> None:
    ids = enqueue(db, 80, payload={"sleep": 0.3}, max_processing_secs=1.5, num_attempts=3,
                  lock_secs=0.1)
    w = spawn("worker", "driver_tasks:handle", "--slots", "8", name="worker")
    wait_until(lambda: len(ends(tmp_path)) >= 10, 20, "10 handlers to finish")
    # Kill it while it holds leases (not in the instant between two batches).
    wait_until(lambda: count(db, "state = 'processing'") > 0, 10, "leases to be held")
    w.proc.kill()
    w.wait(5)
    # Its server sessions may still be committing a dequeue or an acknowledgement sent just
    # before the kill: look at what it held only once they have ended.
    wait_until(lambda: not worker_sessions(db), 10, "the killed worker's sessions to end")
    held = {r[0]: r[1] for r in db.execute(
        "SELECT id, attempt FROM hydra.message WHERE state = 'processing'")}
    assert held
    spawn("coordinator", "--interval", "0.1", name="coordinator")
    w2 = spawn("worker", "driver_tasks:handle", "--slots", "8", name="worker2")
    wait_until(lambda: count(db) == 0, 40, "every message to be processed")
    w2.signal(signal.SIGTERM)
    assert w2.wait(20) == 0, w2.log
    done = {m for m, _, _ in ends(tmp_path)}
    assert done == set(ids)
    # Every message the killed worker held came back on a later attempt.
    restarted = {m for m, a, _ in starts(tmp_path) if m in held and a > held[m]}
    assert restarted == set(held)


# -- failures ------------------------------------------------------------------------------


def test_a_raising_handler_fails_only_its_own_message(
    db: Conn, spawn: Callable[..., Daemon], tmp_path: Path
) -> None:
    client = Client(db)
    ok = enqueue(db, 30, payload={"sleep": 0.01})
    bad = [client.enqueue({"fail": "always"}, channel="bad").message_id for _ in range(3)]
    no_retry = client.enqueue({"fail": "no_retry"}, channel="bad", num_attempts=5).message_id
    retried = client.enqueue({"fail": "first"}, channel="bad", num_attempts=2,
                             lock_secs=0.1).message_id
    spawn("coordinator", "--interval", "0.1", name="coordinator")
    w = spawn("worker", "driver_tasks:handle", "--slots", "5", name="worker")
    wait_until(lambda: count(db, "state <> 'failed'") == 0, 30, "all messages to settle")
    w.signal(signal.SIGTERM)
    assert w.wait(20) == 0, w.log
    failed = {r[0] for r in db.execute("SELECT id FROM hydra.message WHERE state = 'failed'")}
    assert failed == {*bad, no_retry}
    attempts = defaultdict(list)
    for m, a, _ in starts(tmp_path):
        attempts[m].append(a)
    assert all(attempts[m] == [1] for m in ok)
    assert attempts[no_retry] == [1], "FailWithoutRetry must not use the remaining attempts"
    assert attempts[retried] == [1, 2]
    info = client.inspect(bad[0])
    assert info is not None and "RuntimeError" in (info.last_error or "")
    assert w.alive() is False and "handler failed for message" in w.log


# -- database outages ----------------------------------------------------------------------


def test_worker_survives_its_database_connections_being_killed(
    db: Conn, spawn: Callable[..., Daemon], tmp_path: Path
) -> None:
    ids = enqueue(db, 150, payload={"sleep": 0.05}, max_processing_secs=2, num_attempts=5,
                  lock_secs=0.1)
    spawn("coordinator", "--interval", "0.1", name="coordinator")
    w = spawn("worker", "driver_tasks:handle", "--slots", "5", name="worker")
    for _ in range(3):
        wait_until(lambda: len(worker_sessions(db)) >= 2, 10, "worker sessions")
        time.sleep(0.3)
        killed = db.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE application_name LIKE 'hydramq-worker%%' AND datname = current_database()"
        ).fetchone()
        assert killed and killed[0] >= 1
    wait_until(lambda: count(db) == 0, 45, "every message to be processed after the outages")
    assert w.alive(), w.log
    assert re.search(r"connection (problem|lost)|LISTEN connection", w.log), w.log
    w.signal(signal.SIGTERM)
    assert w.wait(20) == 0, w.log
    assert {m for m, _, _ in ends(tmp_path)} == set(ids)


# -- wake-ups ------------------------------------------------------------------------------


@pytest.mark.parametrize("listen", [True, False], ids=["listen", "polling"])
def test_idle_worker_picks_up_new_messages_woken_by_notify_or_by_polling(
    db: Conn, spawn: Callable[..., Daemon], tmp_path: Path, listen: bool
) -> None:
    # How fast a wake-up is, is measured by `make bench` (latency); this checks how it happens.
    # Listening, polls are rare (up to 30 s apart), so that a poll seldom finds a message first.
    args = ["worker", "driver_tasks:handle", "--poll-max", "30" if listen else "0.5"]
    if not listen:
        args.append("--no-listen")
    w = spawn(*args, name="worker")
    # Idle: with LISTEN the worker registers itself (enqueue NOTIFYs only then).
    waiting = "SELECT count(*) FROM hydra.waiting_worker"
    if listen:
        wait_until(lambda: (db.execute(waiting).fetchone() or [0])[0] == 1, 10,
                   "the worker to register as idle")
    else:
        time.sleep(1.0)
        assert (db.execute(waiting).fetchone() or [0])[0] == 0
    for i in range(5):
        if listen:
            # Each enqueue claims the registration it wakes; wait for the next one.
            wait_until(lambda: (db.execute(waiting).fetchone() or [0])[0] == 1, 10,
                       "the worker to register as idle again")
        Client(db).enqueue({"i": i})
        wait_until(lambda n=i + 1: len(starts(tmp_path)) == n, 10, "the handler to start",
                   interval=0.01)
    w.signal(signal.SIGTERM)
    assert w.wait(20) == 0, w.log
    found = re.search(r"notified=(\d+)", w.log)
    assert found, w.log
    if listen:
        assert int(found[1]) >= 5, w.log  # every message woke it by NOTIFY
    else:
        assert int(found[1]) == 0, w.log


def test_processes_option_runs_several_workers_and_stops_them_all(
    db: Conn, spawn: Callable[..., Daemon], tmp_path: Path
) -> None:
    ids = enqueue(db, 60, payload={"sleep": 0.05})
    w = spawn("worker", "driver_tasks:handle", "--processes", "2", "--slots", "4", name="sup")
    wait_until(lambda: count(db) == 0, 30, "all messages processed")
    pids = {pid for _, _, pid in starts(tmp_path)}
    assert len(pids) == 2, "both worker processes should have taken work"
    w.signal(signal.SIGTERM)
    assert w.wait(20) == 0, w.log
    assert {m for m, _, _ in ends(tmp_path)} == set(ids)
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


# -- events --------------------------------------------------------------------------------

# Per process and message, the events form these words (one letter per event).
LETTERS = {
    "MESSAGE_DEQUEUED": "D", "MESSAGE_PROCESSED_SUCCESS": "S", "MESSAGE_FINALIZED": "F",
    "MESSAGE_DELETED": "X", "MESSAGE_PROCESSED_FAIL": "P", "MESSAGE_LOCKED": "L",
    "MESSAGE_ATTEMPTS_EXHAUSTED": "E", "MESSAGE_UNLOCKED": "U", "MESSAGE_RELEASED": "R",
    "MESSAGE_DEPENDENCY_RESOLVED": "Y", "MESSAGE_DEPENDENCIES_UNMET": "N",
    "MESSAGE_ENQUEUED": "Q", "MESSAGE_DROPPED": "O",
}
WORKER_WORD = re.compile(r"^(DPL)*(DSFX|DPE?F)?$")
COORDINATOR_WORD = re.compile(r"^Y*(R|NF)?U*X?$")


def _events(workdir: Path) -> dict[int, list[dict[str, Any]]]:
    by_pid: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for path in workdir.glob("events-*.jsonl"):
        for line in path.read_text().splitlines():
            e = json.loads(line)
            by_pid[e["pid"]].append(e)
    return by_pid


def test_events_arrive_after_commit_in_a_valid_order_per_message(
    db: Conn, spawn: Callable[..., Daemon], tmp_path: Path
) -> None:
    client = Client(db)
    plain = enqueue(db, 10, payload={"sleep": 0.01})
    flaky = [client.enqueue({"fail": "first"}, num_attempts=2, lock_secs=0.3).message_id
             for _ in range(3)]
    doomed = client.enqueue({"fail": "always"}, num_attempts=2, lock_secs=0.1).message_id
    with db.transaction():
        parent = client.enqueue({"sleep": 0.2}).message_id
        child = client.enqueue({}, depends_on=[parent or 0]).message_id
        orphan = client.enqueue({}, depends_on=[doomed or 0]).message_id  # cascade: never runs
    on_event = ["--on-event", "driver_tasks:record_event",
                "--on-event", "driver_tasks:broken_subscriber"]
    c = spawn("coordinator", "--interval", "0.05", *on_event, name="coordinator")
    w = spawn("worker", "driver_tasks:handle", "--slots", "4", *on_event, name="worker")
    wait_until(lambda: count(db, "state <> 'failed'") == 0, 30, "all messages to settle")
    time.sleep(0.5)  # let the last events be written
    for d in (w, c):
        d.signal(signal.SIGTERM)
        assert d.wait(20) == 0, d.log
    assert "subscriber" in w.log and "subscriber bug" in w.log  # logged, not fatal

    by_pid = _events(tmp_path)
    roles = {w.proc.pid: "worker", c.proc.pid: "coordinator"}
    assert set(by_pid) == set(roles)
    words: dict[str, dict[int, str]] = {"worker": defaultdict(str), "coordinator": defaultdict(str)}
    for pid, evs in by_pid.items():
        role = roles[pid]
        assert [e["t"] for e in evs] == sorted(e["t"] for e in evs)
        for e in evs:
            assert e["committed"] is not False, f"{role} emitted {e} before its commit"
            words[role][e["id"]] += LETTERS[e["event"]]
    for mid, word in words["worker"].items():
        assert WORKER_WORD.match(word), f"worker events of message {mid}: {word}"
    for mid, word in words["coordinator"].items():
        assert COORDINATOR_WORD.match(word), f"coordinator events of message {mid}: {word}"

    ww, cw = words["worker"], words["coordinator"]
    for mid in [*plain, parent]:
        assert ww[mid] == "DSFX"
    for mid in flaky:
        assert ww[mid] == "DPLDSFX" and cw[mid] == "U"
    assert ww[doomed] == "DPLDPEF" and cw[doomed] == "U"
    assert cw[child] == "YR" and ww[child] == "DSFX"
    assert cw[orphan] == "YNF" and orphan not in ww
    finalized = [e for evs in by_pid.values() for e in evs if e["event"] == "MESSAGE_FINALIZED"]
    assert {e["id"]: e["detail"]["success"] for e in finalized if e["id"] == doomed} == {
        doomed: False}


def test_heartbeats_keep_a_long_handler_from_being_redelivered(
    db: Conn, spawn: Callable[..., Daemon], tmp_path: Path
) -> None:
    [mid] = enqueue(db, 1, payload={"sleep": 3.0}, max_processing_secs=1, num_attempts=3,
                    lock_secs=0.1)
    spawn("coordinator", "--interval", "0.1", name="coordinator")  # would expire the lease
    w = spawn("worker", "driver_tasks:handle", "--slots", "2", name="worker")
    wait_until(lambda: count(db) == 0, 15, "the long message to complete")
    w.signal(signal.SIGTERM)
    assert w.wait(20) == 0, w.log
    assert starts(tmp_path) == [(mid, 1, w.proc.pid)], "the lease expired despite heartbeats"
    assert "lease lost" not in w.log and "refused" not in w.log
    assert f"lease of message {mid} extended" in w.log


@pytest.mark.parametrize("command", [["worker", "driver_tasks:handle"], ["coordinator"]])
def test_daemons_wait_for_an_unreachable_database_instead_of_exiting(
    tmp_path: Path, command: list[str]
) -> None:
    d = Daemon([*command, "--dsn", "host=127.0.0.1 port=1 connect_timeout=1"],
               "host=127.0.0.1 port=1", tmp_path, "daemon")
    try:
        wait_until(lambda: "retrying in" in d.log, 15, "a logged retry")
        assert d.alive(), d.log
        d.signal(signal.SIGTERM)
        assert d.wait(15) == 0, d.log
    finally:
        if d.alive():
            d.proc.kill()
            d.proc.wait()
