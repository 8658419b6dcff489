"""hydramq through a real pg_tle 1.5.2, installed as on Amazon RDS (tests/pg_tle_bench.py):
registration by a non-superuser holding ``pgtle_admin``, CREATE EXTENSION by another
non-superuser; ``hydramq install --pg-tle`` and the script of ``hydramq sql --pg-tle``
idempotent on a first install, a re-run and an upgrade; their one-line errors; the upgrade
through pg_tle's update path giving a fresh install's catalog; and look-alike operators planted
in ``public`` never binding, on the pg_tle and the file-based install.

Every test gets databases of its own on the session's pg_tle server (the ``pg_tle_server``
fixture: the session server under HYDRAMQ_TEST_SERVER=pgtle, else one started for these tests).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from catalog import catalog_diff, catalog_snapshot
from flow_helpers import complete, coordinate, dequeue, enqueue, enqueue_many, fail
from pg_tle_bench import (
    APP_OWNER,
    TLE_ADMIN,
    PgTleServer,
    install_hydramq,
    prepare_database,
    register_hydramq,
)
from psycopg import sql
from test_upgrade import _drain, _fill, _states

from hydramq.cli import load_scripts, strip_psql_guard
from hydramq.server import extension_files

Conn = psycopg.Connection[Any]
NewDatabase = Callable[[], str]


# --------------------------------------------------------------------------------------------
# Fixtures and helpers
# --------------------------------------------------------------------------------------------


@pytest.fixture
def new_database(pg_tle_server: PgTleServer) -> Iterator[NewDatabase]:
    """Factory of empty databases on the pg_tle server (no pg_tle, no hydramq); each call
    returns a new one's name; all are dropped after the test."""
    made: list[str] = []

    def factory() -> str:
        name = f"tle_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(pg_tle_server.dsn(), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        made.append(name)
        return name

    yield factory
    with psycopg.connect(pg_tle_server.dsn(), autocommit=True) as conn:
        for name in made:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@pytest.fixture
def new_role(pg_tle_server: PgTleServer) -> Iterator[Callable[[], str]]:
    """Factory of login roles (no superuser, no grant); dropped, with what they own, after the
    test (ask for it before ``new_database``: databases go first)."""
    made: list[str] = []

    def factory() -> str:
        name = f"tle_role_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(pg_tle_server.dsn(), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(name)))
        made.append(name)
        return name

    yield factory
    with psycopg.connect(pg_tle_server.dsn(), autocommit=True) as conn:
        for name in made:
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


@pytest.fixture
def file_based_hydramq(pg_tle_server: PgTleServer) -> Iterator[None]:
    """hydramq's control file and scripts in the pg_tle server's share directory (a
    file-based install), for the duration of the test."""
    copied = []
    for src in extension_files():
        shutil.copy(src, pg_tle_server.extension_dir / src.name)
        copied.append(pg_tle_server.extension_dir / src.name)
    try:
        yield
    finally:
        for path in copied:
            path.unlink()


def connect(server: PgTleServer, dbname: str, user: str = "postgres", **kw: Any) -> Conn:
    return psycopg.connect(server.dsn(dbname, user=user), autocommit=True, **kw)


def hydramq_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """The ``hydramq`` command, as a user runs it (its own process)."""
    code = "import sys; from hydramq.cli import main; sys.exit(main())"
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120
    )


def grant(server: PgTleServer, dbname: str, role: str, *, pgtle_admin: bool, create: bool) -> None:
    with connect(server, dbname) as conn:
        if pgtle_admin:
            conn.execute(sql.SQL("GRANT pgtle_admin TO {}").format(sql.Identifier(role)))
        if create:
            conn.execute(
                sql.SQL("GRANT CREATE ON DATABASE {} TO {}").format(
                    sql.Identifier(dbname), sql.Identifier(role)
                )
            )


def registration(server: PgTleServer, dbname: str) -> list[tuple[Any, ...]]:
    """What pg_tle holds for hydramq in ``dbname``: its functions (one per control file, script
    and update path) with their bodies' digests, and the versions it offers."""
    with connect(server, dbname) as conn:
        return conn.execute(
            "SELECT p.proname, md5(p.prosrc) FROM pg_proc p"
            " WHERE p.pronamespace = 'pgtle'::regnamespace AND p.proname LIKE 'hydramq%'"
            " UNION ALL SELECT 'version ' || version || ' default ' || (version = "
            "   (SELECT default_version FROM pgtle.available_extensions() WHERE name = 'hydramq'))"
            "   , '' FROM pgtle.available_extension_versions() WHERE name = 'hydramq'"
            " ORDER BY 1"
        ).fetchall()


