"""Packaging (SPEC §12): the install scripts are plain SQL that runs as a non-superuser inside
CREATE EXTENSION's one transaction (so they also work under pg_tle), the queue tables are part
of pg_dump, and DROP EXTENSION leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from flow_helpers import complete, coordinate_until_quiet, dequeue, enqueue, fail
from psycopg import sql
from psycopg.conninfo import make_conninfo

from hydramq.server import LocalServer, extension_files

Conn = psycopg.Connection[Any]

QUEUE_TABLES = {
    "hydra.message",
    "hydra.message_id_seq",
    "hydra.dependency",
    "hydra.parent_outcome",
    "hydra.channel_limit",
}


def _control_file() -> Path:
    return next(p for p in extension_files() if p.suffix == ".control")


def _scripts() -> list[Path]:
    scripts = [p for p in extension_files() if p.suffix == ".sql"]
    assert any(p.name == "hydramq--0.1.0.sql" for p in scripts)
    return scripts


def _code_only(text: str) -> str:
    """The SQL text without comments and single-quoted literals (dollar-quoted bodies are
    code and are kept, their delimiters blanked), so that words in prose do not count."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        if text.startswith("--", i):
            end = text.find("\n", i)
            i = n if end < 0 else end
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            i = n if end < 0 else end + 2
        elif text[i] == "'":
            i += 1
            while i < n:
                if text[i] == "'" and text.startswith("''", i):
                    i += 2
                elif text[i] == "'":
                    i += 1
                    break
                else:
                    i += 1
            out.append("''")
        elif (m := re.compile(r"\$[A-Za-z_]*\$").match(text, i)) is not None:
            out.append(" ")
            i = m.end()
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


@pytest.fixture
def scratch(db: Conn) -> Iterator[dict[str, list[str]]]:
    """Databases and roles a test creates on the server; dropped afterwards."""
    made: dict[str, list[str]] = {"databases": [], "roles": []}
    try:
        yield made
    finally:
        for name in made["databases"]:
            db.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
        for name in made["roles"]:
            db.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))


def _new_database(db: Conn, scratch: dict[str, list[str]], owner: str | None = None) -> str:
    name = f"pkg_{uuid.uuid4().hex[:12]}"
    query = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
    if owner:
        query += sql.SQL(" OWNER {}").format(sql.Identifier(owner))
    db.execute(query)
    scratch["databases"].append(name)
    return name


# --------------------------------------------------------------------------------------------
# The scripts themselves
# --------------------------------------------------------------------------------------------


def test_install_script_has_no_psql_meta_command_but_the_echo_guard() -> None:
    for script in _scripts():
        lines = script.read_text().splitlines()
        meta = [(no, line) for no, line in enumerate(lines, 1) if line.lstrip().startswith("\\")]
        assert len(meta) == 1, f"{script.name}: psql meta-commands {meta}"
        no, line = meta[0]
        assert line.startswith("\\echo ") and line.rstrip().endswith("\\quit")
        # The guard comes before any statement.
        before = _code_only("\n".join(lines[: no - 1])).strip()
        assert before == "", f"{script.name}: statements before the \\echo guard"


def test_install_script_has_no_transaction_control_and_no_create_extension() -> None:
    for script in _scripts():
        lines = script.read_text().splitlines()
        text = "\n".join(ln for ln in lines if not ln.lstrip().startswith("\\"))
        # A procedure's body may COMMIT when it is CALLed (hydra.coordinate_loop commits
        # between rounds); the script's own statements may not.
        text = re.sub(r"CREATE\s+OR\s+REPLACE\s+PROCEDURE\b.*?\$\$.*?\$\$", "", text,
                      flags=re.IGNORECASE | re.DOTALL)
        code = _code_only(text)
        for pattern in (
            r"\bBEGIN\s*(TRANSACTION|WORK)?\s*;",
            r"\bSTART\s+TRANSACTION\b",
            r"\b(COMMIT|ROLLBACK|SAVEPOINT|END\s+TRANSACTION|ABORT)\b",
            r"\bRELEASE\s+SAVEPOINT\b",
            r"\bCREATE\s+EXTENSION\b",
            r"\bSET\s+(SESSION\s+)?ROLE\b",
            r"\bCREATE\s+ROLE\b",
        ):
            found = re.search(pattern, code, flags=re.IGNORECASE)
            assert found is None, f"{script.name}: {found.group(0)!r}"


def test_control_file_lets_a_non_superuser_install() -> None:
    settings = dict(
        (k.strip(), v.strip().strip("'"))
        for k, v in (
            line.split("=", 1)
            for line in _control_file().read_text().splitlines()
            if "=" in line and not line.lstrip().startswith("#")
        )
    )
    assert settings["superuser"] == "false"
    assert settings["relocatable"] == "false"


def test_default_version_is_the_newest_and_every_release_upgrades_to_it() -> None:
    names = [p.name[len("hydramq--") : -len(".sql")] for p in _scripts()]
    installs = sorted((n for n in names if "--" not in n), key=_version_key)
    updates = {tuple(n.split("--")) for n in names if "--" in n}
    default = re.search(r"default_version\s*=\s*'([^']+)'", _control_file().read_text())
    assert default is not None and default.group(1) == installs[-1]
    for older in installs[:-1]:
        assert (older, installs[-1]) in updates, f"no upgrade script from {older}"


