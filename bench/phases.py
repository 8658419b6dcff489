"""The benchmark's phases. A phase is a small function ``f(ctx) -> None`` that stores its
numbers under ``ctx.results[name]``; ``@phase`` registers it in ``PHASES`` (run in order).

Planned, to be added by the Python-driver issue as further ``@phase`` functions:
  * ``latency_listen`` / ``latency_poll`` — enqueue -> handler start p50/p99 with a worker
    woken by LISTEN/NOTIFY, and with polling only;
  * ``cli_worker`` — end-to-end throughput of ``hydramq worker`` processes;
  * ``notify_cost`` — single-enqueue throughput with an idle LISTENing worker registered
    (enqueue then sends NOTIFY) vs without.
Each reads ``ctx.dsn`` / ``ctx.sizes`` and writes one entry of ``ctx.results``; report.py
prints any entry whose value has a ``"summary"`` list of rows, so a new phase needs no change
there.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import baselines
import psycopg
from common import (
    BATCH,
    CONNECTIONS_PER_PROCESS,
    ENQUEUE_CONNECTIONS_PER_PROCESS,
    Context,
    median,
    ratio,
)
from runner import RunResult, drain, enqueue_for
from workloads import (
    DRAIN_SYSTEMS,
    HYDRA_FILL,
    HYDRA_POLICY_CLEAR,
    HYDRA_POLICY_SET,
    QUEUE,
    shape_chunks,
)


@dataclass(frozen=True)
class Phase:
    name: str
    description: str
    run: Callable[[Context], None]


PHASES: list[Phase] = []


def phase(name: str, description: str) -> Callable[[Callable[[Context], None]],
                                                    Callable[[Context], None]]:
    def register(fn: Callable[[Context], None]) -> Callable[[Context], None]:
        PHASES.append(Phase(name, description, fn))
        return fn
    return register


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def settle(conn: psycopg.Connection) -> None:
    """Untimed, before every timed run: VACUUM ANALYZE (fresh visibility map and statistics)
    and CHECKPOINT (so that no run pays for a checkpoint the previous one caused)."""
    conn.execute("VACUUM (ANALYZE)")
    try:
        conn.execute("CHECKPOINT")
    except psycopg.Error:
        pass  # neither superuser nor pg_checkpoint: runs are a little noisier


def purge_hydramq(conn: psycopg.Connection) -> None:
    """Remove every message of the benchmark database. No public API empties a queue, so
    this truncates the extension's message table (the bench owns this throwaway database)."""
    conn.execute("TRUNCATE hydra.message CASCADE")


# The baseline table each baseline drain system uses (baselines.py).
BASELINE_TABLES = {"lease": "lq", "delete": "dq", "place_lease": "lq_new"}


def leftover(conn: psycopg.Connection, system: str) -> int | None:
    """Messages still stored after a drain (should be 0); None when it cannot be told."""
    table = BASELINE_TABLES.get(system)
    try:
        if table:
            row = conn.execute(f"SELECT count(*) FROM bench_base.{table}").fetchone()
        else:
            row = conn.execute("SELECT count(*) FROM hydra.message WHERE queue = %s",
                               (QUEUE,)).fetchone()
    except psycopg.Error:
        return None
    return int(row[0]) if row else None


TOP_STATEMENTS = """
SELECT left(regexp_replace(query, '\\s+', ' ', 'g'), 160) AS query, calls, rows,
       round(total_exec_time::numeric, 1) AS total_ms,
       round(mean_exec_time::numeric, 4) AS mean_ms, toplevel
FROM pg_stat_statements
WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
ORDER BY total_exec_time DESC LIMIT %s
"""


