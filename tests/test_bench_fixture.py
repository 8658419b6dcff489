"""The test bench itself (tests/conftest.py): isolation between tests, the extension in every
test database, independent sessions from ``connect``, and extension_files()' error."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import psycopg
import pytest

from hydramq.server import ExtensionFilesMissing, LocalServer, extension_files

# What the first test of a pair saw, for the second to check (tests run in file order; each
# second test also holds on its own when run alone).
_seen: dict[str, Any] = {}


def test_a_table_created_in_one_test_exists_there(db: psycopg.Connection[Any]) -> None:
    db.execute("CREATE TABLE bench_leak_probe (id int)")
    db.execute("INSERT INTO bench_leak_probe VALUES (1)")
    row = db.execute("SELECT current_database(), pg_backend_pid()").fetchone()
    assert row is not None
    _seen["database"], _seen["pid"] = row


def test_the_next_test_gets_a_fresh_database_without_it(db: psycopg.Connection[Any]) -> None:
    assert db.execute("SELECT to_regclass('bench_leak_probe')").fetchone() == (None,)
    (name,) = db.execute("SELECT current_database()").fetchone() or (None,)
    assert name != _seen.get("database")
    # The previous test's database was dropped, and its sessions with it.
    if "database" in _seen:
        gone = db.execute(
            "SELECT NOT EXISTS (SELECT FROM pg_database WHERE datname = %s)"
            " AND NOT EXISTS (SELECT FROM pg_stat_activity WHERE pid = %s)",
            (_seen["database"], _seen["pid"]),
        ).fetchone()
        assert gone == (True,)


def test_every_test_database_has_the_extension_and_its_hydra_schema(
    db: psycopg.Connection[Any],
) -> None:
    assert db.execute("SELECT to_regnamespace('hydra') IS NOT NULL").fetchone() == (True,)
    row = db.execute("SELECT extname FROM pg_extension WHERE extname = 'hydramq'").fetchone()
    assert row == ("hydramq",)


def test_connect_opens_independent_sessions_on_the_same_database(
    db: psycopg.Connection[Any], connect: Any
) -> None:
    first, second = connect(), connect(autocommit=False)
    assert first.autocommit and not second.autocommit
    pids = {c.execute("SELECT pg_backend_pid()").fetchone() for c in (db, first, second)}
    assert len(pids) == 3
    databases = {c.execute("SELECT current_database()").fetchone() for c in (db, first, second)}
    assert len(databases) == 1
    # Uncommitted work in one session is invisible to the others.
    second.execute("CREATE TABLE bench_txn_probe (id int)")
    assert first.execute("SELECT to_regclass('bench_txn_probe')").fetchone() == (None,)
    second.commit()
    assert first.execute("SELECT to_regclass('bench_txn_probe')").fetchone() is not None


def test_connect_passes_options_through(connect: Any) -> None:
    from psycopg.rows import dict_row

    conn = connect(row_factory=dict_row)
    assert conn.execute("SELECT 1 AS one").fetchone() == {"one": 1}


def test_dsn_names_the_same_database_as_db(dsn: str, db: psycopg.Connection[Any]) -> None:
    with psycopg.connect(dsn) as other:
        mine = db.execute("SELECT current_database()").fetchone()
        assert other.execute("SELECT current_database()").fetchone() == mine


def test_server_version_and_pg_server_describe_the_server(
    db: psycopg.Connection[Any], server_version: int, pg_server: LocalServer | None
) -> None:
    (num,) = db.execute("SHOW server_version_num").fetchone() or ("0",)
    assert server_version == int(num) // 10000
    if os.environ.get("DATABASE_URL"):
        assert pg_server is None
    else:
        assert pg_server is not None
        assert pg_server.major_version == server_version
        expected = os.environ.get("HYDRAMQ_TEST_SERVER") or "embedded"
        assert pg_server.kind == expected
        assert {"embedded": 18, "debian": 15}[pg_server.kind] == server_version


def test_extension_files_without_built_scripts_says_run_make_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "hydramq.control").write_text("default_version = '0.1.0'\n")
    monkeypatch.setenv("HYDRAMQ_SQL_DIR", str(tmp_path))
    with pytest.raises(ExtensionFilesMissing, match="run `make build`"):
        extension_files()
    (tmp_path / "hydramq--0.1.0.sql").write_text("-- empty\n")
    assert [p.name for p in extension_files()] == ["hydramq.control", "hydramq--0.1.0.sql"]
