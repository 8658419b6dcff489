"""Hardening (issue 9, items 1, 2 and 7): every numeric option has documented bounds, nothing
computed from a stored row can raise, and one bad row never fails a batch.

Each reproducer of the issue is here as it was reported, plus rows holding the hostile values
a 0.1.0 install accepted (1e-400, 1e131071, NaN, Infinity), planted directly into
hydra.message: dequeue, fail, lease expiry and coordinate() keep serving every other message.
Bounds: docs/design.md, "Bounds of numeric options".
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import psycopg
import pytest
from helpers import complete, dequeue, enqueue, snapshot
from psycopg import sql
from psycopg.rows import dict_row

Conn = psycopg.Connection[Any]

TEN_YEARS = timedelta(seconds=315360000)


@pytest.fixture
def producer(db: Conn, connect: Any) -> Iterator[Conn]:
    """A session holding only the producer role (hydra.grant_producer)."""
    role = f"hb_producer_{uuid.uuid4().hex[:12]}"
    db.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(role)))
    session = connect()
    try:
        db.execute("SELECT hydra.grant_producer(%s::regrole)", (role,))
        session.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))
        yield session
    finally:
        session.close()
        db.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        db.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def many(elements: str, options: str = "") -> str:
    return f"SELECT hydra.enqueue_many('{elements}'{options})"


def served_everything(db: Conn, queue: str, expected: set[int]) -> None:
    """Every ready message of ``queue`` is dequeued and completed: ``expected`` among them."""
    leased = dequeue(db, batch=1000, queue=queue)
    assert expected <= {m["id"] for m in leased}
    assert all(complete(db, m) for m in leased)


def rows(db: Conn, query: str, params: Any = None) -> list[dict[str, Any]]:
    with db.cursor(row_factory=dict_row) as cur:
        return cur.execute(query, params).fetchall()


# --------------------------------------------------------------------------------------------
# Item 1: a tiny max_processing_secs blocked every dequeue of its queue
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "poison",
    [
        "SELECT hydra.enqueue('{\"poison\": 1}', channel => 'attacker', priority => 100,"
        " max_processing_secs => 1e-400)",
        many(
            '[{"payload": {"poison": 1}, "channel": "attacker", "priority": 100,'
            ' "max_processing_secs": 1e-400}]'
        ),
    ],
    ids=["enqueue", "enqueue_many"],
)
def test_a_producer_cannot_block_dequeue_with_a_tiny_max_processing_secs(
    db: Conn, producer: Conn, poison: str
) -> None:
    victim = producer.execute(
        "SELECT (hydra.enqueue('{\"victim\": 1}', channel => 'tenant-a')).message_id"
    ).fetchone()
    assert victim is not None
    before = snapshot(db)
    with pytest.raises(psycopg.errors.InvalidParameterValue) as raised:
        producer.execute(poison)
    assert "max_processing_secs: must be between 0.001 and 315360000" in str(
        raised.value.diag.message_primary
    )
    assert snapshot(db) == before
    served_everything(db, "default", {victim[0]})


# --------------------------------------------------------------------------------------------
# Item 2: one message's back-off stopped coordinate() for every queue
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "value"),
    [("lock_secs", "1e-400"), ("lock_secs_factor", "1e131071"), ("lock_secs_factor", "'NaN'"),
     ("lock_secs_factor", "'Infinity'"), ("lock_secs_factor", "100.0001")],
)  # fmt: skip
def test_a_producer_cannot_store_a_back_off_that_overflows(
    db: Conn, producer: Conn, option: str, value: str
) -> None:
    before = snapshot(db)
    with pytest.raises(psycopg.errors.InvalidParameterValue) as raised:
        producer.execute(
            f"SELECT hydra.enqueue('{{\"poison\": 2}}', queue => 'q2', num_attempts => 2,"
            f" {option} => {value}, max_processing_secs => 0.5)"
        )
    assert (raised.value.diag.message_primary or "").startswith(option + ":")
    assert snapshot(db) == before


# --------------------------------------------------------------------------------------------
# Rows holding what 0.1.0 accepted: nothing computed from them raises
# --------------------------------------------------------------------------------------------

# Option values 0.1.0's checks let through (lock_secs >= 0, factor >= 1 -- NaN and Infinity
# compare as not smaller --, 0 < max_processing_secs <= ten years).
HOSTILE: dict[str, dict[str, str]] = {
    "tiny lease": {"max_processing_secs": "1e-400"},
    "tiny back-off": {"lock_secs": "1e-400"},
    "huge factor": {"lock_secs_factor": "1e131071", "lock_secs": "315360000"},
    "NaN factor": {"lock_secs_factor": "'NaN'"},
    "infinite factor": {"lock_secs_factor": "'Infinity'"},
    "everything": {"max_processing_secs": "1e-400", "lock_secs": "1e-16383",
                   "lock_secs_factor": "1e131071"},
}  # fmt: skip


def plant(db: Conn, queue: str) -> dict[int, str]:
    """One message per HOSTILE entry, in its own channel and ahead of the others by priority,
    its options overwritten in place (as a 0.1.0 install could hold them)."""
    planted = {}
    for label, values in HOSTILE.items():
        mid = enqueue(db, {"hostile": label}, queue=queue, channel=label, priority=100,
                      num_attempts=5)  # fmt: skip
        assignments = ", ".join(f"{column} = {value}" for column, value in values.items())
        db.execute(f"UPDATE hydra.message SET {assignments} WHERE id = %s", (mid,))
        planted[mid] = label
    return planted


def test_hostile_stored_values_never_stop_dequeue_fail_expiry_or_coordinate(db: Conn) -> None:
    planted = plant(db, "q")
    victims = {enqueue(db, {"victim": i}, queue="q", channel=f"tenant-{i}") for i in range(3)}
    other = enqueue(db, {"other queue": 1}, queue="r")

    # dequeue leases every one of them (the hostile ones first: they have priority).
    leased = dequeue(db, batch=100, queue="q")
    assert {m["id"] for m in leased} == set(planted) | victims
    now = db.execute("SELECT now()").fetchone()[0]  # type: ignore[index]
    for m in leased:
        assert m["lease_expires_at"] <= now + TEN_YEARS + timedelta(seconds=10)

    # fail (with retry): each hostile message is locked for a back-off within the bounds.
    hostile = [m for m in leased if m["id"] in planted]
    results = rows(
        db,
        "SELECT * FROM hydra.fail_many(%s, %s, retry => true)",
        ([m["id"] for m in hostile], [m["lease_token"] for m in hostile]),
    )
    assert {r["message_id"]: r["outcome"] for r in results} == dict.fromkeys(planted, "locked")
    for r in results:
        assert now <= r["available_at"] <= now + TEN_YEARS + timedelta(seconds=10)
    assert all(complete(db, m) for m in leased if m["id"] in victims)

    # Back-off over (planted), leased again, and this time the leases expire: coordinate()
    # settles every expired lease and returns normally.
    db.execute("UPDATE hydra.message SET available_at = now() - interval '1 second'"
               " WHERE id = ANY (%s)", (list(planted),))  # fmt: skip
    db.execute("SELECT count(*) FROM hydra.coordinate()")
    again = dequeue(db, batch=100, queue="q")
    assert {m["id"] for m in again} == set(planted)
    db.execute("UPDATE hydra.message SET lease_expires_at = now() - interval '1 second'"
               " WHERE id = ANY (%s)", (list(planted),))  # fmt: skip
    events = db.execute("SELECT event, message_id FROM hydra.coordinate()").fetchall()
    assert {mid for event, mid in events if event == "MESSAGE_LOCKED"} == set(planted)
    states = db.execute(
        "SELECT state::text, count(*) FROM hydra.message WHERE id = ANY (%s) GROUP BY 1",
        (list(planted),),
    ).fetchall()
    assert dict(states).keys() <= {"locked", "ready"}

    # The queue and the other queue still serve everything.
    fresh = enqueue(db, {"after": 1}, queue="q", channel="tenant-0")
    served_everything(db, "q", {fresh})
    served_everything(db, "r", {other})


def test_back_off_is_capped_at_ten_years_for_any_stored_factor_and_attempt(db: Conn) -> None:
    # lock_secs * factor^(k-1) on the last attempts of a message with the largest allowed
    # values and with values 0.1.0 accepted: never an error, never beyond ten years.
    mid = enqueue(db, {"n": 1}, num_attempts=2147483647, lock_secs=315360000.0,
                  lock_secs_factor=100.0)  # fmt: skip
    db.execute("UPDATE hydra.message SET attempt = 2147483645 WHERE id = %s", (mid,))
    for factor in ("100", "1e131071", "'NaN'", "1.0000000001"):
        db.execute(f"UPDATE hydra.message SET lock_secs_factor = {factor} WHERE id = %s", (mid,))
        [m] = dequeue(db)
        [r] = rows(db, "SELECT f.*, now() AS now FROM hydra.fail(%s, %s) f",
                   (m["id"], m["lease_token"]))  # fmt: skip
        assert r["outcome"] == "locked"
        assert r["available_at"] - r["now"] == TEN_YEARS
        db.execute("UPDATE hydra.message SET state = 'ready', available_at = NULL,"
                   " attempt = 2147483645 WHERE id = %s", (mid,))  # fmt: skip


# --------------------------------------------------------------------------------------------
# One bad row never fails a batch
# --------------------------------------------------------------------------------------------

EXPLODE_ON_RETRY = """
CREATE FUNCTION public.explode() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'retry refused for %', NEW.id USING ERRCODE = 'XX000';
END $$;
CREATE TRIGGER explode BEFORE UPDATE ON hydra.message FOR EACH ROW
    WHEN (NEW.payload ? 'explode' AND NEW.state = 'locked') EXECUTE FUNCTION public.explode();