def top_statements(conn: psycopg.Connection, limit: int = 12) -> list[dict[str, Any]]:
    """The statements that took the most server time since the last reset (``--stats``)."""
    cur = conn.execute(TOP_STATEMENTS, (limit,))
    names = [d.name for d in cur.description or []]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def guarded(ctx: Context, conn: psycopg.Connection, system: str,
            measure: Callable[..., RunResult], *args: Any) -> RunResult:
    """Run one measurement; an error (say, a hydramq function that does not exist yet) is
    recorded as a failed run and the phase goes on with the next one."""
    try:
        return measure(*args)
    except (psycopg.Error, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
        ctx.progress.done(f"ERROR: {first}")
        try:  # leave the next run an empty queue
            if system == "hydramq":
                purge_hydramq(conn)
            for table in baselines.TABLES:
                baselines.reset(conn, table)
        except psycopg.Error:
            pass
        return RunResult(messages=0, seconds=0.0, complete=False, errors=[str(exc).strip()])


def summarize(runs: dict[str, list[dict[str, Any]]]) -> tuple[dict[str, float | None],
                                                                list[str]]:
    """Median msgs/s per system over its complete runs. A system none of whose runs
    completed (timed out, errors) gets the median of its partial rates instead and is listed
    in the second value, so that the report can mark it."""
    rates: dict[str, float | None] = {}
    incomplete: list[str] = []
    for system, rs in runs.items():
        done = [x["msgs_per_s"] for x in rs if x["complete"]]
        if not done and rs:
            incomplete.append(system)
            done = [x["msgs_per_s"] for x in rs]
        rates[system] = median(done)
    return rates, incomplete


def systems_for(ctx: Context) -> list[str]:
    return ["hydramq", "lease", "delete"] if ctx.hydramq else ["lease", "delete"]


def rotated(items: list[str], k: int) -> list[str]:
    """Round k runs the systems in a rotated order, so slow drift does not favour one."""
    k %= len(items)
    return items[k:] + items[:k]


# --------------------------------------------------------------------------------------------
# 1. drain throughput
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Shape:
    name: str
    channels: int
    per_channel: int
    capped: bool  # every channel max_concurrency => 1 (hydramq only; baselines have no caps)
    prefix: str
    chunk: int

    @property
    def messages(self) -> int:
        return self.channels * self.per_channel


def drain_shapes(ctx: Context) -> list[Shape]:
    s = ctx.sizes
    return [
        Shape("S1", 1, s.s1_messages, False, "s1c", 1000),
        Shape("S2", s.s2_channels, s.s2_per_channel, False, "s2c", 1000),
        Shape("S3", s.s3_channels, s.s3_per_channel, True, "s3c", s.s3_per_channel),
    ]


def run_drain(ctx: Context, conn: psycopg.Connection, shape: Shape, system: str,
              round_no: int) -> RunResult:
    sysobj = DRAIN_SYSTEMS[system]
    label = f"{shape.name} {sysobj.label} r{round_no + 1}"
    ctx.progress.start(label)
    if system in BASELINE_TABLES:
        baselines.reset(conn, BASELINE_TABLES[system])
    if system == "hydramq" and shape.capped:
        for c in range(shape.channels):  # one policy change per transaction (60_policies)
            conn.execute(HYDRA_POLICY_SET, (f"{shape.prefix}{c}", 1, QUEUE))
    filled = 0
    next_analyze = 1000
    for doc in shape_chunks(shape.channels, shape.per_channel, shape.prefix, shape.chunk):
        filled += sysobj.fill(conn, doc)
        ctx.progress.update(f"pre-enqueue {filled:,}/{shape.messages:,} (untimed)")
        if filled >= next_analyze:
            # The table starts empty, and plans cached while it looked empty can turn every
            # per-channel lookup of enqueue into a scan of the whole table (quadratic fill;
            # see docs/benchmarks.md). The fill is untimed set-up: keep statistics current.
            conn.execute("ANALYZE")
            next_analyze *= 4
    ctx.progress.update("vacuum + checkpoint (untimed)", force=True)
    settle(conn)
    if ctx.stats:
        conn.execute("SELECT pg_stat_statements_reset()")
    res = drain(ctx.dsn, system, shape.messages, ctx.progress, CONNECTIONS_PER_PROCESS,
                timeout_s=ctx.sizes.drain_timeout_s)
    if ctx.stats:
        res.top_statements = top_statements(conn)
    left = leftover(conn, system)
    if system == "hydramq":
        if shape.capped:
            for c in range(shape.channels):
                conn.execute(HYDRA_POLICY_CLEAR, (f"{shape.prefix}{c}", QUEUE))
        if left:
            purge_hydramq(conn)
    elif left:
        baselines.reset(conn, BASELINE_TABLES[system])
    status = f"{res.rate:>9,.0f} msgs/s  ({res.messages:,} in {res.seconds:.2f}s)"
    if res.retries:
        status += "  retried: " + ", ".join(f"{n} {k}" for k, n in res.retries.items())
    if not res.complete:
        status += f"  INCOMPLETE, {left} left"
    if res.errors:
        status += f"  ERROR: {res.errors[0].strip().splitlines()[-1]}"
    ctx.progress.done(status)
    return res


@phase("drain", "drain throughput, 2 processes x 10 connections, batch 100 (S1, S2, S3)")
def drain_phase(ctx: Context) -> None:
    shapes = [sh for sh in drain_shapes(ctx) if not ctx.shapes or sh.name in ctx.shapes]
    systems = systems_for(ctx)
    out: dict[str, Any] = {}
    for shape in shapes:
        out[shape.name] = {
            "params": {"channels": shape.channels, "per_channel": shape.per_channel,
                       "messages": shape.messages, "max_concurrency": 1 if shape.capped else None,
                       "batch": BATCH, "processes": 2, "connections_per_process":
                       CONNECTIONS_PER_PROCESS, "prefill_chunk": shape.chunk},
            "runs": {s: [] for s in systems}}
    ctx.results["drain"] = out
    failed: set[tuple[str, str]] = set()
    with psycopg.connect(ctx.dsn, autocommit=True) as conn:
        for r in range(ctx.sizes.rounds):
            ctx.progress.note(f"round {r + 1}/{ctx.sizes.rounds}")
            for shape in shapes:
                for system in rotated(systems, r):
                    if (shape.name, system) in failed:
                        ctx.progress.note(f"{shape.name} {DRAIN_SYSTEMS[system].label} "
                                          f"r{r + 1}: skipped (did not finish in an earlier "
                                          f"round)")
                        continue
                    res = guarded(ctx, conn, system, run_drain, ctx, conn, shape, system, r)
                    out[shape.name]["runs"][system].append(res.as_dict())
                    if not res.complete:
                        failed.add((shape.name, system))  # keeps a broken path from
                        # costing the full timeout in every round
    for shape in shapes:
        entry = out[shape.name]
        rates, entry["incomplete"] = summarize(entry["runs"])
        entry["median_msgs_per_s"] = rates
        entry["ratio_to_lease"] = ratio(rates.get("hydramq"), rates.get("lease"))
        entry["ratio_to_delete"] = ratio(rates.get("hydramq"), rates.get("delete"))
        entry["lease_to_delete"] = ratio(rates.get("lease"), rates.get("delete"))
        if "hydramq" in entry["runs"]:
            entry["round_ratios_to_lease"] = [
                ratio(h["msgs_per_s"], b["msgs_per_s"])
                for h, b in zip(entry["runs"]["hydramq"], entry["runs"]["lease"],
                                strict=False)]


# --------------------------------------------------------------------------------------------
# 2. enqueue throughput
# --------------------------------------------------------------------------------------------
ENQUEUE_KINDS = {
    "single": ("hydramq_one", "plain_one", "1 message per transaction"),
    "batch": ("hydramq_many", "plain_many", "100 messages per statement"),
}


def run_enqueue(ctx: Context, conn: psycopg.Connection, kind: str, system: str,
                producer: str, round_no: int) -> RunResult:
    seconds = ctx.sizes.enqueue_seconds
    ctx.progress.start(f"enqueue {kind} {system} r{round_no + 1}")
    if system == "plain":
        baselines.reset(conn, "plain")
    else:  # hydramq, or hydramq's rows inserted bare
        purge_hydramq(conn)
    settle(conn)
    if ctx.stats:
        conn.execute("SELECT pg_stat_statements_reset()")
    res = enqueue_for(ctx.dsn, producer, seconds, ctx.progress,
                      ENQUEUE_CONNECTIONS_PER_PROCESS)
    if ctx.stats:
        res.top_statements = top_statements(conn)
    status = f"{res.rate:>9,.0f} msgs/s  ({res.messages:,} in {seconds:.0f}s)"
    if res.errors:
        status += f"  ERROR: {res.errors[0].strip().splitlines()[-1]}"
    ctx.progress.done(status)
    return res


@phase("enqueue", "enqueue throughput, 2 processes x 4 connections, time-boxed")
def enqueue_phase(ctx: Context) -> None:
    seconds = ctx.sizes.enqueue_seconds
    out: dict[str, Any] = {}
    for kind, (_, _, desc) in ENQUEUE_KINDS.items():
        out[kind] = {"params": {"description": desc, "seconds": seconds, "processes": 2,
                                "connections_per_process": ENQUEUE_CONNECTIONS_PER_PROCESS,
                                "channels": 1000},
                     "runs": {"hydramq": [], "plain": []} if ctx.hydramq else {"plain": []}}
    ctx.results["enqueue"] = out
    with psycopg.connect(ctx.dsn, autocommit=True) as conn:
        for r in range(ctx.sizes.rounds):
            for kind, (hyd, base, _) in ENQUEUE_KINDS.items():
                pairs = [("hydramq", hyd), ("plain", base)] if ctx.hydramq else [("plain", base)]
                for system, producer in (pairs if r % 2 == 0 else pairs[::-1]):
                    res = guarded(ctx, conn, system, run_enqueue, ctx, conn, kind, system,
                                  producer, r)
                    out[kind]["runs"][system].append(res.as_dict())
        if ctx.hydramq:
            purge_hydramq(conn)
        baselines.reset(conn, "plain")
    for entry in out.values():
        rates, entry["incomplete"] = summarize(entry["runs"])
        entry["median_msgs_per_s"] = rates
        entry["ratio_to_plain"] = ratio(rates.get("hydramq"), rates.get("plain"))


# --------------------------------------------------------------------------------------------
# 3. fairness
# --------------------------------------------------------------------------------------------
FAIR_QUEUE = "bench_fair"
FAIR_DEQUEUE = "SELECT id, channel, lease_token FROM hydra.dequeue(queue => %s, batch => 1)"
FAIR_COMPLETE = "SELECT hydra.complete(%s, %s)"


def expected_fair_order(noisy: int, quiet_channels: int, quiet_each: int) -> list[str]:
    """Exact round robin: each round serves the noisy channel once, then every quiet channel
    once, in the order they arrived (SPEC §5)."""
    order: list[str] = []
    for _ in range(quiet_each):
        order.append("noisy")
        order.extend(f"quiet{q}" for q in range(quiet_channels))
    order.extend(["noisy"] * (noisy - quiet_each))
    return order


@phase("fairness", "fairness: 1 noisy channel then 100 quiet ones, 1 consumer, batch 1")
def fairness_phase(ctx: Context) -> None:
    if not ctx.hydramq:
        ctx.results["fairness"] = {"skipped": "hydramq extension not available"}
        return
    s = ctx.sizes
    quiet_total = s.fairness_quiet_channels * s.fairness_quiet_each
    expected = expected_fair_order(s.fairness_noisy, s.fairness_quiet_channels,
                                   s.fairness_quiet_each)
    expected_last = max(i for i, ch in enumerate(expected) if ch != "noisy") + 1
    served: list[str] = []
    with psycopg.connect(ctx.dsn, autocommit=True) as conn:
        ctx.progress.start("fairness")
        for start in range(0, s.fairness_noisy, 1000):
            n = min(1000, s.fairness_noisy - start)
            doc = json.dumps([{"payload": {"n": start + i}, "channel": "noisy"}
                              for i in range(n)])
            conn.execute(HYDRA_FILL, (doc, FAIR_QUEUE))
        for q in range(s.fairness_quiet_channels):
            doc = json.dumps([{"payload": {"n": i}, "channel": f"quiet{q}"}
                              for i in range(s.fairness_quiet_each)])
            conn.execute(HYDRA_FILL, (doc, FAIR_QUEUE))
        settle(conn)
        quiet_seen = 0
        t0 = time.monotonic()
        while quiet_seen < quiet_total and len(served) < len(expected):
            row = conn.execute(FAIR_DEQUEUE, (FAIR_QUEUE,)).fetchone()
            if row is None:
                break
            msg_id, channel, token = row
            conn.execute(FAIR_COMPLETE, (msg_id, token))
            served.append(channel)
            if channel != "noisy":
                quiet_seen += 1
            if len(served) % 100 == 0:
                ctx.progress.update(f"{len(served):,} served, {quiet_seen:,}/{quiet_total:,} "
                                    f"quiet")
        seconds = time.monotonic() - t0
        last_quiet = max((i + 1 for i, ch in enumerate(served) if ch != "noisy"), default=None)
        mismatch = next(((i + 1, expected[i], ch) for i, ch in enumerate(served)
                         if ch != expected[i]), None)
        exact = mismatch is None and quiet_seen == quiet_total
        ctx.progress.done(f"last quiet message at position {last_quiet} (expected "
                          f"{expected_last}); exact round robin: {'yes' if exact else 'NO'}")
        purge_hydramq(conn)
    ctx.results["fairness"] = {
        "params": {"noisy_messages": s.fairness_noisy,
                   "quiet_channels": s.fairness_quiet_channels,
                   "quiet_each": s.fairness_quiet_each, "batch": 1, "connections": 1},
        "served": len(served), "last_quiet_position": last_quiet,
        "expected_last_quiet_position": expected_last, "fifo_last_quiet_position":
        s.fairness_noisy + quiet_total, "exact_round_robin": exact,
        "first_mismatch": None if mismatch is None else
        {"position": mismatch[0], "expected": mismatch[1], "got": mismatch[2]},
        "seconds": round(seconds, 3),
        "msgs_per_s": round(len(served) / seconds, 1) if seconds > 0 else None,
    }
