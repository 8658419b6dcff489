"""Security (SPEC §11): every function pins search_path, nothing in schema hydra is open to
PUBLIC, the grant_* helpers give producer / worker / admin roles exactly their job, and names
(queue, channel, message, role) are data, never SQL.

Roles are cluster-wide: each test makes roles with unique names and drops them (after
DROP OWNED BY in the test database) when it ends.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from flow_helpers import complete, coordinate, dequeue, enqueue, enqueue_many, fail
from psycopg import sql
from psycopg.conninfo import make_conninfo

Conn = psycopg.Connection[Any]
RoleFactory = Callable[[str], str]

PINNED = "search_path=pg_catalog, pg_temp"
INJECTION = "x'; DROP TABLE hydra.message; --"


@pytest.fixture
def make_role(db: Conn) -> Iterator[RoleFactory]:
    """make_role(label) -> name of a new LOGIN role (unique, may need quoting)."""
    made: list[str] = []

    def factory(label: str) -> str:
        name = f"hydra_test_{label}_{uuid.uuid4().hex[:8]}"
        db.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD 'secret'").format(sql.Identifier(name)))
        made.append(name)
        return name

    try:
        yield factory
    finally:
        for name in made:
            db.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                (name,),
            )
            db.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
            db.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


@pytest.fixture
def connect_as(dsn: str) -> Iterator[Callable[[str], Conn]]:
    opened: list[Conn] = []

    def factory(role: str) -> Conn:
        conn = psycopg.connect(make_conninfo(dsn, user=role, password="secret"), autocommit=True)
        opened.append(conn)
        return conn

    try:
        yield factory
    finally:
        for conn in opened:
            conn.close()


def _grant(db: Conn, job: str, role: str) -> None:
    db.execute(
        sql.SQL("SELECT hydra.{}(oid::regrole) FROM pg_roles WHERE rolname = %s").format(
            sql.Identifier(f"grant_{job}")),
        (role,),
    )


def _denied(conn: Conn, query: str, params: Any = None) -> None:
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute(query, params)


# --------------------------------------------------------------------------------------------
# Catalog: search_path and PUBLIC
# --------------------------------------------------------------------------------------------


def test_every_function_in_schema_hydra_pins_search_path(db: Conn) -> None:
    # A function either pins search_path or has a SQL-standard body (bound when the extension
    # is created: no name in it is looked up at call time), which is what lets the planner
    # inline it; such a function must be plain SQL, not SECURITY DEFINER.
    rows = db.execute(
        "SELECT p.oid::regprocedure::text, p.proconfig,"
        "       p.prosqlbody IS NOT NULL"
        "       AND l.lanname = 'sql' AND NOT p.prosecdef"
        "  FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang"
        " WHERE p.pronamespace = 'hydra'::regnamespace ORDER BY 1"
    ).fetchall()
    assert len(rows) > 20
    unpinned = [name for name, config, bound in rows
                if PINNED not in (config or []) and not bound]
    # The one exception: a procedure that COMMITs between rounds, which PostgreSQL forbids
    # with a SET clause; it qualifies every name instead and runs as its caller (see
    # extension/82_coordinate_loop.sql; tests/test_pg_cron.py plants look-alikes against it).
    assert unpinned == ["hydra.coordinate_loop(interval,numeric,integer,interval,integer,"
                        "jsonb,integer)"]
    bound_names = sorted(name for name, config, bound in rows if bound and not config)
    assert bound_names == ["hydra._message_problem(jsonb,text,integer,text,integer,numeric,"
                           "numeric,numeric,boolean,numeric)", "hydra._name_problem(text)"]


def test_security_definer_functions_are_the_public_api_only(db: Conn) -> None:
    rows = db.execute(
        "SELECT p.proname FROM pg_proc p"
        " WHERE p.pronamespace = 'hydra'::regnamespace AND p.prosecdef"
    ).fetchall()
    assert rows, "the API is expected to run as SECURITY DEFINER"
    assert [r[0] for r in rows if r[0].startswith("_")] == []


def test_no_function_is_executable_by_public(db: Conn) -> None:
    rows = db.execute(
        "SELECT p.oid::regprocedure::text,"
        "       has_function_privilege('public', p.oid, 'EXECUTE'),"
        "       p.proacl IS NULL"
        "       OR EXISTS (SELECT FROM aclexplode(p.proacl) a WHERE a.grantee = 0)"
        "  FROM pg_proc p WHERE p.pronamespace = 'hydra'::regnamespace"
    ).fetchall()
    assert [name for name, usable, acl_public in rows if usable or acl_public] == []


def test_no_table_view_or_sequence_is_accessible_to_public(db: Conn) -> None:
    rows = db.execute(
        "SELECT c.oid::regclass::text, c.relkind,"
        "       CASE WHEN c.relkind = 'S'"
        "            THEN has_sequence_privilege('public', c.oid, 'USAGE, SELECT, UPDATE')"
        "            ELSE has_table_privilege('public', c.oid,"
        "                     'SELECT, INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER')"
        "       END,"
        "       EXISTS (SELECT FROM aclexplode(c.relacl) a WHERE a.grantee = 0)"
        "  FROM pg_class c"
        " WHERE c.relnamespace = 'hydra'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm', 'S')"
    ).fetchall()
    assert {kind for _, kind, _, _ in rows} >= {"r", "v", "S"}
    assert [name for name, _, usable, acl_public in rows if usable or acl_public] == []
    schema = db.execute(
        "SELECT has_schema_privilege('public', 'hydra', 'USAGE'),"
        "       has_schema_privilege('public', 'hydra', 'CREATE')"
    ).fetchone()
    assert schema == (False, False)


# --------------------------------------------------------------------------------------------
# Roles
# --------------------------------------------------------------------------------------------


def test_a_role_with_no_grant_can_do_nothing(
    db: Conn, make_role: RoleFactory, connect_as: Callable[[str], Conn]
) -> None:
    nobody = connect_as(make_role("nobody"))
    _, mid = enqueue(db, {})
    for query in (
        "SELECT hydra.enqueue('{}')",
        "SELECT * FROM hydra.dequeue()",
        "SELECT hydra.complete(1, gen_random_uuid())",
        "SELECT hydra.channel_policy_set('c', max_size => 1)",
        "SELECT * FROM hydra.coordinate()",
        "SELECT count(*) FROM hydra.message",
        "SELECT * FROM hydra.channel_status",
        "SELECT nextval('hydra.message_id_seq')",
    ):
        _denied(nobody, query)
    assert db.execute("SELECT id, state FROM hydra.message").fetchall() == [(mid, "ready")]


def test_producer_can_enqueue_but_not_dequeue_or_change_policies(
    db: Conn, make_role: RoleFactory, connect_as: Callable[[str], Conn]
) -> None:
    role = make_role("producer")
    _grant(db, "producer", role)
    producer = connect_as(role)

    result, mid = enqueue(producer, {"by": "producer"}, channel="c", name="n")
    assert result == "enqueued"
    assert [r[1] for r in enqueue_many(producer, [{"payload": 1}])] == ["enqueued"]
    for query in (
        "SELECT * FROM hydra.dequeue()",
        f"SELECT hydra.complete({mid}, gen_random_uuid())",
        f"SELECT hydra.fail({mid}, gen_random_uuid())",
        "SELECT hydra.channel_policy_set('c', max_size => 1)",
        "SELECT hydra.channel_policy_clear('c')",
        "SELECT * FROM hydra.coordinate()",
        "SELECT count(*) FROM hydra.message",
        "UPDATE hydra.message SET prio = 1",
        "DELETE FROM hydra.message",
        "SELECT * FROM hydra._enqueue_rows('default', ARRAY['{}'::jsonb], '{NULL}', '{NULL}',"
        " '{NULL}', '{1}', '{5}', '{2}', '{0}', '{t}', '{3600}', '{}', '{}')",
    ):
        _denied(producer, query)
    # Nor can it give itself more rights.
    for job in ("worker", "admin"):
        _denied(producer, f"SELECT hydra.grant_{job}(current_user::regrole)")
    assert db.execute("SELECT count(*) FROM hydra.message").fetchone() == (2,)


def test_worker_can_dequeue_and_settle_but_not_enqueue_or_change_policies(
    db: Conn, make_role: RoleFactory, connect_as: Callable[[str], Conn]
) -> None:
    role = make_role("worker")
    _grant(db, "worker", role)
    worker = connect_as(role)
    _, first = enqueue(db, {"n": 1})
    _, second = enqueue(db, {"n": 2})

    a, b = dequeue(worker, batch=2)
    assert (a["id"], b["id"]) == (first, second)
    hb = worker.execute(
        "SELECT hydra.heartbeat(%s, %s)", (a["id"], a["lease_token"])).fetchone()
    assert hb is not None and hb[0] is not None
    assert complete(worker, a)
    assert fail(worker, b, retry=False) == "failed"
    for query in (
        "SELECT hydra.enqueue('{}')",
        "SELECT * FROM hydra.enqueue_many('[{\"payload\": 1}]')",
        "SELECT hydra.channel_policy_set('c', max_concurrency => 1)",
        "SELECT * FROM hydra.coordinate()",
        "SELECT count(*) FROM hydra.message",
        "SELECT hydra.grant_admin(current_user::regrole)",
    ):
        _denied(worker, query)
    assert db.execute("SELECT id, state FROM hydra.message").fetchall() == [(second, "failed")]


def test_admin_can_set_policies_and_coordinate(
    db: Conn, make_role: RoleFactory, connect_as: Callable[[str], Conn]
) -> None:
    role = make_role("admin")
    _grant(db, "admin", role)
    admin = connect_as(role)

    admin.execute("SELECT hydra.channel_policy_set('c', max_concurrency => 2, max_size => 1)")
    assert admin.execute(
        "SELECT channel, max_concurrency, max_size FROM hydra.channel_policies"
    ).fetchall() == [("c", 2, 1)]
    _, mid = enqueue(admin, {}, channel="c")
    events = coordinate(admin)
    assert [(e.event, e.message_id) for e in events] == [("MESSAGE_RELEASED", mid)]
    assert admin.execute("SELECT channel, ready FROM hydra.channel_status").fetchall() == [
        ("c", 1)]
    assert admin.execute("SELECT hydra.channel_policy_clear('c')").fetchone() == (True,)
    # Admin rights are the API's, not the tables'.
    _denied(admin, "DELETE FROM hydra.message")


def test_grants_work_for_role_names_that_need_quoting(
    db: Conn, connect_as: Callable[[str], Conn], make_role: RoleFactory
) -> None:
    base = make_role("q")
    odd = f'{base} "odd"; DROP TABLE hydra.message; --'
    db.execute(sql.SQL("ALTER ROLE {} RENAME TO {}").format(
        sql.Identifier(base), sql.Identifier(odd)))
    try:
        _grant(db, "producer", odd)
        conn = connect_as(odd)
        assert enqueue(conn, {})[0] == "enqueued"
        assert db.execute("SELECT to_regclass('hydra.message') IS NOT NULL").fetchone() == (True,)
    finally:
        # Back to the name the fixture drops.
        db.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                   (odd,))
        db.execute(sql.SQL("ALTER ROLE {} RENAME TO {}").format(
            sql.Identifier(odd), sql.Identifier(base)))


# --------------------------------------------------------------------------------------------
# Names are data
# --------------------------------------------------------------------------------------------


def test_queue_channel_and_message_names_with_sql_in_them_are_stored_as_data(db: Conn) -> None:
    result, mid = enqueue(db, {"k": INJECTION}, queue=INJECTION, channel=INJECTION,
                          name=INJECTION)
    assert result == "enqueued"
    assert enqueue(db, {}, queue=INJECTION, channel=INJECTION, name=INJECTION) == (
        "deduplicated", mid)
    rows = enqueue_many(db, [{"payload": 1, "channel": INJECTION + '"'}], queue=INJECTION)
    assert rows[0][1] == "enqueued"
    db.execute("SELECT hydra.channel_policy_set(%s, max_size => 5, queue => %s)",
               (INJECTION, INJECTION))
    coordinate(db)

    assert db.execute("SELECT to_regclass('hydra.message') IS NOT NULL").fetchone() == (True,)
    stored = db.execute(
        "SELECT queue, channel, name FROM hydra.message WHERE id = %s", (mid,)).fetchone()
    assert stored == (INJECTION, INJECTION, INJECTION)
    assert db.execute(
        "SELECT queue, channel, max_size FROM hydra.channel_policies").fetchall() == [
        (INJECTION, INJECTION, 5)]
    leased = dequeue(db, queue=INJECTION, batch=10)
    assert {m["channel"] for m in leased} == {INJECTION, INJECTION + '"'}
    assert leased[0]["payload"] == {"k": INJECTION} or leased[1]["payload"] == {"k": INJECTION}
    assert all(complete(db, m) for m in leased)
    assert db.execute("SELECT count(*) FROM hydra.message").fetchone() == (0,)