def extension_row(server: PgTleServer, dbname: str) -> tuple[Any, ...] | None:
    with connect(server, dbname) as conn:
        return conn.execute(
            "SELECT extversion, extnamespace::regnamespace::text, extowner::regrole::text"
            " FROM pg_extension WHERE extname = 'hydramq'"
        ).fetchone()


def register_released(
    server: PgTleServer, dbname: str, schema: str | None, user: str = TLE_ADMIN
) -> None:
    """Register 0.1.0 (its script as released) as ``user``; ``schema`` None is what 0.1.0's
    ``hydramq install --pg-tle`` passed. pg_tle makes ``user`` the owner of the registration:
    later versions are registered by it (or a member of it)."""
    prepare_database(server.dsn(), dbname)
    script = strip_psql_guard(load_scripts().installs["0.1.0"])
    with connect(server, dbname, user=user) as conn:
        conn.execute(
            "SELECT pgtle.install_extension('hydramq', '0.1.0', 'hydramq', %s, NULL, %s)",
            (script, schema),
        )


def one_error_line(result: subprocess.CompletedProcess[str], *expected: str) -> str:
    """The command failed cleanly: exit 1, one line on stderr naming ``expected``."""
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for part in expected:
        assert part in lines[0], lines[0]
    return lines[0]


# --------------------------------------------------------------------------------------------
# The RDS way
# --------------------------------------------------------------------------------------------


def test_a_pgtle_admin_registers_and_an_application_role_creates_the_extension(
    pg_tle_server: PgTleServer, new_database: NewDatabase
) -> None:
    db = new_database()
    install_hydramq(pg_tle_server.dsn(), db)
    with connect(pg_tle_server, db) as conn:
        supers = conn.execute(
            "SELECT rolname FROM pg_roles WHERE rolsuper AND rolname IN (%s, %s)",
            (TLE_ADMIN, APP_OWNER),
        ).fetchall()
        assert supers == []
        assert conn.execute("SELECT count(*) FROM pg_available_extensions"
                            " WHERE name = 'hydramq'").fetchone() == (0,)  # no file involved
    assert extension_row(pg_tle_server, db) == (
        load_scripts().default_version, "pg_catalog", APP_OWNER)
    with connect(pg_tle_server, db, user=APP_OWNER) as app:
        message_id = enqueue(app, {"hello": "rds"})[1]
        [leased] = dequeue(app)
        assert leased["id"] == message_id and complete(app, leased)


# --------------------------------------------------------------------------------------------
# hydramq install --pg-tle and hydramq sql --pg-tle: idempotent, upgrades, clean errors
# --------------------------------------------------------------------------------------------


def test_install_pg_tle_installs_then_changes_nothing_on_a_rerun(
    pg_tle_server: PgTleServer, new_role: Callable[[], str], new_database: NewDatabase
) -> None:
    role, db = new_role(), new_database()
    prepare_database(pg_tle_server.dsn(), db)
    grant(pg_tle_server, db, role, pgtle_admin=True, create=True)
    dsn = pg_tle_server.dsn(db, user=role)
    version = load_scripts().default_version

    first = hydramq_cli("install", "--pg-tle", "--dsn", dsn)
    assert first.returncode == 0, first.stderr
    assert first.stdout == f"hydramq {version} installed\n"
    registered = registration(pg_tle_server, db)
    assert extension_row(pg_tle_server, db) == (version, "pg_catalog", role)
    with connect(pg_tle_server, db) as conn:  # pg_tle keeps the script without psql's guard
        row = conn.execute(
            "SELECT prosrc FROM pg_proc WHERE pronamespace = 'pgtle'::regnamespace"
            " AND proname = %s", (f"hydramq--{version}.sql",)
        ).fetchone()
    script = load_scripts().installs[version]
    assert row is not None and strip_psql_guard(script) in row[0] and "\\echo" not in row[0]

    again = hydramq_cli("install", "--pg-tle", "--dsn", dsn)
    assert again.returncode == 0, again.stderr
    assert again.stdout == f"hydramq {version} already installed\n"
    assert registration(pg_tle_server, db) == registered


