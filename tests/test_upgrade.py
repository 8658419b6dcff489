"""Upgrades: ``ALTER EXTENSION hydramq UPDATE`` from every released version gives the catalog of
a fresh install of the newest one, keeps the data, and the queue goes on serving it.

The released 0.1.0 is installed and filled with messages in every state (ready, parked,
processing with live leases, locked, pending on a delay and on a parent, failed), a schedule,
policies and roles holding jobs; then it is upgraded and compared with a fresh install of the
default version that has the same roles. Afterwards every message is served or settled as it
would have been, and the leases taken before the upgrade still complete.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from catalog import catalog_diff, catalog_snapshot
from flow_helpers import coordinate, dequeue, enqueue, fail
from helpers import complete
from psycopg import sql

Conn = psycopg.Connection[Any]
ROOT = Path(__file__).resolve().parent.parent


def _default_version() -> str:
    control = (ROOT / "hydramq.control").read_text()
    found = re.search(r"default_version\s*=\s*'([^']+)'", control)
    assert found is not None
    return found.group(1)


def _released_versions() -> list[str]:
    """Every version with an install script, oldest first, except the default one."""
    scripts = (ROOT / "sql").glob("hydramq--*.sql")
    names = (p.name[len("hydramq--") : -len(".sql")] for p in scripts)
    versions = sorted(
        (n for n in names if "--" not in n), key=lambda v: [int(x) for x in v.split(".")]
    )
    return [v for v in versions if v != _default_version()]


@pytest.fixture
def job_roles(db: Conn) -> Iterator[dict[str, str]]:
    """A producer, a worker and an admin role (cluster-wide, so dropped after the test). Ask
    for it before ``blank_database``: the roles are dropped after the databases they hold
    grants in."""
    roles = {job: f"hydra_{job}_{uuid.uuid4().hex[:8]}" for job in ("producer", "worker", "admin")}
    for role in roles.values():
        db.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(role)))
    yield roles
    for role in roles.values():
        db.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def _grant_jobs(conn: Conn, roles: dict[str, str]) -> None:
    for job, role in roles.items():
        conn.execute(f"SELECT hydra.grant_{job}(%s::regrole)", (role,))


def _fill(conn: Conn) -> dict[str, Any]:
    """Messages in every state, a schedule and policies, through 0.1.0's public API."""
    made: dict[str, Any] = {}
    made["ready"] = [enqueue(conn, {"n": i}, channel=f"t{i % 3}")[1] for i in range(6)]
    # A capped channel: one message processing (holding the slot), two parked behind it.
    conn.execute("SELECT hydra.channel_policy_set('capped', max_concurrency => 1, queue => 'cap')")
    made["capped"] = [enqueue(conn, {"c": i}, queue="cap", channel="capped")[1] for i in range(3)]
    made["cap_lease"] = dequeue(conn, queue="cap")
    conn.execute("SELECT hydra.channel_policy_set('small', max_size => 5)")
    # Live leases.
    made["leased_ids"] = [enqueue(conn, {"l": i}, queue="lease")[1] for i in range(3)]
    made["leases"] = dequeue(conn, queue="lease", batch=3)
    # Locked (back-off after a failure) and failed (no attempts left).
    made["locked"] = enqueue(conn, {"r": 1}, queue="retry", num_attempts=3, lock_secs=600)[1]
    assert fail(conn, dequeue(conn, queue="retry")[0]) == "locked"
    made["failed"] = enqueue(conn, {"f": 1}, queue="dead")[1]
    assert fail(conn, dequeue(conn, queue="dead")[0]) == "failed"
    # Pending: on a delay, and on a parent.
    made["delayed"] = enqueue(conn, {"d": 1}, queue="flow", delay_secs=600)[1]
    made["parent"] = enqueue(conn, {"p": 1}, queue="flow")[1]
    made["child"] = enqueue(conn, {"c": 1}, queue="flow", depends_on=[made["parent"]])[1]
    conn.execute("SELECT hydra.schedule_set('tick', '* * * * *', '{\"s\": 1}', queue => 'sched')")
    return made


