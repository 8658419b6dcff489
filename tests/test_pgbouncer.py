"""The worker acceptance load through a real PgBouncer in transaction pooling mode.

PgBouncer (tests/pgbouncer.py; Debian's 1.18, which predates protocol-level prepared statements)
runs in front of this test's database with fewer server connections than clients, so that one
client's consecutive transactions land on different server sessions. Through it run:

* producers, each enqueuing inside explicit transactions together with a statement of their
  own (some transactions roll back), on connections made as docs/managed-postgres.md says
  (``prepare_threshold=None``);
* two ``hydramq worker --pgbouncer`` processes, one LISTENing on a direct connection
  (``--listen-dsn``; an enqueue through PgBouncer wakes it), one polling only;
* one ``hydramq coordinator`` (``HYDRAMQ_PGBOUNCER=1``: the option from the environment).

Many channels, some capped with hydra.channel_policy_set, some messages delayed, some failing
once and retried. At the end every committed message was processed, the expected number of
times, none of the rolled-back ones ever; no cap was exceeded in any sample; no idle-worker
registration was made by a pooled server session; the daemons' logs hold no database error
(without ``--pgbouncer`` they fill with "prepared statement ... does not exist / already
exists") and PgBouncer's log no notification sent to a server connection it did not expect.
"""

from __future__ import annotations

import random
import re
import signal
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pgbouncer
import psycopg
import pytest
from helpers import CAP_VIOLATIONS, Threads
from pgbouncer import PgBouncer
from psycopg.conninfo import conninfo_to_dict
from test_driver_daemons import Daemon, ends, spawn, starts, wait_until  # noqa: F401 (fixture)

from hydramq import Client

Conn = psycopg.Connection[Any]

CHANNELS = [f"tenant-{i}" for i in range(40)]
CAPS = {"tenant-0": 1, "tenant-1": 1, "tenant-2": 2, "tenant-3": 2, "tenant-4": 3}
PRODUCERS = 4
TRANSACTIONS = 80  # per producer
ROLLBACK_EVERY = 9  # every 9th transaction of a producer rolls back

# A database error or a lost session in a daemon's log record (the fail-first messages'
# handler failures are logged, with their traceback under -v, and expected).
LOG_PROBLEMS = re.compile(
    r"prepared statement|does not exist|already exists|Traceback|failed: | ERROR |CRITICAL|"
    r"connection problem|LISTEN connection|protocol|pgbouncer cannot|server closed",
    re.IGNORECASE,
)
RECORD_START = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", re.MULTILINE)
EXPECTED_FAILURE = re.compile(
    r"handler failed for message \d+ \(attempt 1/3\).*RuntimeError: fails the first attempt$",
    re.DOTALL,
)


def log_problems(text: str) -> list[str]:
    """The records of a daemon's log that report a problem."""
    starts = [m.start() for m in RECORD_START.finditer(text)] + [len(text)]
    records = [text[a:b].strip() for a, b in zip(starts, starts[1:], strict=False)]
    return [r for r in records if LOG_PROBLEMS.search(r) and not EXPECTED_FAILURE.search(r)]


def report(daemons: tuple[Daemon, ...]) -> str:
    """The first problems each daemon logged, by log file ('' when none did)."""
    out = []
    for d in daemons:
        problems = log_problems(d.log)
        if problems:
            out.append(f"{d.log_path.name}: {len(problems)} problem(s), first ones:")
            out.extend(p.splitlines()[0][:300] for p in problems[:5])
    return "\n".join(out)


@pytest.fixture
def bouncer(dsn: str) -> Iterator[PgBouncer]:
    missing = pgbouncer.unavailable()
    if missing is not None:
        pytest.skip(f"no PgBouncer: {missing}")
    proxy = PgBouncer(dsn, default_pool_size=4)
    try:
        yield proxy
    finally:
        proxy.stop()