def test_install_pg_tle_upgrades_a_database_that_registered_0_1_0(
    pg_tle_server: PgTleServer, new_role: Callable[[], str], new_database: NewDatabase
) -> None:
    role, db = new_role(), new_database()
    prepare_database(pg_tle_server.dsn(), db)
    grant(pg_tle_server, db, role, pgtle_admin=True, create=True)
    register_released(pg_tle_server, db, schema="pg_catalog", user=role)
    with connect(pg_tle_server, db, user=role) as conn:
        conn.execute("CREATE EXTENSION hydramq")
    assert extension_row(pg_tle_server, db) == ("0.1.0", "pg_catalog", role)
    dsn = pg_tle_server.dsn(db, user=role)
    version = load_scripts().default_version

    upgraded = hydramq_cli("install", "--pg-tle", "--dsn", dsn)
    assert upgraded.returncode == 0, upgraded.stderr
    assert upgraded.stdout == f"hydramq updated from 0.1.0 to {version}\n"
    registered = registration(pg_tle_server, db)
    assert [r[0] for r in registered] == [
        "hydramq--0.1.0--0.2.0.sql", "hydramq--0.1.0.sql", "hydramq--0.2.0.sql",
        "hydramq.control", "version 0.1.0 default false", "version 0.2.0 default true",
    ]
    again = hydramq_cli("install", "--pg-tle", "--dsn", dsn)
    assert again.returncode == 0, again.stderr
    assert again.stdout == f"hydramq {version} already installed\n"
    assert registration(pg_tle_server, db) == registered
    assert extension_row(pg_tle_server, db) == (version, "pg_catalog", role)