# Released scripts never change (docs/releasing.md): a release adds its scripts' digests here.
RELEASED_SCRIPTS = {
    "hydramq--0.1.0.sql": "5afea958de3a063cdc4543fbf92d6fa03a2682ef95385d5aeee105aab4821853",
}


def test_released_scripts_are_unchanged() -> None:
    by_name = {p.name: p for p in _scripts()}
    for name, digest in RELEASED_SCRIPTS.items():
        assert name in by_name, f"released script {name} is gone"
        assert hashlib.sha256(by_name[name].read_bytes()).hexdigest() == digest, (
            f"{name} changed since its release: put the change in the next version"
        )


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


# --------------------------------------------------------------------------------------------
# Installing, dumping, dropping
# --------------------------------------------------------------------------------------------


def test_database_owner_without_superuser_can_create_and_use_the_extension(
    db: Conn, dsn: str, scratch: dict[str, list[str]]
) -> None:
    owner = f"hydra_owner_{uuid.uuid4().hex[:8]}"
    db.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD 'secret'").format(sql.Identifier(owner)))
    scratch["roles"].append(owner)
    name = _new_database(db, scratch, owner=owner)

    with psycopg.connect(
        make_conninfo(dsn, dbname=name, user=owner, password="secret"), autocommit=True
    ) as conn:
        assert conn.execute(
            "SELECT rolsuper FROM pg_roles WHERE rolname = current_user"
        ).fetchone() == (False,)
        conn.execute("CREATE EXTENSION hydramq")
        _, mid = enqueue(conn, {"hello": "world"})
        (leased,) = dequeue(conn)
        assert leased["id"] == mid and complete(conn, leased)
        assert conn.execute(
            "SELECT r.rolname FROM pg_namespace n JOIN pg_roles r ON r.oid = n.nspowner"
            " WHERE n.nspname = 'hydra'"
        ).fetchone() == (owner,)
        conn.execute("DROP EXTENSION hydramq")


def test_create_extension_is_one_transaction(
    db: Conn, dsn: str, scratch: dict[str, list[str]]
) -> None:
    name = _new_database(db, scratch)
    with psycopg.connect(make_conninfo(dsn, dbname=name)) as conn:
        conn.execute("CREATE EXTENSION hydramq")
        assert conn.execute("SELECT to_regnamespace('hydra') IS NOT NULL").fetchone() == (True,)
        conn.rollback()
        assert conn.execute("SELECT to_regnamespace('hydra')").fetchone() == (None,)
        assert conn.execute(
            "SELECT count(*) FROM pg_extension WHERE extname = 'hydramq'"
        ).fetchone() == (0,)


def test_queue_tables_are_marked_for_pg_dump(db: Conn) -> None:
    row = db.execute(
        "SELECT array(SELECT unnest(extconfig)::regclass::text)"
        "  FROM pg_extension WHERE extname = 'hydramq'"
    ).fetchone()
    assert row is not None
    marked = set(row[0])
    assert QUEUE_TABLES <= marked
    assert "hydra.waiting_worker" not in marked  # runtime state, not data


def test_drop_extension_removes_the_schema_and_everything_in_it(
    db: Conn, scratch: dict[str, list[str]]
) -> None:
    role = f"hydra_grantee_{uuid.uuid4().hex[:8]}"
    db.execute(sql.SQL("CREATE ROLE {}").format(sql.Identifier(role)))
    scratch["roles"].append(role)
    db.execute("SELECT hydra.grant_admin(%s::text::regrole)", (role,))
    enqueue(db, {}, channel="c")
    db.execute("SELECT hydra.channel_policy_set('c', max_size => 3)")

    db.execute("DROP EXTENSION hydramq")
    assert db.execute("SELECT to_regnamespace('hydra')").fetchone() == (None,)
    leftovers = db.execute(
        "SELECT 'pg_proc', count(*) FROM pg_proc WHERE proname IN"
        "  ('enqueue', 'dequeue', 'coordinate', '_enqueue_rows', 'grant_admin')"
        " UNION ALL SELECT 'pg_type', count(*) FROM pg_type WHERE typname IN"
        "  ('enqueue_result', 'leased_message', 'event')"
        " UNION ALL SELECT 'pg_class', count(*) FROM pg_class WHERE relname IN"
        "  ('message', 'message_id_seq', 'channel_limit', 'dependency')"
    ).fetchall()
    assert [(c, n) for c, n in leftovers if n] == []
    # The role's grants went with the objects: it can be dropped without DROP OWNED.
    db.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
    scratch["roles"].remove(role)
    # And the extension installs again from scratch.
    db.execute("CREATE EXTENSION hydramq")
    assert enqueue(db, {})[0] == "enqueued"