class Ledger:
    """What the producers committed: message id -> attempts its handler must see."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.attempts: dict[int, int] = {}
        self.rolled_back: set[int] = set()
        self.orders = 0


def produce(dsn: str, ledger: Ledger, seed: int) -> None:
    rng = random.Random(seed)
    # As docs/managed-postgres.md says: no automatic prepared statements through PgBouncer.
    with psycopg.connect(dsn, autocommit=True, prepare_threshold=None) as conn:
        client = Client(conn)
        for t in range(TRANSACTIONS):
            rollback = t % ROLLBACK_EVERY == ROLLBACK_EVERY - 1
            expected: dict[int, int] = {}
            try:
                with conn.transaction():
                    conn.execute("INSERT INTO orders (producer, n) VALUES (%s, %s)", (seed, t))
                    specs = []
                    for _ in range(rng.randint(1, 4)):
                        fail_first = rng.random() < 0.15
                        specs.append({
                            "payload": {"sleep": rng.choice((0, 0.005, 0.02)),
                                        **({"fail": "first"} if fail_first else {})},
                            "channel": rng.choice(CHANNELS),
                            **({"delay_secs": 0.2} if rng.random() < 0.1 else {}),
                        })  # fmt: skip
                    if len(specs) == 1:
                        spec = specs[0]
                        results = [client.enqueue(
                            spec["payload"], channel=spec["channel"], num_attempts=3,
                            lock_secs=0.05, delay_secs=spec.get("delay_secs"),
                        )]  # fmt: skip
                    else:
                        results = client.enqueue_many(specs, num_attempts=3, lock_secs=0.05)
                    for spec, res in zip(specs, results, strict=True):
                        assert res.result == "enqueued" and res.message_id is not None
                        expected[res.message_id] = 2 if spec["payload"].get("fail") else 1
                    if rollback:
                        raise _Rollback
            except _Rollback:
                with ledger.lock:
                    ledger.rolled_back.update(expected)
                continue
            with ledger.lock:
                ledger.attempts.update(expected)
                ledger.orders += 1


class _Rollback(Exception):
    pass


def test_worker_load_through_pgbouncer_transaction_pooling(
    db: Conn,
    dsn: str,
    connect: Callable[..., Conn],
    bouncer: PgBouncer,
    spawn: Callable[..., Daemon],  # noqa: F811 (the fixture imported above)
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    dbname = str(conninfo_to_dict(dsn)["dbname"])
    pooled = bouncer.dsn(dbname)
    db.execute("CREATE TABLE orders (producer int, n int)")
    with psycopg.connect(pooled, autocommit=True, prepare_threshold=None) as admin:
        for channel, cap in CAPS.items():
            admin.execute(
                "SELECT hydra.channel_policy_set(%s, max_concurrency => %s)", (channel, cap)
            )

    workers = [
        spawn("worker", "--dsn", pooled, "driver_tasks:handle", "--slots", "8", "--pgbouncer",
              "--listen-dsn", dsn, "--name", "hydramq-worker-listening", name="worker-listen"),
        spawn("worker", "--dsn", pooled, "driver_tasks:handle", "--slots", "8", "--pgbouncer",
              "--poll-max", "0.2", "--name", "hydramq-worker-polling", name="worker-poll"),
    ]  # fmt: skip
    monkeypatch.setenv("HYDRAMQ_PGBOUNCER", "1")
    coordinator = spawn("coordinator", "--dsn", pooled, "--interval", "0.1", name="coordinator")
    monkeypatch.delenv("HYDRAMQ_PGBOUNCER")

    # Samplers on direct connections: caps, and who registered as an idle worker.
    sample_conn = connect()
    pooled_registrations: set[int] = set()
    cap_samples: list[tuple[Any, ...]] = []
    samples = 0
    stop = threading.Event()

    def sample(_: int) -> None:
        nonlocal samples
        while not stop.is_set():
            cap_samples.extend(sample_conn.execute(CAP_VIOLATIONS).fetchall())
            registered = {r[0] for r in sample_conn.execute(
                "SELECT backend_pid FROM hydra.waiting_worker")}  # fmt: skip
            if registered:
                pooled_registrations.update(registered & bouncer.server_pids())
            samples += 1
            stop.wait(0.02)

    sampler = Threads(1, sample, name="sampler", stop=stop)
    ledger = Ledger()
    producers = Threads(PRODUCERS, lambda i: produce(pooled, ledger, i), name="producer")
    producers.join(60)

    daemons = (*workers, coordinator)

    def drained() -> bool:
        problems = report(daemons)
        assert not problems, f"the daemons logged problems:\n{problems}"
        return db.execute("SELECT count(*) FROM hydra.message").fetchone() == (0,) and len(
            ends(tmp_path)
        ) >= sum(ledger.attempts.values())

    try:
        wait_until(drained, 60, "every committed message to be processed", interval=0.1)
    finally:
        sampler.join(10)
    # The listening worker, idle now, registers on its direct session (bounded poll).
    listen_pids = {r[0] for r in db.execute(
        "SELECT pid FROM pg_stat_activity"
        " WHERE application_name = 'hydramq-worker-listening-listen'"
    )}  # fmt: skip
    assert listen_pids, "the listening worker has no direct LISTEN session"
    wait_until(
        lambda: bool({r[0] for r in db.execute("SELECT backend_pid FROM hydra.waiting_worker")}
                     & listen_pids),
        10,
        "the idle listening worker to register",
    )  # fmt: skip
    clients = {r["application_name"] for r in bouncer.show("CLIENTS")}
    registered = {r[0] for r in db.execute("SELECT backend_pid FROM hydra.waiting_worker")}
    pooled_registrations.update(registered & bouncer.server_pids())
    # An enqueue through PgBouncer now NOTIFYs, and the direct LISTEN session hears it.
    with psycopg.connect(pooled, autocommit=True, prepare_threshold=None) as conn:
        last = Client(conn).enqueue({}, channel="tenant-last").message_id
    assert last is not None
    ledger.attempts[last] = 1
    wait_until(lambda: last in {m for m, _, _ in ends(tmp_path)}, 20, "the last message")

    for d in daemons:
        d.signal(signal.SIGTERM)
    codes = [d.wait(20) for d in daemons]

    # Everything went through PgBouncer (the listening session aside).
    assert {"hydramq-worker-listening", "hydramq-worker-polling", "hydramq-coordinator"} <= clients
    assert codes == [0, 0, 0], [d.log for d in daemons]
    assert not report(daemons), report(daemons)
    assert "not linked" not in bouncer.log, bouncer.log[-3000:]
    notified = re.search(r"hydramq-worker-listening: stopped \(.*notified=(\d+)\)", workers[0].log)
    assert notified and int(notified.group(1)) >= 1, "no NOTIFY woke the listening worker"

    # Every committed message processed the expected number of times; rolled-back ones never.
    assert db.execute("SELECT count(*) FROM orders").fetchone() == (ledger.orders,)
    assert len(ledger.attempts) > 300 and ledger.rolled_back
    started = Counter(m for m, _, _ in starts(tmp_path))
    ended = Counter(m for m, _, _ in ends(tmp_path))
    assert set(started) == set(ledger.attempts), (
        f"lost: {sorted(set(ledger.attempts) - set(started))[:10]}, "
        f"unexpected: {sorted(set(started) - set(ledger.attempts))[:10]}"
    )
    twice = {m: n for m, n in started.items() if n != ledger.attempts[m]}
    assert not twice, f"processed a wrong number of times (id: starts): {list(twice.items())[:10]}"
    assert ended == started
    assert not ledger.rolled_back & set(started)
    assert {m for m, a, _ in starts(tmp_path) if a == 2} == {
        m for m, n in ledger.attempts.items() if n == 2
    }
    assert len({pid for _, _, pid in starts(tmp_path)}) == 2, "both workers took part"

    # Caps were never exceeded in any sample; no registration named a pooled server session.
    assert samples > 10
    assert not cap_samples, f"cap violations: {cap_samples[:10]}"
    assert not pooled_registrations, (
        f"hydra.worker_idle was called through PgBouncer (backends {pooled_registrations})"
    )
