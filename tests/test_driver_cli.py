"""The ``hydramq`` command line: what it prints and the exit codes scripts rely on
(0 ok, 1 failure, 2 usage error). Commands run in-process through ``hydramq.cli.main``; the
daemons are covered by test_driver_daemons.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg
import pytest

from hydramq import Client
from hydramq.cli import load_scripts, main

Conn = psycopg.Connection[Any]


@pytest.fixture(autouse=True)
def _no_database_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)


def test_enqueue_prints_result_and_id(dsn: str, db: Conn, capsys: pytest.CaptureFixture[str]
                                      ) -> None:
    assert main(["enqueue", '{"to": "a@b.c"}', "--channel", "tenant-42", "--dsn", dsn,
                 "--priority", "3", "--delay", "0"]) == 0
    result, mid = capsys.readouterr().out.split()
    assert result == "enqueued"
    info = Client(db).inspect(int(mid))
    assert info is not None and info.channel == "tenant-42" and info.payload == {"to": "a@b.c"}
    assert info.priority == 3


def test_enqueue_reads_dsn_from_environment_and_prints_json(
    dsn: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DATABASE_URL", dsn)
    assert main(["enqueue", "[1, 2]", "--count", "3", "--json", "--name", "n1"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["result"] for r in rows] == ["enqueued", "deduplicated", "deduplicated"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["enqueue", "{not json"], "not valid JSON"),
        (["enqueue", "{}", "--attempts", "0"], "num_attempts"),
        (["worker", "no_such_module_xyz:handle"], "cannot import"),
        (["worker", "json"], "module:function"),
        (["worker", "json:dumps", "--slots", "0"], "at least 1"),
    ],
)
def test_bad_input_exits_with_usage_code_2(
    dsn: str, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert main([*argv, "--dsn", dsn]) == 2
    assert message in capsys.readouterr().err


def test_missing_dsn_and_unknown_command_are_usage_errors(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["status"]) == 2
    assert "DATABASE_URL" in capsys.readouterr().err
    assert main(["frobnicate"]) == 2
    assert main([]) == 2


def test_unreachable_database_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--dsn", "host=127.0.0.1 port=1 connect_timeout=2"]) == 1
    assert "cannot connect" in capsys.readouterr().err


def test_enqueue_into_a_full_channel_exits_1(dsn: str, db: Conn,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    Client(db).channel_policy_set("full", max_size=1)
    assert main(["enqueue", "{}", "--channel", "full", "--dsn", dsn]) == 0
    Client(db).coordinate()  # admits it: the channel is now at its max_size
    assert main(["enqueue", "{}", "--channel", "full", "--dsn", dsn]) == 1
    assert capsys.readouterr().out.splitlines()[-1].startswith("dropped")


@pytest.mark.parametrize("command", [None, "install", "sql", "worker", "coordinator",
                                     "enqueue", "status", "demo", "bench"])
def test_help_explains_every_command(command: str | None,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert main([command, "--help"] if command else ["--help"]) == 0
    out = capsys.readouterr().out
    assert "usage: hydramq" in out
    if command is None:
        for name in ("install", "worker", "coordinator", "enqueue", "status", "demo"):
            assert name in out


def test_status_shows_counts_per_channel_and_policies(
    dsn: str, db: Conn, capsys: pytest.CaptureFixture[str]
) -> None:
    client = Client(db)
    client.enqueue_many([{"payload": i} for i in range(3)], channel="alpha")
    client.enqueue({}, channel="beta", delay_secs=3600)
    client.channel_policy_set("beta", max_concurrency=2)
    client.channel_policy_set("gamma", max_size=10, queue="other")
    client.dequeue(batch=1)
    client.schedule_set("hourly-report", "@hourly", {"r": 1}, channel="alpha")
    assert main(["status", "--dsn", dsn]) == 0
    out = capsys.readouterr().out
    table = out.split("\n\n")[0]
    lines = {line.split()[1]: line.split() for line in table.splitlines()[2:] if line.strip()}
    header = out.splitlines()[1].split()
    assert header[:8] == ["queue", "channel", "ready", "parked", "processing", "locked",
                          "pending", "failed"]
    assert lines["alpha"][2:8] == ["2", "0", "1", "0", "0", "0"]
    assert lines["beta"][2:8] == ["0", "0", "0", "0", "1", "0"]
    assert "max_concurrency=2" in out and "max_size=10" in out
    assert "hourly-report" in out and "@hourly" in out
    assert main(["status", "--dsn", dsn, "--json", "--queue", "default"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {c["channel"]: c["ready"] for c in data["channels"]} == {"alpha": 2, "beta": 0}


def test_sql_prints_the_install_script(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sql"]) == 0
    out = capsys.readouterr().out
    assert "CREATE SCHEMA hydra" in out and out.lstrip().startswith("--")


def test_install_copies_files_to_sharedir_and_is_idempotent(
    dsn: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["install", "--dsn", dsn, "--sharedir", str(tmp_path)]) == 0
    assert (tmp_path / "hydramq.control").is_file()
    assert (tmp_path / f"hydramq--{load_scripts().default_version}.sql").is_file()
    assert "already installed" in capsys.readouterr().out
    assert main(["install", "--dsn", dsn, "--no-copy"]) == 0


def test_install_creates_the_extension_in_an_empty_database(
    dsn: str, db: Conn, capsys: pytest.CaptureFixture[str]
) -> None:
    db.execute("DROP EXTENSION hydramq CASCADE")
    assert main(["install", "--dsn", dsn]) == 0  # files are already on the test server
    assert "installed" in capsys.readouterr().out
    assert db.execute("SELECT 1 FROM pg_extension WHERE extname = 'hydramq'").fetchone()
