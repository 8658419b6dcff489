"""Coordination from pg_cron with no Python process: ``hydra.coordinate_loop()`` scheduled as a
``* * * * *`` job (docs/managed-postgres.md, "Coordination from pg_cron").

The pg_cron test needs a cluster that preloads pg_cron, and pg_cron is installed here only for
Debian's PostgreSQL 15 (postgresql-15-cron): it starts its own throwaway Debian cluster, runs in
the ``HYDRAMQ_TEST_SERVER=debian`` run and is skipped, with that reason, in the embedded
PostgreSQL 18 run. The procedure's own tests (what a call does and returns, its arguments, its
indifference to the caller's search_path) use the session's server and run on both.

How "on time" is measured, server side, with no client clock: the pg_cron cluster runs with
``track_commit_timestamp = on``, so ``pg_xact_commit_timestamp(xmin)`` of a message row is the
moment the transaction that last changed it committed -- when the change became visible. No
worker touches these messages once coordination has moved them, so that is the coordination
round's commit. Due times are read from the rows before the change (``available_at`` of a
delayed or backed-off message, ``lease_expires_at`` of a leased one), are the cron tick itself
(a whole minute), or, for a DAG child, the server clock read by the statement that completed its
parent, before that statement committed (so the lateness is over-, never under-estimated).
"""

from __future__ import annotations

import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import pytest
from flow_helpers import dequeue, enqueue, fail
from psycopg import sql
from psycopg.conninfo import make_conninfo

from hydramq.server import DEBIAN_MAJOR, LocalServer, ServerError, debian_bindir, start_server

Conn = psycopg.Connection[Any]
T = TypeVar("T")

LOOP = "CALL hydra.coordinate_loop()"  # the job's command, exactly as the docs give it
CRON_DB = "postgres"  # pg_cron's own database (cron.database_name)
APP_DB = "hydramq_app"  # where hydramq lives: the jobs reach it with cron.schedule_in_database
JOB_ROLE = "hydramq_cron"  # the role the jobs run as: LOGIN, no superuser, hydra.grant_admin
ON_TIME = timedelta(seconds=2)
SCHEDULES = 20  # schedules ticking at the minute both jobs hand over to their next runs


