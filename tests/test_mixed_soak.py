"""A mixed soak (issue 2): 16 sessions enqueue (single, batch, in transactions that commit or
roll back, some delayed), dequeue, complete, fail (with and without retry, or crash and let
the lease expire), change channel policies and coordinate, all at once, for
``HYDRAMQ_SOAK_SECONDS`` (default 30). No call may fail -- in particular no deadlock (40P01).
Then everything is drained and the client-side ledger is compared with the table: every
committed message was completed exactly once, or ended failed after exactly num_attempts
attempts (or earlier, when told not to retry); nothing rolled back ever ran."""

from __future__ import annotations

import json
import os
import random
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import psycopg
from helpers import Threads, dequeue

Conn = psycopg.Connection[Any]

SOAK_SECONDS = float(os.environ.get("HYDRAMQ_SOAK_SECONDS", "30"))
DRAIN_SECONDS = 90
CHANNELS: list[str | None] = [f"tenant-{i}" for i in range(10)] + [None]
PRODUCERS, WORKERS, POLICY_CHANGERS, COORDINATORS = 4, 8, 2, 2  # 16 sessions


class DeadlockSeen(AssertionError):
    """Some call failed with 40P01 (the only failure checked after the ledger)."""


@dataclass
class Ledger:
    """What the clients saw, per message id."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    num_attempts: dict[int, int] = field(default_factory=dict)  # committed messages
    rolled_back: set[int] = field(default_factory=set)
    deliveries: defaultdict[int, list[int]] = field(default_factory=lambda: defaultdict(list))
    completed: Counter[int] = field(default_factory=Counter)
    failed: dict[int, str] = field(default_factory=dict)  # id -> 'no retry' | 'exhausted'
    stale: Counter[int] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    operations: Counter[str] = field(default_factory=Counter)

    def count(self, operation: str, n: int = 1) -> None:
        with self.lock:
            self.operations[operation] += n


def message_options(rng: random.Random) -> dict[str, Any]:
    return {
        "channel": rng.choice(CHANNELS),
        "priority": rng.choice([None, None, None, 1, 5]),
        "num_attempts": rng.randint(1, 3),
        "lock_secs": round(rng.uniform(0.02, 0.3), 3),
        "lock_secs_factor": rng.choice([1, 1.5, 2]),
        "delay_secs": rng.choice([0, 0, 0, 0, round(rng.uniform(0.05, 1.0), 3)]),
        "max_processing_secs": 2,
    }


def enqueue_some(conn: Conn, rng: random.Random) -> dict[int, int]:
    """One enqueue or enqueue_many call; returns {id: num_attempts} of what it stored."""
    if rng.random() < 0.5:
        options = message_options(rng)
        row = conn.execute(
            "SELECT result, message_id FROM hydra.enqueue(%(p)s::jsonb, channel => %(channel)s,"
            " priority => %(priority)s, num_attempts => %(num_attempts)s,"
            " lock_secs => %(lock_secs)s::numeric,"
            " lock_secs_factor => %(lock_secs_factor)s::numeric,"
            " delay_secs => %(delay_secs)s::numeric,"
            " max_processing_secs => %(max_processing_secs)s::numeric)",
            {"p": json.dumps({"r": rng.random()}), **options},
        ).fetchone()
        assert row is not None and row[0] == "enqueued", row
        return {row[1]: options["num_attempts"]}
    messages = [{"payload": {"i": i}, **message_options(rng)} for i in range(rng.randint(2, 12))]
    rows = conn.execute(
        "SELECT ord, result, message_id FROM hydra.enqueue_many(%s::jsonb) ORDER BY ord",
        (json.dumps(messages),),
    ).fetchall()
    assert [r[1] for r in rows] == ["enqueued"] * len(messages), rows
    return {r[2]: messages[r[0] - 1]["num_attempts"] for r in rows}


def test_mixed_load_neither_deadlocks_nor_loses_a_message(db: Conn, connect: Any) -> None:
    ledger = Ledger()
    stop_load, stop_all = threading.Event(), threading.Event()
    draining = threading.Event()

    def guard(role: str, fn: Any, conn: Conn) -> None:
        """Runs fn() until told to stop; any database error is recorded, never expected."""
        while True:
            try:
                if fn():
                    return
            except psycopg.Error as exc:
                where = [
                    line.strip()
                    for line in (exc.diag.context or "").splitlines()
                    if line.strip().startswith("PL/pgSQL function")
                ]
                with ledger.lock:
                    ledger.errors.append(
                        f"{role}: {exc.sqlstate} {exc.diag.message_primary}"
                        f" in {where[0] if where else '?'}; {exc.diag.message_detail}"
                    )
                if not conn.closed and conn.info.transaction_status != 0:
                    conn.rollback()

    def producer(i: int) -> None:
        conn, rng = connect(), random.Random(f"producer-{i}")

        def step() -> bool:
            if stop_load.is_set():
                return True
            if rng.random() < 0.25:  # several calls in one transaction
                stored: dict[int, int] = {}
                commit, committed = rng.random() < 0.7, False
                try:
                    with conn.transaction(force_rollback=not commit):
                        for _ in range(rng.randint(2, 4)):
                            stored |= enqueue_some(conn, rng)
                    committed = commit
                finally:
                    with ledger.lock:
                        if committed:
                            ledger.num_attempts |= stored
                        else:
                            ledger.rolled_back |= set(stored)
                ledger.count("transaction committed" if commit else "transaction rolled back")
            else:
                stored = enqueue_some(conn, rng)
                with ledger.lock:
                    ledger.num_attempts |= stored
            ledger.count("enqueued", len(stored))
            time.sleep(rng.uniform(0.005, 0.03))
            return False

        guard(f"producer-{i}", step, conn)

    def worker(i: int) -> None:
        conn, rng = connect(), random.Random(f"worker-{i}")

        def step() -> bool:
            if stop_all.is_set():
                return True
            rows = dequeue(conn, rng.randint(1, 8))
            if not rows:
                time.sleep(0.01)
                return False
            with ledger.lock:
                for row in rows:
                    ledger.deliveries[row["id"]].append(row["attempt"])
            ledger.count("delivered", len(rows))
            time.sleep(rng.uniform(0, 0.01))  # "processing"
            done, failed = [], []
            for row in rows:
                roll = rng.random()
                if draining.is_set():
                    roll = roll * 0.9  # no crashes while draining
                if roll < 0.62:
                    done.append(row)
                elif roll < 0.86:
                    failed.append((row, True))
                elif roll < 0.9:
                    failed.append((row, False))
                else:
                    ledger.count("abandoned")  # crash: the lease will expire
            settle(conn, rng, done, failed)
            return False

        guard(f"worker-{i}", step, conn)

    def settle(
        conn: Conn,
        rng: random.Random,
        done: list[dict[str, Any]],
        failed: list[tuple[dict[str, Any], bool]],
    ) -> None:
        if rng.random() < 0.5:  # batch forms
            completed = [
                r[0]
                for r in conn.execute(
                    "SELECT * FROM hydra.complete_many(%s, %s)",
                    ([r["id"] for r in done], [r["lease_token"] for r in done]),
                ).fetchall()
            ]
            outcomes = conn.execute(
                "SELECT message_id, outcome FROM hydra.fail_many(%s, %s, retries => %s)",
                (
                    [r["id"] for r, _ in failed],
                    [r["lease_token"] for r, _ in failed],
                    [retry for _, retry in failed],
                ),
            ).fetchall()
        else:
            completed = [
                r["id"]
                for r in done
                if conn.execute(
                    "SELECT hydra.complete(%s, %s)", (r["id"], r["lease_token"])
                ).fetchone()[0]  # type: ignore[index]
            ]
            outcomes = [
                conn.execute(
                    "SELECT message_id, outcome FROM hydra.fail(%s, %s, 'soak', %s)",
                    (r["id"], r["lease_token"], retry),
                ).fetchone()
                for r, retry in failed
            ]
        retry_of = {r["id"]: retry for r, retry in failed}
        with ledger.lock:
            ledger.completed.update(completed)
            ledger.stale.update(r["id"] for r in done if r["id"] not in set(completed))
            for message_id, outcome in outcomes:  # type: ignore[misc]
                if outcome == "failed":
                    ledger.failed[message_id] = "exhausted" if retry_of[message_id] else "no retry"
                elif outcome == "stale":
                    ledger.stale[message_id] += 1
            ledger.operations["completed"] += len(completed)
            ledger.operations["failed"] += len(outcomes)

    def policy_changer(i: int) -> None:
        conn, rng = connect(), random.Random(f"policy-{i}")

        def step() -> bool:
            if stop_load.is_set():
                return True
            channel, roll = rng.choice(CHANNELS), rng.random()
            if roll < 0.6:
                cap: int | None = rng.choice([0, 1, 1, 2, 3, 5])
            elif roll < 0.8:
                cap = None
            else:
                conn.execute("SELECT hydra.channel_policy_clear(%s)", (channel,))
                ledger.count("policy cleared")
                cap = -1
            if cap != -1:
                conn.execute(
                    "SELECT hydra.channel_policy_set(%s, max_concurrency => %s)", (channel, cap)
                )
                ledger.count("policy set")
            time.sleep(rng.uniform(0.02, 0.08))
            return False

        guard(f"policy-{i}", step, conn)

    def coordinator(i: int) -> None:
        conn, rng = connect(), random.Random(f"coordinator-{i}")

        def step() -> bool:
            if stop_all.is_set():
                return True
            rows = conn.execute(
                "SELECT event, message_id FROM hydra.coordinate(batch => %s)",
                (rng.choice([5, 50, 1000]),),
            ).fetchall()
            with ledger.lock:
                ledger.operations["coordinate"] += 1
                for event, message_id in rows:
                    ledger.operations[event] += 1
                    if event == "MESSAGE_ATTEMPTS_EXHAUSTED":  # a lease expired, none left
                        ledger.failed[message_id] = "exhausted"
            time.sleep(rng.uniform(0.01, 0.04))
            return False

        guard(f"coordinator-{i}", step, conn)

    load = [
        Threads(PRODUCERS, producer, "producer", stop_load),
        Threads(POLICY_CHANGERS, policy_changer, "policy", stop_load),
    ]
    steady = [
        Threads(WORKERS, worker, "worker", stop_all),
        Threads(COORDINATORS, coordinator, "coordinator", stop_all),
    ]
    time.sleep(SOAK_SECONDS)

    # Drain: no new work, every channel gets a generous cap (so slot counts stay checked),
    # workers and coordinators go on until every message is finished.
    for group in load:
        group.join(30)
    draining.set()
    for channel in CHANNELS:
        db.execute("SELECT hydra.channel_policy_set(%s, max_concurrency => 1000)", (channel,))
    deadline = time.monotonic() + DRAIN_SECONDS
    while time.monotonic() < deadline and not stop_all.is_set():
        left = db.execute("SELECT count(*) FROM hydra.message WHERE state <> 'failed'").fetchone()
        if left == (0,):
            break
        time.sleep(0.2)
    for group in steady:
        group.join(30)

    # ---- no error of any kind but deadlocks (checked last, see DeadlockSeen) ---------------
    others = [e for e in ledger.errors if "40P01" not in e]
    assert not others, f"{len(others)} errors, e.g. {others[:3]}"

    # ---- drained -------------------------------------------------------------------------
    unfinished = db.execute(
        "SELECT state, count(*) FROM hydra.message WHERE state <> 'failed' GROUP BY state"
    ).fetchall()
    assert not unfinished, f"not drained after {DRAIN_SECONDS}s: {unfinished}"
    in_flight = db.execute(
        "SELECT channel, in_flight FROM hydra.channel_limit WHERE in_flight <> 0"
    ).fetchall()
    assert not in_flight, f"slots still held after the drain: {in_flight}"

    # ---- no message lost, none run too often ---------------------------------------------
    table = {
        r[0]: (r[1], r[2])
        for r in db.execute("SELECT id, state, attempt FROM hydra.message").fetchall()
    }
    assert ledger.num_attempts, "nothing was enqueued"
    problems: list[str] = []
    for message_id, num_attempts in ledger.num_attempts.items():
        seen = sorted(ledger.deliveries.get(message_id, []))
        completions = ledger.completed[message_id]
        if seen != list(range(1, len(seen) + 1)):
            problems.append(f"{message_id}: deliveries {seen}")
        if message_id not in table:  # succeeded: its row is deleted at once
            if completions != 1 or message_id in ledger.failed:
                problems.append(f"{message_id}: gone, completed {completions}x, ledger failed")
            if len(seen) > num_attempts:
                problems.append(f"{message_id}: delivered {len(seen)}x of {num_attempts}")
            continue
        state, attempt = table[message_id]
        how = ledger.failed.get(message_id)
        if state != "failed" or completions or how is None:
            problems.append(f"{message_id}: {state} at {attempt}, completed {completions}x, {how}")
        elif how == "exhausted" and attempt != num_attempts:
            problems.append(f"{message_id}: exhausted after {attempt} of {num_attempts}")
        elif attempt != len(seen) or attempt > num_attempts:
            problems.append(f"{message_id}: failed at {attempt}, delivered {seen}")
    ran_rolled_back = ledger.rolled_back & (set(ledger.deliveries) | set(table))
    if ran_rolled_back:
        problems.append(f"rolled-back messages exist or ran: {sorted(ran_rolled_back)[:10]}")
    strangers = set(table) - set(ledger.num_attempts)
    if strangers:
        problems.append(f"rows nobody enqueued: {sorted(strangers)[:10]}")
    assert not problems, f"{len(problems)} problems: {problems[:10]}\n{ledger.operations}"

    # The run exercised what it claims to.
    ops = ledger.operations
    exercised = ["completed", "failed", "abandoned", "policy set", "policy cleared",
                 "transaction rolled back", "MESSAGE_UNLOCKED", "MESSAGE_RELEASED"]  # fmt: skip
    for operation in exercised:
        assert ops[operation] > 0, f"no {operation!r} in {ops}"
    if SOAK_SECONDS >= 10:
        assert ops["MESSAGE_LOCKED"] > 0 and ops["MESSAGE_ATTEMPTS_EXHAUSTED"] > 0, ops

    # ---- no deadlock ---------------------------------------------------------------------
    deadlocks = [e for e in ledger.errors if "40P01" in e]
    if deadlocks:
        where = Counter(e.split(" in ")[1].split(";")[0] for e in deadlocks)
        raise DeadlockSeen(f"{len(deadlocks)} deadlocks, in {dict(where)}; e.g. {deadlocks[0]}")
