"""Phase that measures what bounds the enqueue targets, whatever the code (docs/design.md,
"Why the enqueue targets are not met").

* ``bounds`` -- two ceilings, each as a ratio to the baseline its target uses, same run:

  * *placing at enqueue*: hydramq's message row inserted directly into ``hydra.message``
    (its indexes; no check, no probe, no fairness work) against the plain ``INSERT`` of the
    enqueue phase, one per transaction and 100 per statement (same producers, connections and
    documents). An enqueue that places each message in the fair order costs at least this.
  * *placing after enqueue*: the leasing queue whose rows arrive unplaced and whose dequeue
    first moves them to ``ready`` (one more write per message, no fairness work at all), against
    the leasing queue, draining S1. A dequeue that does the placement costs at least this.

Informational: it prints ratios, not PASS/MISS.
"""

from __future__ import annotations

from typing import Any

import psycopg
from common import Context, fmt_rate, fmt_ratio, median, ratio
from phases import Shape, guarded, phase, purge_hydramq, rotated, run_drain, run_enqueue

ENQUEUE_PAIRS = {
    "single": ("bare_one", "plain_one", "single enqueue: bare hydramq row / INSERT", 0.60),
    "batch": ("bare_many", "plain_many", "batch enqueue: bare hydramq rows / INSERT", 0.55),
}


@phase("bounds", "bounds: bare hydramq row insert vs INSERT; leasing queue placing after "
                 "enqueue vs leasing queue")
def bounds_phase(ctx: Context) -> None:
    if not ctx.hydramq:
        ctx.results["bounds"] = {"skipped": "hydramq extension not available"}
        return
    entry: dict[str, Any] = {"runs": {}}
    rows = []
    with psycopg.connect(ctx.dsn, autocommit=True) as conn:
        for kind, (bare, plain, label, target) in ENQUEUE_PAIRS.items():
            producers = {"bare": bare, "plain": plain}
            runs: dict[str, list[float]] = {"bare": [], "plain": []}
            for r in range(ctx.sizes.rounds):
                for system in rotated(list(producers), r):
                    res = guarded(ctx, conn, system, run_enqueue, ctx, conn, kind, system,
                                  producers[system], r)
                    runs[system].append(res.rate)
            purge_hydramq(conn)
            entry["runs"][kind] = runs
            rows.append(_row(label, median(runs["bare"]), median(runs["plain"]), target))
        shape = Shape("S1", 1, ctx.sizes.s1_messages, False, "s1c", 1000)
        runs = {"place_lease": [], "lease": []}
        for r in range(ctx.sizes.rounds):
            for system in rotated(list(runs), r):
                res = guarded(ctx, conn, system, run_drain, ctx, conn, shape, system, r)
                runs[system].append(res.rate)
        entry["runs"]["S1"] = runs
        rows.append(_row("S1 drain: leasing queue placing after enqueue / leasing queue",
                         median(runs["place_lease"]), median(runs["lease"]), 0.80))
    entry["summary"] = rows
    ctx.results["bounds"] = entry


def _row(label: str, bound: float | None, base: float | None, target: float) -> dict[str, Any]:
    return {"bound": label, "msgs_per_s": fmt_rate(bound), "baseline": fmt_rate(base),
            "ratio": fmt_ratio(ratio(bound, base)), "target_it_caps": f">= {target}"}