def _poll(what: str, probe: Callable[[], T | None], timeout: float, every: float = 0.1) -> T:
    """probe() until it returns something other than None; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        found = probe()
        if found is not None:
            return found
        if time.monotonic() > deadline:
            pytest.fail(f"gave up after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


# --------------------------------------------------------------------------------------------
# A cluster that preloads pg_cron
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cron_server() -> Iterator[LocalServer]:
    kind = os.environ.get("HYDRAMQ_TEST_SERVER", "embedded").strip() or "embedded"
    if os.environ.get("DATABASE_URL"):
        pytest.skip("the pg_cron test starts its own cluster preloading pg_cron; DATABASE_URL "
                    "is set (run it with HYDRAMQ_TEST_SERVER=debian)")
    if kind != "debian":
        pytest.skip(f"pg_cron is installed only for Debian's PostgreSQL {DEBIAN_MAJOR} "
                    f"(postgresql-{DEBIAN_MAJOR}-cron), not for the {kind} server: it runs with "
                    "HYDRAMQ_TEST_SERVER=debian")
    bindir = debian_bindir()
    if bindir is None:
        pytest.fail(f"HYDRAMQ_TEST_SERVER=debian but PostgreSQL {DEBIAN_MAJOR} is not installed",
                    pytrace=False)
    try:
        server = start_server("debian", settings={
            "shared_preload_libraries": "pg_cron",
            "cron.database_name": CRON_DB,
            # Jobs connect with libpq (cron.use_background_workers is off) to cron.host: this
            # cluster listens on 127.0.0.1 only, where initdb --auth=trust lets them in.
            "cron.host": "127.0.0.1",
            "track_commit_timestamp": True,  # when each change became visible (see above)
        })
    except ServerError as exc:
        pytest.fail(f"cannot start PostgreSQL {DEBIAN_MAJOR} with pg_cron preloaded "
                    f"(.ci/run installs postgresql-{DEBIAN_MAJOR}-cron):\n{exc}", pytrace=False)
    try:
        server.install_extension_files()
        with psycopg.connect(server.dsn(CRON_DB), autocommit=True) as conn:
            conn.execute("CREATE EXTENSION pg_cron")
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(APP_DB)))
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(JOB_ROLE)))
        with psycopg.connect(server.dsn(APP_DB), autocommit=True) as conn:
            conn.execute("CREATE EXTENSION hydramq")
            conn.execute("SELECT hydra.grant_admin(%s::regrole)", (JOB_ROLE,))
        yield server
    finally:
        server.stop()


def _commit_lateness(conn: Conn, message_id: int, due: datetime) -> timedelta:
    row = conn.execute(
        "SELECT pg_xact_commit_timestamp(m.xmin) - %s::timestamptz FROM hydra.message m"
        " WHERE m.id = %s", (due, message_id),
    ).fetchone()  # fmt: skip
    assert row is not None and row[0] is not None, message_id
    lateness: timedelta = row[0]
    return lateness


def _row(conn: Conn, query: str, params: Any = ()) -> Any:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0] if len(row) == 1 else row


def test_two_cron_jobs_do_all_time_driven_work_on_time_and_fire_each_tick_once(
    cron_server: LocalServer,
) -> None:
    # Two jobs, both "* * * * *": they run side by side through every minute and hand over to
    # their next runs together at each minute, so each due item and each cron tick meets two
    # competing loops. The items fall due during the first runs' loops; the schedules tick,
    # and one delayed message falls due, at the minute when the first runs end and the next
    # ones begin.
    server = cron_server
    with psycopg.connect(server.dsn(CRON_DB), autocommit=True) as cron, \
         psycopg.connect(server.dsn(APP_DB), autocommit=True) as app:  # fmt: skip
        jobs = [
            _row(cron, "SELECT cron.schedule_in_database(%s, '* * * * *', %s, %s, %s)",
                 (name, LOOP, APP_DB, JOB_ROLE))
            for name in ("hydramq-a", "hydramq-b")
        ]  # fmt: skip
        try:
            _check_jobs(server, cron, app, jobs)
        finally:
            for job in jobs:
                cron.execute("SELECT cron.unschedule(%s)", (job,))
            cron.execute(
                "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                (JOB_ROLE,),
            )


def _check_jobs(server: LocalServer, cron: Conn, app: Conn, jobs: list[int]) -> None:
    # 1. Both jobs' first runs are looping (pg_cron starts them at the next whole minute, m1).
    def both_running() -> datetime | None:
        row = cron.execute(
            "SELECT date_trunc('minute', min(d.start_time)), count(DISTINCT d.jobid)"
            "  FROM cron.job_run_details d"
            " WHERE d.jobid = ANY (%s) AND d.status IN ('starting', 'running')",
            (jobs,),
        ).fetchone()
        looping = _row(app,
            "SELECT count(*) FROM pg_stat_activity WHERE usename = %s AND query = %s"
            " AND state = 'active'", (JOB_ROLE, LOOP))  # fmt: skip
        return row[0] if row and row[1] == 2 and looping == 2 else None

    m1 = _poll("the first runs of both pg_cron jobs", both_running, timeout=80)
    m2 = m1 + timedelta(minutes=1)

    # 2. Time-driven work falling due a few seconds from now, during the first runs.
    due: dict[str, tuple[int, datetime]] = {}

    _, delayed = enqueue(app, {"case": "delayed"}, queue="delayed", delay_secs=2)
    due["delayed message released"] = (delayed, _row(
        app, "SELECT available_at FROM hydra.message WHERE id = %s", (delayed,)))

    _, backed_off = enqueue(app, {"case": "back-off"}, queue="backoff", num_attempts=2,
                            lock_secs=2)
    (leased,) = dequeue(app, queue="backoff")
    assert fail(app, leased) == "locked"
    due["back-off unlocked"] = (backed_off, _row(
        app, "SELECT available_at FROM hydra.message WHERE id = %s AND state = 'locked'",
        (backed_off,)))

    _, abandoned = enqueue(app, {"case": "lease"}, queue="lease", max_processing_secs=2)
    dequeue(app, queue="lease")  # and never settled: a crashed worker
    due["expired lease settled"] = (abandoned, _row(
        app, "SELECT lease_expires_at FROM hydra.message WHERE id = %s", (abandoned,)))

    _, parent = enqueue(app, {"case": "parent"}, queue="dag")
    _, child = enqueue(app, {"case": "child"}, queue="dag-child", depends_on=[parent])
    (leased,) = dequeue(app, queue="dag")
    completed_at, done = _row(app, "SELECT clock_timestamp(), hydra.complete(%s, %s)",
                              (leased["id"], leased["lease_token"]))
    assert done
    due["DAG child released"] = (child, completed_at)

    # The handover: one message due just after m2, and schedules whose next tick is m2.
    _, handover = enqueue(app, {"case": "handover"}, queue="delayed", delay_secs=_row(
        app, "SELECT extract(epoch FROM %s::timestamptz + interval '0.3 s' - now())::numeric",
        (m2,)))
    due["delayed message released just after the minute"] = (handover, _row(
        app, "SELECT available_at FROM hydra.message WHERE id = %s", (handover,)))
    for i in range(SCHEDULES):
        next_fire = _row(app, "SELECT hydra.schedule_set(%s, '* * * * *', %s::jsonb, 'cron')",
                         (f"every-minute-{i}", f'{{"schedule": {i}}}'))
        assert next_fire == m2, "the test set up its schedules too late: they tick after m2"

    # 3. Wait (bounded) for every change, and for the first runs to end.
    expected = {
        delayed: "ready", backed_off: "ready", abandoned: "failed", child: "ready",
        handover: "ready",
    }

    def all_done() -> bool | None:
        states = dict(app.execute(
            "SELECT id, state::text FROM hydra.message WHERE id = ANY (%s)",
            (list(expected),)).fetchall())  # fmt: skip
        fired = _row(app, "SELECT count(*) FROM hydra.schedule WHERE last_fire_at = %s", (m2,))
        ended = _row(cron,
            "SELECT count(*) FROM cron.job_run_details WHERE jobid = ANY (%s)"
            " AND start_time < %s AND end_time IS NOT NULL", (jobs, m2))  # fmt: skip
        return True if states == expected and fired == SCHEDULES and ended == 2 else None

    remaining = (m2 - _row(app, "SELECT clock_timestamp()")).total_seconds()
    _poll("the coordination of every item, the cron ticks and the end of the first runs",
          all_done, timeout=remaining + 15)

    # 4. Each change became visible within ON_TIME of being due, and not before.
    lateness = {what: _commit_lateness(app, mid, when) for what, (mid, when) in due.items()}
    assert all(timedelta(0) <= late <= ON_TIME for late in lateness.values()), lateness

    # Each schedule fired exactly once for the tick at m2, on time, whichever loop fired it.
    fired = app.execute(
        "SELECT (m.payload ->> 'schedule')::int, count(*),"
        "       max(pg_xact_commit_timestamp(m.xmin)) - %s::timestamptz"
        "  FROM hydra.message m WHERE m.queue = 'cron' GROUP BY 1 ORDER BY 1",
        (m2,),
    ).fetchall()
    assert [(s, n) for s, n, _ in fired] == [(i, 1) for i in range(SCHEDULES)]
    assert all(timedelta(0) <= late <= ON_TIME for _, _, late in fired), fired
    assert _row(app, "SELECT count(*) FROM hydra.schedule WHERE next_fire_at = %s",
                (m2 + timedelta(minutes=1),)) == SCHEDULES

    # The first runs ended with their minute and succeeded; pg_cron never ran a job twice at
    # once; no run failed.
    runs = cron.execute(
        "SELECT jobid, status, start_time, end_time FROM cron.job_run_details"
        " WHERE jobid = ANY (%s) ORDER BY jobid, start_time", (jobs,),
    ).fetchall()  # fmt: skip
    assert [r[1] for r in runs if r[1] not in ("starting", "running", "succeeded")] == [], runs
    first = [r for r in runs if r[2] < m2]
    assert [(r[0], r[1]) for r in first] == [(job, "succeeded") for job in jobs], runs
    assert all(m2 - ON_TIME <= r[3] <= m2 + ON_TIME for r in first), runs
    for job in jobs:
        mine = [r for r in runs if r[0] == job]
        pairs = zip(mine, mine[1:], strict=False)
        assert all(a[3] is not None and a[3] <= b[2] for a, b in pairs), mine

    # What each first run did is in the server log (pg_cron records only "1 row").
    done_lines = re.findall(r"hydramq: coordinate_loop: (\d+) rounds in [\d.]+ s",
                            Path(server.log_file).read_text(errors="replace"))
    assert len(done_lines) >= 2 and all(int(n) > 1 for n in done_lines), done_lines


# --------------------------------------------------------------------------------------------
# The procedure itself (every server)
# --------------------------------------------------------------------------------------------


def _seconds_left_in(conn: Conn, period_secs: int) -> float:
    return float(_row(conn,
        "SELECT %s - extract(epoch FROM clock_timestamp())::numeric %% %s",
        (period_secs, period_secs)))  # fmt: skip


def _start_with_seconds_left(conn: Conn, period_secs: int, needed: float) -> None:
    """Sleep into the next period unless the current one has ``needed`` seconds left (periods
    count from midnight UTC, as hydra.coordinate_loop counts them)."""
    left = _seconds_left_in(conn, period_secs)
    if left < needed:
        time.sleep(left + 0.05)


def _call_loop(dsn: str, arguments: str, result: dict[str, Any], setup: str = "") -> None:
    """CALL hydra.coordinate_loop(arguments) on a connection of its own (for a thread); its
    result row and the seconds then left in a 10-second period go into ``result``."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        if setup:
            conn.execute(setup)
        result["row"] = _row(conn, f"CALL hydra.coordinate_loop({arguments})")
        result["left"] = _seconds_left_in(conn, 10)