def _psql(
    server: PgTleServer, dbname: str, user: str, script: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(server.bindir / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1",
         "-d", server.dsn(dbname, user=user), "-f", "-"],
        input=script, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_the_sql_pg_tle_script_registers_reruns_and_upgrades_under_psql(
    pg_tle_server: PgTleServer, new_database: NewDatabase
) -> None:
    printed = hydramq_cli("sql", "--pg-tle")
    assert printed.returncode == 0, printed.stderr
    script = printed.stdout
    fresh, old = new_database(), new_database()
    version = load_scripts().default_version

    # A first registration, a re-run that changes nothing, then CREATE EXTENSION.
    prepare_database(pg_tle_server.dsn(), fresh)
    for _ in range(2):
        ran = _psql(pg_tle_server, fresh, TLE_ADMIN, script)
        assert ran.returncode == 0, ran.stderr
        if _ == 0:
            registered = registration(pg_tle_server, fresh)
    assert registration(pg_tle_server, fresh) == registered
    assert [r[0] for r in registered] == [
        "hydramq--0.1.0--0.2.0.sql", "hydramq--0.2.0.sql", "hydramq.control",
        "version 0.2.0 default true",
    ]
    with connect(pg_tle_server, fresh, user=APP_OWNER) as conn:
        conn.execute("CREATE EXTENSION hydramq")
    assert extension_row(pg_tle_server, fresh) == (version, "pg_catalog", APP_OWNER)

    # A database that registered 0.1.0 gets 0.2.0 and the path to it, once.
    register_released(pg_tle_server, old, schema="pg_catalog")
    with connect(pg_tle_server, old, user=APP_OWNER) as conn:
        conn.execute("CREATE EXTENSION hydramq")
        for _ in range(2):
            ran = _psql(pg_tle_server, old, TLE_ADMIN, script)
            assert ran.returncode == 0, ran.stderr
            if _ == 0:
                registered = registration(pg_tle_server, old)
        assert registration(pg_tle_server, old) == registered
        conn.execute("ALTER EXTENSION hydramq UPDATE")
    assert extension_row(pg_tle_server, old) == (version, "pg_catalog", APP_OWNER)


def test_install_pg_tle_says_in_one_line_that_pg_tle_is_missing(
    pg_tle_server: PgTleServer, new_database: NewDatabase
) -> None:
    db = new_database()  # no CREATE EXTENSION pg_tle in it
    result = hydramq_cli("install", "--pg-tle", "--dsn", pg_tle_server.dsn(db))
    one_error_line(result, "hydramq install:", f"pg_tle is not installed in database {db}")
    ran = _psql(pg_tle_server, db, "postgres", hydramq_cli("sql", "--pg-tle").stdout)
    assert ran.returncode != 0 and "pg_tle is not installed in database" in ran.stderr
    assert extension_row(pg_tle_server, db) is None


def test_install_pg_tle_says_in_one_line_that_the_role_lacks_pgtle_admin(
    pg_tle_server: PgTleServer, new_role: Callable[[], str], new_database: NewDatabase
) -> None:
    role, db = new_role(), new_database()
    prepare_database(pg_tle_server.dsn(), db)
    grant(pg_tle_server, db, role, pgtle_admin=False, create=True)
    result = hydramq_cli("install", "--pg-tle", "--dsn", pg_tle_server.dsn(db, user=role))
    one_error_line(result, f"role {role} is not a member of pgtle_admin")
    assert registration(pg_tle_server, db) == []


@pytest.mark.usefixtures("file_based_hydramq")
def test_install_pg_tle_says_in_one_line_that_a_file_based_hydramq_exists(
    pg_tle_server: PgTleServer, new_database: NewDatabase
) -> None:
    db = new_database()
    prepare_database(pg_tle_server.dsn(), db)
    result = hydramq_cli(
        "install", "--pg-tle", "--register-only", "--dsn", pg_tle_server.dsn(db, user=TLE_ADMIN)
    )
    one_error_line(result, "file-based hydramq", "without --pg-tle")
    assert registration(pg_tle_server, db) == []


def test_register_only_goes_with_pg_tle() -> None:
    result = hydramq_cli("install", "--register-only", "--dsn", "dbname=unused")
    assert result.returncode == 2 and "--register-only goes with --pg-tle" in result.stderr


# --------------------------------------------------------------------------------------------
# Upgrade through pg_tle's update path
# --------------------------------------------------------------------------------------------


def test_upgrade_through_pg_tle_gives_the_fresh_catalog_and_keeps_serving(
    pg_tle_server: PgTleServer, new_database: NewDatabase
) -> None:
    up, fresh = new_database(), new_database()
    register_released(pg_tle_server, up, schema="pg_catalog")
    with connect(pg_tle_server, up, user=APP_OWNER) as conn:
        conn.execute("CREATE EXTENSION hydramq VERSION '0.1.0'")
    with connect(pg_tle_server, up) as conn:
        made = _fill(conn)
        before = _states(conn)
    register_hydramq(pg_tle_server.dsn(), up)
    with connect(pg_tle_server, up, user=APP_OWNER) as conn:
        conn.execute("ALTER EXTENSION hydramq UPDATE")
    install_hydramq(pg_tle_server.dsn(), fresh)
    with connect(pg_tle_server, up) as upgraded, connect(pg_tle_server, fresh) as installed:
        assert catalog_diff(catalog_snapshot(upgraded), catalog_snapshot(installed)) == {}
        assert _states(upgraded) == before  # the upgrade changed no message
        # Leases taken before the upgrade complete; what was ready is served.
        for leased in made["leases"]:
            assert complete(upgraded, leased)
        assert _drain(upgraded, "default") == made["ready"]
        assert _drain(upgraded, "flow") == [made["parent"]]
        coordinate(upgraded)
        assert _drain(upgraded, "flow") == [made["child"]]  # released by its parent


# --------------------------------------------------------------------------------------------
# Look-alikes planted in public never bind, on either install path
# --------------------------------------------------------------------------------------------

# Operators that beat pg_catalog's wherever an expression compares a numeric with an integer
# literal (pg_catalog has only numeric-numeric: the planted exact match would win), or an enum
# with a string literal; and functions that would be picked over pg_catalog's for the calls
# hydramq makes if resolution ever looked in public first. Each one counts its calls in a
# sequence (nextval survives a rollback) and raises.
PLANTED_OPERATORS = [
    (op, left, right)
    for op in ("=", "<>", "<", ">", "<=", ">=")
    for left, right in (("numeric", "integer"), ("integer", "numeric"), ("anyenum", "text"))
]
PLANTED_FUNCTIONS = [
    "now()", "length(text)", "nextval(text)", "coalesce(text, text)", "jsonb_typeof(jsonb)",
    "power(numeric, integer)", "make_interval(double precision)", "least(numeric, numeric)",
    "jsonb_build_object(text, bigint)", "format(text, text)", "lower(text)",
]


def plant(conn: Conn) -> None:
    conn.execute("CREATE SEQUENCE public.planted_calls")
    conn.execute("GRANT USAGE, UPDATE ON SEQUENCE public.planted_calls TO PUBLIC")
    body = """
        BEGIN
            PERFORM pg_catalog.nextval('public.planted_calls');
            RAISE EXCEPTION 'planted % ran as %', {what}, current_user;
        END"""
    for n, (op, left, right) in enumerate(PLANTED_OPERATORS):
        conn.execute(
            f"CREATE FUNCTION public.planted_op_{n}(a {left}, b {right}) RETURNS boolean"
            f" LANGUAGE plpgsql AS $${body.format(what=repr(op + ' ' + left))}$$"
        )
        conn.execute(
            f"CREATE OPERATOR public.{op} (LEFTARG = {left}, RIGHTARG = {right},"
            f" FUNCTION = public.planted_op_{n})"
        )
    for signature in PLANTED_FUNCTIONS:
        name, args = signature.split("(")
        params = ", ".join(f"a{i} {t}" for i, t in enumerate(args[:-1].split(", ")) if t)
        conn.execute(
            f"CREATE FUNCTION public.{name}({params}) RETURNS text LANGUAGE plpgsql"
            f" AS $${body.format(what=repr(signature))}$$"
        )


def planted_calls(conn: Conn) -> int:
    row = conn.execute("SELECT CASE WHEN is_called THEN last_value ELSE 0 END"
                       " FROM public.planted_calls").fetchone()
    assert row is not None
    return int(row[0])


def exercise(conn: Conn) -> None:
    """Every kind of call: enqueue (with numeric options, names, channels, dependencies),
    both enqueue_many paths, dequeue, complete, fail, coordinate, cron, schedules, the views."""
    conn.execute("SELECT hydra.channel_policy_set('capped', max_concurrency => 1)")
    first = enqueue(conn, {"a": 1}, channel="capped", name="n1", lock_secs=Decimal("1.5"),
                    lock_secs_factor=Decimal("2.5"), num_attempts=3,
                    max_processing_secs=Decimal("30.5"))[1]
    enqueue(conn, {"a": 2}, channel="capped", delay_secs=Decimal("0.5"), depends_on=[first])
    enqueue_many(conn, [{"payload": {"b": i}, "channel": "many"} for i in range(3)])
    enqueue_many(conn, [{"payload": {"c": i}, "name": f"m{i}", "lock_secs": 2.5}
                        for i in range(3)])
    leased = dequeue(conn, batch=10)
    assert leased
    assert fail(conn, leased[0]) in ("locked", "failed")
    for row in leased[1:]:
        assert complete(conn, row)
    conn.execute("SELECT hydra.schedule_set('tick', '*/5 * * * *', '{\"s\": 1}')")
    conn.execute("UPDATE hydra.schedule SET next_fire_at = pg_catalog.now() - interval '1 minute'")
    coordinate(conn)
    conn.execute("SELECT hydra.cron_next('0 9 * * 1-5', pg_catalog.now(), 'Europe/Paris')")
    conn.execute("SELECT hydra.cron_validate('*/7 * * * *')")
    for view in ("channel_status", "channel_policies", "schedules"):
        conn.execute(f"SELECT * FROM hydra.{view}").fetchall()
    conn.execute("SELECT hydra.schedule_clear('tick')")


@pytest.mark.parametrize("path", ["pg_tle", "file"])
def test_lookalikes_planted_in_public_never_run(
    path: str, pg_tle_server: PgTleServer, new_database: NewDatabase, request: Any
) -> None:
    db = new_database()
    with connect(pg_tle_server, db) as conn:
        plant(conn)
        # The installer's and the callers' search_path put public first.
        conn.execute(
            sql.SQL("ALTER DATABASE {} SET search_path = public, pg_catalog").format(
                sql.Identifier(db)
            )
        )
    if path == "pg_tle":
        install_hydramq(pg_tle_server.dsn(), db)
    else:
        request.getfixturevalue("file_based_hydramq")
        prepare_database(pg_tle_server.dsn(), db)
        with connect(pg_tle_server, db, user=APP_OWNER) as conn:
            conn.execute("CREATE EXTENSION hydramq")
        assert extension_row(pg_tle_server, db) == (
            load_scripts().default_version, "pg_catalog", APP_OWNER)
    with connect(pg_tle_server, db) as conn:
        exercise(conn)
        assert planted_calls(conn) == 0
        # The plants are live: an expression of the same types in this session runs one.
        with pytest.raises(psycopg.errors.RaiseException, match="planted"):
            conn.execute("SELECT 1.5::numeric < 2")
        assert planted_calls(conn) == 1


def test_updating_a_0_1_0_registered_in_public_binds_nothing_planted_there(
    pg_tle_server: PgTleServer, new_database: NewDatabase
) -> None:
    """0.1.0's `install --pg-tle` passed no schema: its extension lives in public, where
    look-alikes may be planted later. The update to 0.2.0 re-creates every function and view:
    none binds to them, and the catalog is a fresh install's but for the extension's schema."""
    up, fresh = new_database(), new_database()
    register_released(pg_tle_server, up, schema=None)
    with connect(pg_tle_server, up, user=APP_OWNER) as conn:
        conn.execute("CREATE EXTENSION hydramq VERSION '0.1.0'")
    assert extension_row(pg_tle_server, up) == ("0.1.0", "public", APP_OWNER)
    with connect(pg_tle_server, up) as conn:
        plant(conn)
        conn.execute(
            sql.SQL("ALTER DATABASE {} SET search_path = public, pg_catalog").format(
                sql.Identifier(up)
            )
        )
    register_hydramq(pg_tle_server.dsn(), up)
    with connect(pg_tle_server, up, user=APP_OWNER) as conn:
        conn.execute("ALTER EXTENSION hydramq UPDATE")
    install_hydramq(pg_tle_server.dsn(), fresh)
    with connect(pg_tle_server, up) as upgraded:
        exercise(upgraded)
        assert planted_calls(upgraded) == 0
    # Snapshots read with public out of the path: deparsing would otherwise qualify the
    # names that a planted look-alike shadows.
    pinned = {"options": "-c search_path=pg_catalog"}
    with connect(pg_tle_server, up, **pinned) as upgraded, connect(
        pg_tle_server, fresh, **pinned
    ) as installed:
        diff = catalog_diff(catalog_snapshot(upgraded), catalog_snapshot(installed))
    version = load_scripts().default_version
    assert diff == {"extension": {
        "only_left": [("hydramq", version, "public", False)],
        "only_right": [("hydramq", version, "pg_catalog", False)],
    }}


def test_a_pg_tle_without_the_schema_argument_still_gets_a_pinned_install(
    pg_tle_server: PgTleServer, new_database: NewDatabase
) -> None:
    """pg_tle before 1.5.0 has install_extension(name, version, description, ext, requires)
    only (given here the API of such a pg_tle: the 1.5 function hidden behind that one):
    the registration uses it, the extension is labelled with the current schema (public), and
    what is planted there still never runs."""
    db = new_database()
    prepare_database(pg_tle_server.dsn(), db)
    with connect(pg_tle_server, db) as conn:
        conn.execute(
            "ALTER FUNCTION pgtle.install_extension(text, text, text, text, text[], text)"
            " RENAME TO install_extension_1_5"
        )
        conn.execute(
            "CREATE FUNCTION pgtle.install_extension(name text, version text,"
            " description text, ext text, requires text[] DEFAULT NULL) RETURNS boolean"
            " LANGUAGE sql RETURN pgtle.install_extension_1_5(name, version, description, ext,"
            " requires, NULL)"
        )
        conn.execute("GRANT EXECUTE ON FUNCTION pgtle.install_extension TO pgtle_admin")
        plant(conn)
        conn.execute(
            sql.SQL("ALTER DATABASE {} SET search_path = public, pg_catalog").format(
                sql.Identifier(db)
            )
        )
    install_hydramq(pg_tle_server.dsn(), db)
    assert extension_row(pg_tle_server, db) == (
        load_scripts().default_version, "public", APP_OWNER)
    with connect(pg_tle_server, db) as conn:
        exercise(conn)
        assert planted_calls(conn) == 0