def test_messages_survive_pg_dump_and_restore(
    db: Conn,
    dsn: str,
    pg_server: LocalServer | None,
    scratch: dict[str, list[str]],
    tmp_path: Path,
) -> None:
    if pg_server is None:
        pytest.skip("needs the session's own server (its pg_dump and pg_restore)")
    pg_dump, pg_restore = pg_server.bindir / "pg_dump", pg_server.bindir / "pg_restore"
    if not (pg_dump.is_file() and pg_restore.is_file()):
        pytest.skip(f"no pg_dump/pg_restore in {pg_server.bindir}")

    db.execute("SELECT hydra.channel_policy_set('capped', max_concurrency => 2, max_size => 9)")
    _, parent = enqueue(db, {"role": "parent"}, channel="capped")
    _, child = enqueue(db, {"role": "child"}, depends_on=[parent], name="child")
    _, doomed = enqueue(db, {"role": "doomed"})
    _, later = enqueue(db, {"role": "later"}, delay_secs=3600, priority=7)
    coordinate_until_quiet(db)
    leased = {m["id"]: m for m in dequeue(db, batch=10, queue="default")}
    assert set(leased) == {parent, doomed}
    assert fail(db, leased[doomed], retry=False) == "failed"
    snapshot = (
        "SELECT id, queue, channel, state, prio, name, attempt, deps_left, payload,"
        "       lease_token, failed_parents FROM hydra.message ORDER BY id"
    )
    before = db.execute(snapshot).fetchall()
    edges_before = db.execute("SELECT * FROM hydra.dependency ORDER BY 1, 2").fetchall()
    policies_before = db.execute("SELECT * FROM hydra.channel_policies").fetchall()

    dump = tmp_path / "queue.dump"
    subprocess.run(
        [str(pg_dump), "-Fc", "-f", str(dump), "-d", dsn],
        check=True,
        capture_output=True,
        timeout=120,
    )
    target = _new_database(db, scratch)
    restored = subprocess.run(
        [str(pg_restore), "--exit-on-error", "-d", make_conninfo(dsn, dbname=target), str(dump)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert restored.returncode == 0, restored.stderr

    with psycopg.connect(make_conninfo(dsn, dbname=target), autocommit=True) as conn:
        assert conn.execute(snapshot).fetchall() == before
        assert conn.execute("SELECT * FROM hydra.dependency ORDER BY 1, 2").fetchall() == (
            edges_before
        )
        assert conn.execute("SELECT * FROM hydra.channel_policies").fetchall() == policies_before
        # The sequence came along: new ids continue after the old ones.
        _, fresh = enqueue(conn, {})
        assert fresh > later
        # The restored queue keeps working: the leased parent completes, its child follows.
        assert complete(conn, leased[parent])
        coordinate_until_quiet(conn)
        assert {m["id"] for m in dequeue(conn, batch=10)} == {child, fresh}


def functions_lacking(db: Conn, setting: str, where: str) -> tuple[int, list[str]]:
    """(how many hydra functions match ``where``, those of them whose SET clauses lack
    ``setting``)."""
    rows = db.execute(
        "SELECT p.oid::regprocedure::text, coalesce(p.proconfig, '{}') FROM pg_proc p"
        " WHERE p.pronamespace = 'hydra'::regnamespace AND " + where
    ).fetchall()
    return len(rows), [name for name, config in rows if setting not in config]


def test_functions_that_disable_a_plan_type_also_disable_jit(db: Conn) -> None:
    # On PostgreSQL 15 a disabled plan type still costs 1e10 when nothing else can do the job
    # (a sort under a window function, say): a plan priced like that is JIT-compiled, with
    # inlining and optimisation, on every execution -- about a second per call.
    checked, lacking = functions_lacking(
        db, "jit=off", "EXISTS (SELECT FROM unnest(p.proconfig) c WHERE c ~ '^enable_[a-z]+=off$')"
    )
    assert checked > 10
    assert lacking == []


def test_indexed_names_compare_bytewise(db: Conn) -> None:
    # Queue, channel and message names are identifiers: compared byte by byte (COLLATE "C"),
    # so their indexes never depend on the database's locale -- faster to search, and safe
    # from an operating-system upgrade that changes a locale's sort order under an index.
    rows = db.execute(
        "SELECT a.attrelid::regclass::text || '.' || a.attname, c.collname FROM pg_index i"
        "  JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)"
        "  JOIN pg_collation c ON c.oid = a.attcollation"
        " WHERE i.indrelid IN (SELECT r.oid FROM pg_class r"
        "                       WHERE r.relnamespace = 'hydra'::regnamespace)"
        "   AND a.atttypid = 'text'::regtype"
    ).fetchall()
    assert {column for column, _ in rows} >= {
        "hydra.message.queue",
        "hydra.message.channel",
        "hydra.message.name",
        "hydra.channel_limit.channel",
    }
    assert sorted({column for column, coll in rows if coll != "C"}) == []


def test_functions_that_read_messages_never_plan_a_sequential_scan(db: Conn) -> None:
    # A queue table swings from empty to millions of rows within seconds: a plan made while
    # the statistics said "empty" must not scan the table on every later call.
    checked, lacking = functions_lacking(
        db, "enable_seqscan=off", "pg_get_functiondef(p.oid) ~ 'hydra\\.message\\M'"
    )
    assert checked > 20
    assert lacking == []