def test_coordinate_loop_commits_every_round_until_its_period_ends(db: Conn, dsn: str) -> None:
    # A message due a second after the call starts is visible to another session while the
    # call is still looping (each round commits), and the call returns at the end of its
    # 10-second period (periods count from midnight UTC) with what it did.
    _start_with_seconds_left(db, 10, 6)
    _, message = enqueue(db, {}, delay_secs=1)
    result: dict[str, Any] = {}
    looping = threading.Thread(target=_call_loop, args=(
        dsn, "period => '10 seconds', poll_secs => 0.1", result))  # fmt: skip
    looping.start()
    try:
        _poll("the delayed message to be released", lambda: db.execute(
            "SELECT true FROM hydra.message WHERE id = %s AND state = 'ready'", (message,)
        ).fetchone(), timeout=8)
        assert looping.is_alive(), "the release became visible only when the call returned"
    finally:
        looping.join(timeout=15)
    rounds, transitions, retried = result["row"]
    assert rounds > 2
    assert transitions == {"MESSAGE_RELEASED": 1}
    assert retried == 0
    assert result["left"] > 8  # it returned at the start of the next 10-second period


def test_a_round_that_meets_a_lock_timeout_is_rolled_back_and_retried(
    db: Conn, dsn: str, connect: Callable[..., Conn]
) -> None:
    # While another session holds hydra.schedule, every round of a caller with a lock_timeout
    # fails when it reaches the schedules (55P03) and is rolled back whole: the message due
    # meanwhile stays pending. The loop goes on, and once the lock is gone a round releases it.
    _start_with_seconds_left(db, 10, 7)
    locker = connect(autocommit=False)
    locker.execute("LOCK TABLE hydra.schedule IN ACCESS EXCLUSIVE MODE")
    _, message = enqueue(db, {}, delay_secs=0.1)
    result: dict[str, Any] = {}
    looping = threading.Thread(target=_call_loop, args=(
        dsn, "period => '10 seconds', poll_secs => 0.1", result,
        "SET lock_timeout = '100ms'"))  # fmt: skip
    looping.start()
    try:
        _poll("a round to meet the lock", lambda: db.execute(
            "SELECT true FROM pg_locks WHERE relation = 'hydra.schedule'::regclass"
            " AND NOT granted").fetchone(), timeout=5)  # fmt: skip
        time.sleep(1)  # a few rounds more, all rolled back
        assert _row(db, "SELECT state::text FROM hydra.message WHERE id = %s",
                    (message,)) == "pending"
        locker.rollback()
        _poll("the release after the lock is gone", lambda: db.execute(
            "SELECT true FROM hydra.message WHERE id = %s AND state = 'ready'", (message,)
        ).fetchone(), timeout=5)
    finally:
        locker.rollback()
        looping.join(timeout=15)
    rounds, transitions, retried = result["row"]
    assert retried >= 2 and rounds > retried
    assert transitions == {"MESSAGE_RELEASED": 1}