def _states(conn: Conn) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT id, queue, channel, state::text, attempt, lease_token, payload"
        " FROM hydra.message ORDER BY id"
    ).fetchall()


def _drain(conn: Conn, queue: str) -> list[int]:
    """Dequeue and complete everything ready in ``queue``; the ids served, in order."""
    served = []
    while leased := dequeue(conn, queue=queue, batch=10):
        for row in leased:
            assert complete(conn, row)
            served.append(row["id"])
    return served


@pytest.mark.parametrize("old", _released_versions())
def test_upgrade_gives_the_fresh_catalog_and_keeps_serving(
    old: str, job_roles: dict[str, str], blank_database: Callable[[], str]
) -> None:
    new = _default_version()
    with (
        psycopg.connect(blank_database(), autocommit=True) as up,
        psycopg.connect(blank_database(), autocommit=True) as fresh,
    ):
        up.execute(sql.SQL("CREATE EXTENSION hydramq VERSION {}").format(sql.Literal(old)))
        _grant_jobs(up, job_roles)
        made = _fill(up)
        before = _states(up)

        up.execute(sql.SQL("ALTER EXTENSION hydramq UPDATE TO {}").format(sql.Literal(new)))
        fresh.execute("CREATE EXTENSION hydramq")
        _grant_jobs(fresh, job_roles)

        assert catalog_diff(catalog_snapshot(up), catalog_snapshot(fresh)) == {}
        assert _states(up) == before  # the upgrade changed no message

        # Leases taken before the upgrade complete; the capped channel's slot passes on.
        for leased in made["leases"]:
            assert complete(up, leased)
        assert complete(up, made["cap_lease"][0])
        assert _drain(up, "cap") == made["capped"][1:]
        assert _drain(up, "default") == made["ready"]
        # The parent's outcome releases its child; delays and back-off end when due.
        assert _drain(up, "flow") == [made["parent"]]
        up.execute(
            "UPDATE hydra.message SET available_at = now() - interval '1 second'"
            " WHERE id IN (%s, %s)",
            (made["delayed"], made["locked"]),
        )
        up.execute("UPDATE hydra.schedule SET next_fire_at = now() - interval '1 second'")
        for _ in range(5):
            if not coordinate(up):
                break
        assert sorted(_drain(up, "flow")) == sorted([made["child"], made["delayed"]])
        assert _drain(up, "retry") == [made["locked"]]
        assert len(_drain(up, "sched")) == 1  # the schedule fired once
        remaining = up.execute("SELECT id, state::text FROM hydra.message").fetchall()
        assert remaining == [(made["failed"], "failed")]


@pytest.mark.parametrize("old", _released_versions())
def test_roles_granted_before_an_upgrade_can_use_the_new_version(
    old: str, job_roles: dict[str, str], blank_database: Callable[[], str]
) -> None:
    with psycopg.connect(blank_database(), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE EXTENSION hydramq VERSION {}").format(sql.Literal(old)))
        _grant_jobs(conn, job_roles)
        conn.execute("ALTER EXTENSION hydramq UPDATE")
        # Every object each job may use is granted to the role holding it.
        for job, role in job_roles.items():
            missing = conn.execute(
                "SELECT j.object FROM hydra._job_objects(%s) j"
                " WHERE NOT CASE j.kind"
                "   WHEN 'function'"
                "   THEN has_function_privilege(%s, to_regprocedure(j.object), 'EXECUTE')"
                "   ELSE has_table_privilege(%s, to_regclass(j.object), 'SELECT') END",
                (job, role, role),
            ).fetchall()
            assert missing == [], (job, missing)
        conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(job_roles["producer"])))
        assert enqueue(conn, {"after": "upgrade"})[0] == "enqueued"
        conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(job_roles["worker"])))
        (leased,) = dequeue(conn)
        assert complete(conn, leased)
        conn.execute("RESET ROLE")
