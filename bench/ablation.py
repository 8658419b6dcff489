"""The flows ablation (issue 3: "the core benchmark numbers do not drop by more than 10% with
these features present but unused"). Imported by ``phases.py``, which registers the phase.

The extension marks the code on its hot paths that exists only for dependencies,
de-duplication and ``max_size`` between ``-- flows:begin`` and ``-- flows:end`` lines. The
phase builds a *core* install script by deleting those blocks from ``sql/hydramq--V.sql``,
writes it into the throwaway server's extension directory as ``hydramq--Vcore.sql``, creates
two fresh databases -- ``CREATE EXTENSION hydramq`` (full) and ``CREATE EXTENSION hydramq
VERSION 'Vcore'`` (core) -- and runs the S1 and S2 drains and the single and batch enqueue
runs on both, interleaved (full, core, then core, full in the next round ...). Reported:
full/core per measurement (target >= 0.9 each).

With ``--dsn`` the bench cannot write into the server's extension directory: skipped.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import psycopg
from common import (
    CONNECTIONS_PER_PROCESS,
    ENQUEUE_CONNECTIONS_PER_PROCESS,
    Context,
    median,
    ratio,
)
from phases import (
    Shape,
    drain_shapes,
    guarded,
    leftover,
    phase,
    purge_hydramq,
    rotated,
    settle,
)
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from runner import RunResult, drain, enqueue_for
from workloads import DRAIN_SYSTEMS, shape_chunks

REPO = Path(__file__).resolve().parent.parent
FLOWS_BLOCK = re.compile(r"[ \t]*-- flows:begin.*?-- flows:end[^\n]*\n", re.DOTALL)
VARIANTS = ["full", "core"]
ENQUEUE_KINDS = {"single": "hydramq_one", "batch": "hydramq_many"}
TARGET = 0.9


def core_script(text: str) -> tuple[str, int]:
    """The install script without its flows blocks, and how many blocks were removed."""
    return FLOWS_BLOCK.subn("", text)


def default_version() -> str:
    for line in (REPO / "hydramq.control").read_text().splitlines():
        m = re.match(r"\s*default_version\s*=\s*'([^']*)'", line)
        if m:
            return m.group(1)
    raise RuntimeError("hydramq.control has no default_version")


def write_atomically(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def has_dedup_index(dsn: str) -> bool:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT to_regclass('hydra.message_dedup_idx') IS NOT NULL").fetchone()
    return bool(row and row[0])


# --------------------------------------------------------------------------------------------
# one measurement on one variant
# --------------------------------------------------------------------------------------------
def run_drain_on(ctx: Context, conn: psycopg.Connection, dsn: str, variant: str, shape: Shape,
                 round_no: int) -> RunResult:
    ctx.progress.start(f"{shape.name} {variant} r{round_no + 1}")
    filled, next_analyze = 0, 1000
    for doc in shape_chunks(shape.channels, shape.per_channel, shape.prefix, shape.chunk):
        filled += DRAIN_SYSTEMS["hydramq"].fill(conn, doc)
        ctx.progress.update(f"pre-enqueue {filled:,}/{shape.messages:,} (untimed)")
        if filled >= next_analyze:  # as the drain phase (see run_drain there)
            conn.execute("ANALYZE")
            next_analyze *= 4
    ctx.progress.update("vacuum + checkpoint (untimed)", force=True)
    settle(conn)
    res = drain(dsn, "hydramq", shape.messages, ctx.progress, CONNECTIONS_PER_PROCESS,
                timeout_s=ctx.sizes.drain_timeout_s)
    left = leftover(conn, "hydramq")
    if left:
        purge_hydramq(conn)
    status = f"{res.rate:>9,.0f} msgs/s  ({res.messages:,} in {res.seconds:.2f}s)"
    if res.retries:
        status += "  retried: " + ", ".join(f"{n} {k}" for k, n in res.retries.items())
    if not res.complete:
        status += f"  INCOMPLETE, {left} left"
    if res.errors:
        status += f"  ERROR: {res.errors[0].strip().splitlines()[-1]}"
    ctx.progress.done(status)
    return res


def run_enqueue_on(ctx: Context, conn: psycopg.Connection, dsn: str, variant: str, kind: str,
                   round_no: int) -> RunResult:
    seconds = ctx.sizes.enqueue_seconds
    ctx.progress.start(f"enqueue {kind} {variant} r{round_no + 1}")
    purge_hydramq(conn)
    settle(conn)
    res = enqueue_for(dsn, ENQUEUE_KINDS[kind], seconds, ctx.progress,
                      ENQUEUE_CONNECTIONS_PER_PROCESS)
    status = f"{res.rate:>9,.0f} msgs/s  ({res.messages:,} in {seconds:.0f}s)"
    if res.errors:
        status += f"  ERROR: {res.errors[0].strip().splitlines()[-1]}"
    ctx.progress.done(status)
    purge_hydramq(conn)
    return res


# --------------------------------------------------------------------------------------------
# the phase
# --------------------------------------------------------------------------------------------
def create_variants(ctx: Context, server: Any, dsns: dict[str, str],
                    info: dict[str, Any]) -> None:
    """Both databases, the full extension in one, the core one in the other."""
    version = default_version()
    full_text = (REPO / "sql" / f"hydramq--{version}.sql").read_text()
    core_text, blocks = core_script(full_text)
    if blocks == 0:
        raise RuntimeError(f"sql/hydramq--{version}.sql has no '-- flows:begin' block")
    core_version = f"{version}core"
    target = Path(server.sharedir) / "extension" / f"hydramq--{core_version}.sql"
    info.update(version=version, core_version=core_version, blocks_removed=blocks,
                full_sha256=hashlib.sha256(full_text.encode()).hexdigest()[:16],
                core_sha256=hashlib.sha256(core_text.encode()).hexdigest()[:16],
                lines_removed=full_text.count("\n") - core_text.count("\n"),
                core_script_path=str(target))
    with psycopg.connect(ctx.dsn, autocommit=True) as conn:
        for dsn in dsns.values():
            conn.execute(sql.SQL("CREATE DATABASE {}").format(
                sql.Identifier(conninfo_to_dict(dsn)["dbname"])))
    # The extension directory may be shared with other servers of the same binaries: put the
    # repository's script back just before using it, and remove the core one right after.
    server.install_extension_files()
    write_atomically(target, core_text)
    try:
        with psycopg.connect(dsns["full"], autocommit=True) as conn:
            conn.execute("CREATE EXTENSION hydramq")
        with psycopg.connect(dsns["core"], autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE EXTENSION hydramq VERSION {}").format(
                sql.Literal(core_version)))
    finally:
        with contextlib.suppress(OSError):
            target.unlink()
    # The two really differ where they should: the de-duplication index is a flows block.
    info["dedup_index"] = {v: has_dedup_index(d) for v, d in dsns.items()}
    if info["dedup_index"] != {"full": True, "core": False}:
        raise RuntimeError(f"unexpected variants: message_dedup_idx present = "
                           f"{info['dedup_index']}")


@phase("ablation", "flows ablation: S1/S2 drains and single/batch enqueue, full extension "
                   "vs core (flows blocks stripped), interleaved")
def ablation_phase(ctx: Context) -> None:
    if not ctx.hydramq:
        ctx.results["ablation"] = {"skipped": "hydramq extension not available"}
        return
    server = getattr(ctx, "server", None)
    if server is None or not hasattr(server, "sharedir"):
        note = ("skipped: the server was given with --dsn / DATABASE_URL, and the bench only "
                "writes the core variant's install script into the extension directory of a "
                "server it started itself (run without --dsn)")
        ctx.progress.note(note)
        ctx.results["ablation"] = {"skipped": note}
        return
    base = conninfo_to_dict(ctx.dsn)["dbname"]
    dsns = {v: make_conninfo(ctx.dsn, dbname=f"{base}_{v}") for v in VARIANTS}
    shapes = [sh for sh in drain_shapes(ctx) if sh.name in ("S1", "S2")]
    measurements = [sh.name for sh in shapes] + list(ENQUEUE_KINDS)
    entry: dict[str, Any] = {
        "params": {"rounds": ctx.sizes.rounds, "enqueue_seconds": ctx.sizes.enqueue_seconds,
                   "databases": {v: f"{base}_{v}" for v in VARIANTS},
                   "shapes": {sh.name: {"channels": sh.channels, "per_channel": sh.per_channel,
                                        "messages": sh.messages} for sh in shapes},
                   "order": "per measurement: full, core in odd rounds, core, full in even "
                            "ones"},
        "scripts": {}}
    for m in measurements:
        entry[m] = {"runs": {v: [] for v in VARIANTS}}
    ctx.results["ablation"] = entry
    try:
        ctx.progress.start("create full and core databases")
        create_variants(ctx, server, dsns, entry["scripts"])
        sc = entry["scripts"]
        ctx.progress.done(f"{sc['blocks_removed']} flows blocks ({sc['lines_removed']} lines) "
                          f"stripped; core = hydramq {sc['core_version']}")
        conns = {v: psycopg.connect(d, autocommit=True) for v, d in dsns.items()}
        try:
            for r in range(ctx.sizes.rounds):
                ctx.progress.note(f"round {r + 1}/{ctx.sizes.rounds}")
                for sh in shapes:
                    for v in rotated(VARIANTS, r):
                        res = guarded(ctx, conns[v], "hydramq", run_drain_on, ctx, conns[v],
                                      dsns[v], v, sh, r)
                        entry[sh.name]["runs"][v].append(res.as_dict())
                for kind in ENQUEUE_KINDS:
                    for v in rotated(VARIANTS, r):
                        res = guarded(ctx, conns[v], "hydramq", run_enqueue_on, ctx, conns[v],
                                      dsns[v], v, kind, r)
                        entry[kind]["runs"][v].append(res.as_dict())
        finally:
            for c in conns.values():
                c.close()
    except (psycopg.Error, RuntimeError, OSError) as exc:
        ctx.progress.done(f"ERROR: {exc}")
        entry["error"] = str(exc)
    finally:
        with contextlib.suppress(psycopg.Error), \
                psycopg.connect(ctx.dsn, autocommit=True) as conn:
            for dsn in dsns.values():
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                    sql.Identifier(conninfo_to_dict(dsn)["dbname"])))
    rows, targets = [], []
    for m in measurements:
        e = entry[m]
        rates = {v: median([x["msgs_per_s"] for x in e["runs"][v] if x["complete"]])
                 for v in VARIANTS}
        e["median_msgs_per_s"] = rates
        e["full_to_core"] = ratio(rates["full"], rates["core"])
        e["round_ratios"] = [ratio(a["msgs_per_s"], b["msgs_per_s"]) for a, b in
                             zip(e["runs"]["full"], e["runs"]["core"], strict=False)]
        fr = e["full_to_core"]
        rows.append({"measurement": f"{m:<6}",
                     "full": "n/a" if rates["full"] is None else f"{rates['full']:,.0f}",
                     "core": "n/a" if rates["core"] is None else f"{rates['core']:,.0f}",
                     "full/core": "n/a" if fr is None else f"{fr:.2f}x",
                     "rounds": ", ".join("n/a" if x is None else f"{x:.2f}"
                                         for x in e["round_ratios"])})
        verdict = "n/a" if fr is None else ("PASS" if fr >= TARGET else "MISS")
        targets.append({"metric": f"ablation {m} full/core", "target": TARGET, "op": ">=",
                        "value": None if fr is None else round(fr, 3), "verdict": verdict})
    entry["summary"] = rows
    entry["targets"] = targets
