"""Phase of the schedules issue: what evaluating a cron expression in SQL costs.

* ``cron`` -- chains of consecutive fire times (``hydra.cron_next`` fed its own result, one
  recursive query per chain, in a time zone with DST) for expressions that step a little
  (every 7 minutes), a lot (weekdays at 01:30; Friday the 13th) and across years (29 February),
  against croniter, a widely used Python implementation, computing the same chain in process.
  It reports microseconds per fire time and croniter's time over hydramq's (above 1: the SQL
  evaluation is faster). The coordinator calls ``cron_next`` once per fired schedule.

Informational: no issue sets a target for it.
"""

from __future__ import annotations

import statistics
import time
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
from common import Context
from croniter import croniter
from phases import phase

EXPRESSIONS = ("*/7 * * * *", "30 1 * * 1-5", "0 0 13 * FRI", "0 0 29 2 *")
TIME_ZONE = "America/New_York"
START = datetime(2024, 1, 1, tzinfo=UTC)

CHAIN_SQL = """
WITH RECURSIVE chain(n, at) AS (
    SELECT 0, %(start)s::timestamptz
    UNION ALL
    SELECT n + 1, hydra.cron_next(%(expr)s, at, %(tz)s) FROM chain WHERE n < %(count)s
)
SELECT count(*), max(at) FROM chain WHERE n > 0
"""


def sql_chain_seconds(conn: psycopg.Connection, expr: str, count: int) -> tuple[float, Any]:
    t0 = time.perf_counter()
    row = conn.execute(CHAIN_SQL, {"expr": expr, "start": START, "tz": TIME_ZONE,
                                   "count": count}).fetchone()
    seconds = time.perf_counter() - t0
    assert row is not None and row[0] == count
    return seconds, row[1]


def croniter_chain_seconds(expr: str, count: int) -> tuple[float, datetime]:
    t0 = time.perf_counter()
    it = croniter(expr, START.astimezone(ZoneInfo(TIME_ZONE)))
    last = START
    for _ in range(count):
        last = it.get_next(datetime)
    return time.perf_counter() - t0, last


@phase("cron", "cron: chains of fire times from hydra.cron_next vs croniter in process")
def cron_phase(ctx: Context) -> None:
    if not ctx.hydramq:
        ctx.results["cron"] = {"skipped": "hydramq extension not available"}
        return
    count = 20 if ctx.sizes.rounds == 1 else 50
    rounds = max(ctx.sizes.rounds, 3)
    entry: dict[str, Any] = {"params": {"expressions": list(EXPRESSIONS), "time_zone": TIME_ZONE,
                                        "chain": count, "rounds": rounds}, "runs": {}}
    rows = []
    with psycopg.connect(ctx.dsn, autocommit=True) as conn:
        ctx.progress.start("cron")
        sql_chain_seconds(conn, EXPRESSIONS[0], 1)  # untimed: the session's first call
        for expr in EXPRESSIONS:
            sql_runs, py_runs = [], []
            for _ in range(rounds):
                s, sql_last = sql_chain_seconds(conn, expr, count)
                p, py_last = croniter_chain_seconds(expr, count)
                sql_runs.append(s)
                py_runs.append(p)
            if sql_last != py_last:
                raise AssertionError(f"{expr}: hydramq ends at {sql_last}, croniter at {py_last}")
            sql_us = statistics.median(sql_runs) * 1e6 / count
            py_us = statistics.median(py_runs) * 1e6 / count
            entry["runs"][expr] = {"hydramq_s": sql_runs, "croniter_s": py_runs}
            rows.append({"expression": expr, "hydramq_us_per_fire": round(sql_us, 1),
                         "croniter_us_per_fire": round(py_us, 1),
                         "croniter_over_hydramq": f"{py_us / sql_us:.2f}x"})
        ctx.progress.done(", ".join(f"{r['expression']}: {r['hydramq_us_per_fire']} us"
                                    for r in rows))
    entry["summary"] = rows
    ctx.results["cron"] = entry