@pytest.mark.parametrize(
    ("arguments", "named"),
    [
        ("period => '0 seconds'", "period"),
        ("period => '2 days'", "period"),
        ("period => NULL", "period"),
        ("poll_secs => -1", "poll_secs"),
        ("poll_secs => 61", "poll_secs"),
        ("poll_secs => NULL", "poll_secs"),
        ("batch => 0", "batch"),
        ("failed_retention => '-1 day'", "failed_retention"),
    ],
)
def test_coordinate_loop_rejects_bad_arguments_before_doing_anything(
    db: Conn, arguments: str, named: str
) -> None:
    _, message = enqueue(db, {})
    db.execute("UPDATE hydra.message SET state = 'locked', available_at = now() - interval '1s'"
               " WHERE id = %s", (message,))  # due work that a round would do
    with pytest.raises(psycopg.errors.InvalidParameterValue) as caught:
        db.execute(f"CALL hydra.coordinate_loop({arguments})")
    assert (caught.value.diag.message_primary or "").startswith(f"{named}:")
    assert _row(db, "SELECT state::text FROM hydra.message WHERE id = %s", (message,)) == "locked"


def test_coordinate_loop_binds_nothing_through_the_callers_search_path(
    db: Conn, dsn: str
) -> None:
    # The procedure runs as its caller with the caller's search_path (it may not pin one: it
    # commits). Look-alikes planted in public, which this caller searches before pg_catalog,
    # would each raise if the procedure ever bound one of them.
    role = f"hydra_cron_{uuid.uuid4().hex[:8]}"
    db.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    db.execute("SELECT hydra.grant_admin(%s::regrole)", (role,))
    db.execute("CREATE SCHEMA IF NOT EXISTS public")
    db.execute("""
        CREATE FUNCTION public.hijacked() RETURNS boolean LANGUAGE plpgsql AS
            $$ BEGIN RAISE EXCEPTION 'a planted look-alike in public ran'; END $$;
        CREATE FUNCTION public.int4pl_(integer, integer) RETURNS integer LANGUAGE sql
            AS 'SELECT public.hijacked()::int';
        CREATE OPERATOR public.+ (LEFTARG = integer, RIGHTARG = integer,
                                  FUNCTION = public.int4pl_);
        CREATE FUNCTION public.numlt_(numeric, numeric) RETURNS boolean LANGUAGE sql
            AS 'SELECT public.hijacked()';
        CREATE OPERATOR public.< (LEFTARG = numeric, RIGHTARG = numeric,
                                  FUNCTION = public.numlt_);
        CREATE OPERATOR public.> (LEFTARG = numeric, RIGHTARG = numeric,
                                  FUNCTION = public.numlt_);
        CREATE FUNCTION public.tsge_(timestamptz, timestamptz) RETURNS boolean LANGUAGE sql
            AS 'SELECT public.hijacked()';
        CREATE OPERATOR public.>= (LEFTARG = timestamptz, RIGHTARG = timestamptz,
                                   FUNCTION = public.tsge_);
        CREATE FUNCTION public.intvgt_(interval, interval) RETURNS boolean LANGUAGE sql
            AS 'SELECT public.hijacked()';
        CREATE OPERATOR public.> (LEFTARG = interval, RIGHTARG = interval,
                                  FUNCTION = public.intvgt_);
        CREATE OPERATOR public.< (LEFTARG = interval, RIGHTARG = interval,
                                  FUNCTION = public.intvgt_);
        CREATE FUNCTION public.clock_timestamp() RETURNS timestamptz LANGUAGE sql
            AS 'SELECT public.hijacked()::int::text::timestamptz';
        CREATE FUNCTION public.pg_sleep(double precision) RETURNS void LANGUAGE sql
            AS 'SELECT public.hijacked()';
        CREATE FUNCTION public.pg_sleep(numeric) RETURNS void LANGUAGE sql
            AS 'SELECT public.hijacked()';
        CREATE FUNCTION public.date_bin(interval, timestamptz, timestamptz)
            RETURNS timestamptz LANGUAGE sql
            AS 'SELECT public.hijacked()::int::text::timestamptz';
        CREATE FUNCTION public.current_setting(text) RETURNS text LANGUAGE sql
            AS 'SELECT public.hijacked()::text';
        CREATE FUNCTION public.jsonb_each_text(jsonb) RETURNS SETOF record LANGUAGE sql
            AS 'SELECT public.hijacked()';
        GRANT USAGE ON SCHEMA public TO PUBLIC;
    """)
    _, message = enqueue(db, {}, delay_secs=0.2)
    try:
        with psycopg.connect(make_conninfo(dsn, user=role), autocommit=True) as conn:
            conn.execute("SET search_path = public, pg_catalog")
            with pytest.raises(psycopg.errors.RaiseException):
                conn.execute("SELECT 1 OPERATOR(public.+) 1")  # the plant works
            rounds, transitions, retried = _row(
                conn, "CALL hydra.coordinate_loop(period => '2 seconds', poll_secs => 0.05)")
        assert rounds >= 1 and retried == 0
        assert transitions in ({}, {"MESSAGE_RELEASED": 1})
    finally:
        db.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        db.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