"""


def test_a_message_whose_settlement_raises_is_failed_alone_and_the_batch_is_settled(
    db: Conn,
) -> None:
    # Something no bound foresaw (here: a trigger a DBA added) raises while one message of a
    # batch is retried: that message is failed without retry, the error kept; the others are
    # settled as asked -- by fail_many and by lease expiry alike.
    db.execute(EXPLODE_ON_RETRY)
    good = [enqueue(db, {"good": i}, channel=f"c{i}", num_attempts=3) for i in range(3)]
    bad = enqueue(db, {"explode": 1}, num_attempts=3)
    leased = dequeue(db, batch=10)
    assert {m["id"] for m in leased} == {*good, bad}
    results = rows(
        db,
        "SELECT * FROM hydra.fail_many(%s, %s, %s)",
        ([m["id"] for m in leased], [m["lease_token"] for m in leased],
         [f"boom {m['id']}" for m in leased]),
    )  # fmt: skip
    outcomes = {r["message_id"]: r["outcome"] for r in results}
    assert outcomes == {**dict.fromkeys(good, "locked"), bad: "failed"}
    [stored] = rows(db, "SELECT state::text, last_error FROM hydra.message WHERE id = %s", (bad,))
    assert stored["state"] == "failed"
    assert stored["last_error"].startswith("hydramq: settling this message raised XX000")
    assert "retry refused" in stored["last_error"] and f"boom {bad}" in stored["last_error"]

    # The same through lease expiry, inside coordinate().
    bad2 = enqueue(db, {"explode": 2}, queue="x", num_attempts=3)
    good2 = enqueue(db, {"good": 2}, queue="x", channel="g", num_attempts=3)
    assert {m["id"] for m in dequeue(db, batch=10, queue="x")} == {bad2, good2}
    db.execute("UPDATE hydra.message SET lease_expires_at = now() - interval '1 second'"
               " WHERE id = ANY (%s)", ([bad2, good2],))  # fmt: skip
    events = db.execute("SELECT event, message_id FROM hydra.coordinate()").fetchall()
    assert ("MESSAGE_LOCKED", good2) in events
    assert ("MESSAGE_ATTEMPTS_EXHAUSTED", bad2) in events
    assert ("MESSAGE_FINALIZED", bad2) in events
    fresh = enqueue(db, {"after": 1}, queue="x")
    served_everything(db, "x", {fresh})


# --------------------------------------------------------------------------------------------
# Item 7: bad arguments give 22023 naming the argument, never another error
# --------------------------------------------------------------------------------------------

LONG_NAME = "(SELECT string_agg(md5(i::text), '') FROM generate_series(1, 100) i)"  # 3,200 chars


def retention(value: str) -> str:
    return f"SELECT count(*) FROM hydra.coordinate(failed_retention => '{value}')"


CASES: list[tuple[str, str]] = [
    ("delay_secs", "SELECT hydra.enqueue('{}', delay_secs => 1e-400)"),
    ("delay_secs", many('[{"payload": 1, "delay_secs": 1e-400}]')),
    ("delay_secs", many('[{"payload": 1}]', ", delay_secs => 1e-400")),
    ("delay_secs", "SELECT hydra.enqueue('{}', delay_secs => 315360000.001)"),
    ("extend_secs", "SELECT hydra.heartbeat(1, NULL, 1e-16383)"),
    ("extend_secs", "SELECT hydra.heartbeat(1, NULL, 'NaN')"),
    ("messages[1].priority", many('[{"payload": 1, "priority": 99999999999}]')),
    ("messages[1].priority", many('[{"payload": 1, "priority": 2147483648}]')),
    ("messages[1].num_attempts", many('[{"payload": 1, "num_attempts": 99999999999}]')),
    ("messages[2].num_attempts",
     many('[{"payload": 1}, {"payload": 1, "num_attempts": -99999999999}]')),
    ("messages[1].depends_on", many('[{"payload": 1, "depends_on": [99999999999999999999]}]')),
    ("messages[1].depends_on", many('[{"payload": 1, "depends_on": [1.5]}]')),
    ("messages[1].depends_on", many('[{"payload": 1, "depends_on": [1e400]}]')),
    ("depends_on", many('[{"payload": 1, "depends_on": [-5]}]')),
    ("failed_retention", retention("1000000 years")),
    ("failed_retention", retention("1000000 years -359999000 days")),
    ("queues", f"SELECT hydra.worker_idle(ARRAY[{LONG_NAME}])"),
    ("queues", "SELECT hydra.worker_idle(ARRAY['a', E'b\\nc'])"),
    ("queues", "SELECT hydra.worker_idle(ARRAY[''])"),
    ("max_processing_secs", "SELECT hydra.enqueue('{}', max_processing_secs => 'NaN')"),
    ("max_processing_secs", "SELECT hydra.enqueue('{}', max_processing_secs => 0.0009)"),
    ("lock_secs", "SELECT hydra.enqueue('{}', lock_secs => 0.0001)"),
    ("lock_secs", many('[{"payload": 1, "lock_secs": 1e-400}]')),
    ("lock_secs_factor", "SELECT hydra.enqueue('{}', lock_secs_factor => 101)"),
    ("lock_secs_factor",
     "SELECT hydra.schedule_set('s', '@daily', '{}', lock_secs_factor => 1e131071)"),
    ("max_processing_secs",
     "SELECT hydra.schedule_set('s', '@daily', '{}', max_processing_secs => 1e-400)"),
]  # fmt: skip


@pytest.mark.parametrize(("argument", "query"), CASES, ids=[q for _, q in CASES])
def test_bad_numbers_and_names_raise_22023_naming_the_argument(
    db: Conn, argument: str, query: str
) -> None:
    ready = enqueue(db, {"ready": 1}, channel="c")
    before = snapshot(db)
    with pytest.raises(psycopg.Error) as raised:
        db.execute(query)
    assert raised.value.diag.sqlstate == "22023", raised.value
    assert (raised.value.diag.message_primary or "").startswith(argument), raised.value
    assert snapshot(db) == before
    served_everything(db, "default", {ready})


def test_the_documented_bounds_themselves_are_accepted(db: Conn) -> None:
    # The edges of every range work, and what they store is used without error.
    db.execute(
        "SELECT hydra.enqueue('{}', lock_secs => 0.001, lock_secs_factor => 100,"
        " delay_secs => 0, max_processing_secs => 0.001, num_attempts => 2147483647)"
    )
    db.execute(
        "SELECT hydra.enqueue('{}', lock_secs => 315360000, lock_secs_factor => 1,"
        " delay_secs => 0, max_processing_secs => 315360000)"
    )
    db.execute("SELECT hydra.enqueue('{}', queue => 'later', delay_secs => 0.001)")
    db.execute("SELECT hydra.enqueue('{}', queue => 'later', delay_secs => 315360000)")
    db.execute(
        many(
            '[{"payload": 1, "priority": 2147483647, "num_attempts": 2147483647},'
            ' {"payload": 2, "priority": -2147483647}, {"payload": 3, "priority": 1000000000}]'
        )
    )
    db.execute("SELECT count(*) FROM hydra.coordinate(failed_retention => '100 years')")
    db.execute("SELECT count(*) FROM hydra.coordinate(failed_retention => '0')")
    db.execute("SELECT hydra.worker_idle(ARRAY[repeat('q', 255)])")
    leased = dequeue(db, batch=10)
    assert len(leased) == 5
    deadline = db.execute(
        "SELECT hydra.heartbeat(%s, %s, 0.001)", (leased[0]["id"], leased[0]["lease_token"])
    ).fetchone()
    assert deadline is not None and deadline[0] is not None


# --------------------------------------------------------------------------------------------
# cron_next: nothing after year 9999, and a schedule that reaches it stops
# --------------------------------------------------------------------------------------------


def test_cron_next_has_no_fire_time_past_the_loadable_range(db: Conn) -> None:
    # Before: 10000-01-01, which psycopg (Python's datetime) cannot load.
    assert db.execute("SELECT hydra.cron_next('@yearly', '9999-12-29 00:00+00')").fetchone() == (
        None,
    )
    assert db.execute(
        "SELECT hydra.cron_next('0 0 31 12 *', '9999-06-01 00:00+00', 'Pacific/Kiritimati')"
    ).fetchone() == (None,)
    [(last,)] = db.execute(
        "SELECT hydra.cron_next('0 0 29 12 *', '9999-06-01 00:00+00')"
    ).fetchall()
    assert last == datetime.fromisoformat("9999-12-29 00:00+00:00")


def test_a_schedule_whose_next_tick_is_past_year_9999_stops_cleanly(db: Conn) -> None:
    db.execute("SELECT hydra.schedule_set('yearly', '@yearly', '{\"s\": 1}')")
    db.execute("UPDATE hydra.schedule SET next_fire_at = '9999-01-01 00:00+00'")
    fired = db.execute(
        "SELECT event FROM hydra._fire_due_schedules_at(10, '9999-06-01 00:00+00')"
    ).fetchall()
    assert fired == [("MESSAGE_ENQUEUED",)]
    [schedule] = rows(db, "SELECT * FROM hydra.schedules")  # loads: no year 10000
    assert schedule["next_fire_at"] is None and schedule["last_error"] is None
    assert schedule["last_fire_at"] == datetime.fromisoformat("9999-01-01 00:00+00:00")
    # Stopped: never due again, and coordination goes on.
    assert db.execute(
        "SELECT count(*) FROM hydra._fire_due_schedules_at(10, '9999-12-30 00:00+00')"
    ).fetchone() == (0,)
    db.execute("SELECT count(*) FROM hydra.coordinate()")
