"""Cron schedules (SPEC §8, extension/70_schedules.sql): schedule_set / schedule_clear, the
hydra.schedules view, and firing from hydra.coordinate -- one message per tick however many
coordinators run, missed ticks coalesced, wall-clock times kept across DST, and one failing
schedule never blocking the others.

Time is driven without sleeping: by moving next_fire_at into the past, or through
hydra._fire_due_schedules_at(batch, now), which fires what is due at a given instant.
"""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest
from helpers import Threads, snapshot
from psycopg.rows import dict_row

Conn = psycopg.Connection[Any]
UTC = timezone.utc

SET = """
SELECT hydra.schedule_set(name => %(name)s, cron => %(cron)s, payload => %(payload)s::jsonb,
                          queue => %(queue)s, channel => %(channel)s, tz => %(tz)s,
                          priority => %(priority)s, num_attempts => %(num_attempts)s,
                          lock_secs => %(lock_secs)s, lock_secs_factor => %(lock_secs_factor)s,
                          max_processing_secs => %(max_processing_secs)s)
"""
DEFAULTS: dict[str, Any] = {
    "name": "report",
    "cron": "*/5 * * * *",
    "payload": '{"job": "report"}',
    "queue": "default",
    "channel": None,
    "tz": "UTC",
    "priority": None,
    "num_attempts": 1,
    "lock_secs": Decimal(5),
    "lock_secs_factor": Decimal(2),
    "max_processing_secs": Decimal(3600),
}


def schedule_set(conn: Conn, **args: Any) -> datetime:
    """hydra.schedule_set with every argument named (defaults as in the API)."""
    row = conn.execute(SET, {**DEFAULTS, **args}).fetchone()
    assert row is not None
    return row[0]


def schedules(conn: Conn) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute("SELECT * FROM hydra.schedules ORDER BY queue, channel, name").fetchall()


def make_due(conn: Conn, at: str = "now() - interval '1 minute'", name: str | None = None) -> None:
    """Moves next_fire_at (of one schedule, or all) to ``at``, an SQL expression."""
    conn.execute(
        f"UPDATE hydra.schedule SET next_fire_at = {at}"
        " WHERE %(name)s::text IS NULL OR name = %(name)s",
        {"name": name},
    )


def fire(conn: Conn, sql: str = "SELECT * FROM hydra.coordinate()") -> list[dict[str, Any]]:
    """Schedule events (MESSAGE_ENQUEUED / MESSAGE_DROPPED with detail.schedule) of one call."""
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(sql).fetchall()
    return [r for r in rows if r["detail"] and "schedule" in r["detail"]]


def fire_at(conn: Conn, now: datetime) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute("SELECT * FROM hydra._fire_due_schedules_at(100, %s)", (now,)).fetchall()


def message_count(conn: Conn) -> int:
    row = conn.execute("SELECT count(*) FROM hydra.message").fetchone()
    assert row is not None
    return int(row[0])


# --------------------------------------------------------------------------------------------
# Setting and clearing
# --------------------------------------------------------------------------------------------


def test_schedule_set_stores_the_schedule_and_returns_its_next_fire_time(db: Conn) -> None:
    with db.transaction():  # one now() for both calls
        returned = schedule_set(
            db,
            cron="*/5 * * * *",
            queue="emails",
            channel="tenant-1",
            tz="europe/london",
            priority=3,
            num_attempts=4,
            lock_secs=Decimal("1.5"),
            lock_secs_factor=Decimal(3),
            max_processing_secs=Decimal(60),
        )
        row = db.execute("SELECT hydra.cron_next('*/5 * * * *', now(), 'Europe/London')").fetchone()
    assert row is not None and returned == row[0]
    [stored] = schedules(db)
    assert stored["next_fire_at"] == returned
    assert stored["last_fire_at"] is None and stored["last_error"] is None
    assert (stored["queue"], stored["channel"], stored["name"]) == ("emails", "tenant-1", "report")
    assert stored["tz"] == "Europe/London"  # canonical spelling
    assert stored["payload"] == {"job": "report"}
    assert (stored["priority"], stored["num_attempts"]) == (3, 4)
    assert (stored["lock_secs"], stored["lock_secs_factor"], stored["max_processing_secs"]) == (
        Decimal("1.5"),
        Decimal(3),
        Decimal(60),
    )


def test_default_channel_is_null_in_the_api_and_the_view(db: Conn) -> None:
    db.execute("SELECT hydra.schedule_set('nightly', '@daily', '{}')")
    [stored] = schedules(db)
    assert (stored["queue"], stored["channel"], stored["tz"]) == ("default", None, "UTC")
    assert db.execute("SELECT channel FROM hydra.schedule").fetchone() == ("",)
    assert db.execute("SELECT hydra.schedule_clear('nightly', channel => NULL)").fetchone() == (
        True,
    )


def test_setting_a_schedule_again_replaces_it_and_recomputes_the_next_fire_time(db: Conn) -> None:
    first = schedule_set(db, cron="0 0 1 1 *", payload='{"v": 1}')
    [before] = schedules(db)
    second = schedule_set(db, cron="*/5 * * * *", payload='{"v": 2}')
    [after] = schedules(db)
    assert first != second and after["next_fire_at"] == second
    assert second - datetime.now(UTC) <= timedelta(minutes=5, seconds=30)
    assert after["payload"] == {"v": 2} and after["cron"] == "*/5 * * * *"
    assert after["created_at"] == before["created_at"]
    assert after["updated_at"] > before["updated_at"]
    # The same expression again still recomputes from now (a stale next_fire_at is replaced).
    make_due(db, "'2001-01-01'")
    with db.transaction():
        again = schedule_set(db, cron="*/5 * * * *", payload='{"v": 2}')
        row = db.execute("SELECT hydra.cron_next('*/5 * * * *', now())").fetchone()
    assert row is not None and again == row[0] == schedules(db)[0]["next_fire_at"]


def test_schedule_clear_removes_it_and_says_whether_it_existed(db: Conn) -> None:
    schedule_set(db)
    assert db.execute("SELECT hydra.schedule_clear('report')").fetchone() == (True,)
    assert schedules(db) == []
    assert db.execute("SELECT hydra.schedule_clear('report')").fetchone() == (False,)


def test_schedule_names_are_scoped_to_queue_and_channel(db: Conn) -> None:
    schedule_set(db, payload='{"at": "default"}')
    schedule_set(db, queue="emails", payload='{"at": "emails"}')
    schedule_set(db, channel="tenant-1", payload='{"at": "tenant-1"}')
    assert len(schedules(db)) == 3
    assert db.execute(
        "SELECT hydra.schedule_clear('report', channel => 'tenant-1')"
    ).fetchone() == (True,)
    assert [s["payload"]["at"] for s in schedules(db)] == ["default", "emails"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"cron": "61 * * * *"}, 'cron: minute field "61" out of range 0-59'),
        ({"cron": "* * * *"}, "cron: expected 5 fields"),
        ({"cron": "0 0 31 2 *"}, 'cron: day-of-month field "31" never occurs in month field "2"'),
        ({"cron": "@often"}, 'cron: unknown macro "@often"'),
        ({"cron": None}, "cron: must not be null"),
        ({"tz": "Mars/Base"}, 'tz: unknown time zone "Mars/Base"'),
        ({"tz": "UTC+3"}, 'tz: unknown time zone "UTC+3"'),
        ({"tz": None}, "tz: must not be null"),
        ({"name": ""}, "name: must not be empty"),
        ({"name": None}, "name: must not be NULL"),
        ({"queue": ""}, "queue: must not be empty"),
        ({"queue": None}, "queue: must not be NULL"),
        ({"channel": ""}, "channel: must not be empty"),
        ({"payload": None}, "payload: must not be NULL"),
        ({"priority": -2147483648}, "priority: must be greater than -2147483648"),
        ({"num_attempts": 0}, "num_attempts: must be at least 1"),
        ({"lock_secs": Decimal(-1)}, "lock_secs: must be 0 or between 0.001 and 315360000"),
        ({"lock_secs_factor": Decimal("0.5")}, "lock_secs_factor: must be between 1 and 100"),
        ({"max_processing_secs": Decimal(0)}, "max_processing_secs: must be between 0.001 and"),
    ],
)
def test_invalid_arguments_are_rejected_naming_the_argument_and_nothing_is_written(
    db: Conn, args: dict[str, Any], message: str
) -> None:
    schedule_set(db, name="existing")
    before = snapshot(db)
    for name in ("report", "existing"):  # a new schedule, and replacing one
        with pytest.raises(psycopg.Error) as caught:
            schedule_set(db, **{"name": name, **args})
        assert caught.value.diag.sqlstate == "22023"
        assert (caught.value.diag.message_primary or "").startswith(message)
    assert snapshot(db) == before


# --------------------------------------------------------------------------------------------
# Firing
# --------------------------------------------------------------------------------------------


def test_due_schedule_enqueues_one_message_with_its_options(db: Conn) -> None:
    schedule_set(
        db,
        queue="emails",
        channel="tenant-1",
        priority=7,
        num_attempts=3,
        lock_secs=Decimal(2),
        lock_secs_factor=Decimal(4),
        max_processing_secs=Decimal(90),
    )
    make_due(db, "'2020-02-02 02:02:00+00'")
    [event] = fire(db)
    assert event["event"] == "MESSAGE_ENQUEUED"
    assert (event["queue"], event["channel"]) == ("emails", "tenant-1")
    assert event["detail"]["schedule"] == "report"
    assert datetime.fromisoformat(event["detail"]["fire_time"]) == datetime(
        2020, 2, 2, 2, 2, tzinfo=UTC
    )
    with db.cursor(row_factory=dict_row) as cur:
        message = cur.execute(
            "SELECT * FROM hydra.message WHERE id = %s", (event["message_id"],)
        ).fetchone()
    assert message is not None
    assert (message["queue"], message["channel"], message["state"]) == (
        "emails",
        "tenant-1",
        "ready",
    )
    assert message["payload"] == {"job": "report"} and message["name"] is None
    assert (message["prio"], message["num_attempts"]) == (7, 3)
    assert (message["lock_secs"], message["lock_secs_factor"], message["max_processing_secs"]) == (
        Decimal(2),
        Decimal(4),
        Decimal(90),
    )
    assert fire(db) == []  # nothing more is due


def test_firing_moves_to_the_next_tick_after_now(db: Conn) -> None:
    schedule_set(db, cron="*/5 * * * *")
    make_due(db, "'2020-02-02 02:02:00+00'")
    with db.transaction():
        fire(db, "SELECT * FROM hydra._fire_due_schedules(100)")
        row = db.execute("SELECT hydra.cron_next('*/5 * * * *', now())").fetchone()
    [stored] = schedules(db)
    assert row is not None and stored["next_fire_at"] == row[0]
    assert stored["last_fire_at"] == datetime(2020, 2, 2, 2, 2, tzinfo=UTC)


def test_missed_ticks_fire_once_then_the_schedule_resumes_from_now(db: Conn) -> None:
    schedule_set(db, cron="* * * * *")
    make_due(db, "'2030-01-01 00:00:00+00'")
    # Three and a half days of minutely ticks missed (a coordinator was down).
    events = fire_at(db, datetime(2030, 1, 4, 12, 34, 56, tzinfo=UTC))
    assert [e["event"] for e in events] == ["MESSAGE_ENQUEUED"]
    assert events[0]["detail"]["fire_time"].startswith("2030-01-01T00:00:00")
    assert message_count(db) == 1
    assert schedules(db)[0]["next_fire_at"] == datetime(2030, 1, 4, 12, 35, tzinfo=UTC)


def test_schedule_into_a_full_channel_reports_a_drop(db: Conn) -> None:
    db.execute("SELECT hydra.channel_policy_set('tenant-1', max_size => 0)")
    schedule_set(db, channel="tenant-1")
    make_due(db)
    [event] = fire(db)
    assert event["event"] == "MESSAGE_DROPPED" and event["detail"]["schedule"] == "report"
    assert schedules(db)[0]["next_fire_at"] > datetime.now(UTC)


def test_a_failing_schedule_is_logged_and_does_not_block_the_others(db: Conn) -> None:
    for name in ("a", "b", "c"):
        schedule_set(db, name=name)
    # Corrupt one row behind schedule_set's back: its enqueue now raises.
    db.execute("UPDATE hydra.schedule SET num_attempts = 0 WHERE name = 'b'")
    make_due(db, "'2020-02-02 02:02:00+00'")
    warnings: list[str] = []
    db.add_notice_handler(lambda diag: warnings.append(diag.message_primary or ""))

    events = fire(db)

    assert sorted(e["detail"]["schedule"] for e in events) == ["a", "c"]
    assert any('schedule "b"' in w and "num_attempts" in w for w in warnings), warnings
    broken = next(s for s in schedules(db) if s["name"] == "b")
    assert broken["last_error"].startswith("22023: num_attempts: must be at least 1")
    assert broken["last_fire_at"] == datetime(2020, 2, 2, 2, 2, tzinfo=UTC)  # tick skipped
    assert broken["next_fire_at"] > datetime.now(UTC)
    assert message_count(db) == 2
    # Setting it again repairs it and clears the error.
    schedule_set(db, name="b")
    assert next(s for s in schedules(db) if s["name"] == "b")["last_error"] is None


# --------------------------------------------------------------------------------------------
# Several coordinators
# --------------------------------------------------------------------------------------------


def test_a_coordinator_skips_a_schedule_another_one_is_firing(db: Conn, connect: Any) -> None:
    schedule_set(db)
    make_due(db)
    first, second = connect(), connect()
    second.execute("SET statement_timeout = '5s'")  # SKIP LOCKED: never waits
    with first.transaction():
        assert len(fire(first, "SELECT * FROM hydra._fire_due_schedules(100)")) == 1
        assert fire(second, "SELECT * FROM hydra._fire_due_schedules(100)") == []
    assert fire(second, "SELECT * FROM hydra._fire_due_schedules(100)") == []  # next tick later
    assert message_count(db) == 1


def test_a_rolled_back_firing_leaves_the_tick_for_the_next_coordinator(
    db: Conn, connect: Any
) -> None:
    schedule_set(db)
    make_due(db)
    first, second = connect(), connect()
    with first.transaction():
        assert len(fire(first, "SELECT * FROM hydra._fire_due_schedules(100)")) == 1
        raise psycopg.Rollback  # the coordinator's transaction fails after firing
    assert len(fire(second, "SELECT * FROM hydra._fire_due_schedules(100)")) == 1
    assert message_count(db) == 1


def test_each_tick_is_enqueued_once_by_four_concurrent_coordinators(db: Conn, connect: Any) -> None:
    schedule_count, rounds, coordinators = 40, 5, 4
    for i in range(schedule_count):
        schedule_set(db, name=f"s{i}", channel=f"tenant-{i % 7}")
    conns = [connect() for _ in range(coordinators)]
    start, done = threading.Barrier(coordinators + 1), threading.Barrier(coordinators + 1)
    fired: list[Counter[tuple[str, str]]] = [Counter() for _ in range(coordinators)]
    # Small batches and both entry points, so that the coordinators interleave on the rows.
    calls = [
        "SELECT * FROM hydra.coordinate(batch => 3)",
        "SELECT * FROM hydra._fire_due_schedules(3)",
    ]

    def coordinator(i: int) -> None:
        for _ in range(rounds):
            start.wait(timeout=30)
            idle = 0
            while idle < 2:
                events = fire(conns[i], calls[i % 2])
                idle = 0 if events else idle + 1
                fired[i].update((e["detail"]["schedule"], e["detail"]["fire_time"]) for e in events)
            done.wait(timeout=30)

    threads = Threads(coordinators, coordinator, name="coordinator")
    for r in range(rounds):
        # A new tick for every schedule: each round's ticks are distinct instants.
        make_due(db, f"date_trunc('minute', now()) - interval '{r + 1} hours'")
        start.wait(timeout=30)
        done.wait(timeout=60)
    threads.join()

    total = sum(fired, Counter())
    assert len(total) == schedule_count * rounds
    assert set(total.values()) == {1}, [k for k, n in total.items() if n > 1]
    assert message_count(db) == schedule_count * rounds
    assert sum(1 for c in fired if c) >= 2  # the work really was shared


# --------------------------------------------------------------------------------------------
# Time zones
# --------------------------------------------------------------------------------------------


def walk(db: Conn, ticks: int) -> list[str]:
    """Fires the (only) schedule ``ticks`` times, each time at its own next_fire_at; returns
    the fire times as wall-clock ISO strings in the schedule's zone."""
    seen = []
    for _ in range(ticks):
        row = db.execute("SELECT next_fire_at, tz FROM hydra.schedule").fetchone()
        assert row is not None
        [event] = fire_at(db, row[0])
        fire_time = datetime.fromisoformat(event["detail"]["fire_time"])
        seen.append(fire_time.astimezone(ZoneInfo(row[1])).isoformat(timespec="minutes"))
    assert message_count(db) == ticks
    return seen


@pytest.mark.parametrize(
    ("cron", "tz", "first", "expected"),
    [
        # Spring forward: 02:30 does not exist on 10 March, it fires when the gap ends.
        (
            "30 2 * * *",
            "America/New_York",
            "2024-03-08 02:30-05",
            [
                "2024-03-08T02:30-05:00",
                "2024-03-09T02:30-05:00",
                "2024-03-10T03:00-04:00",
                "2024-03-11T02:30-04:00",
            ],
        ),
        # Fall back: 01:30 happens twice on 3 November, it fires once.
        (
            "30 1 * * *",
            "America/New_York",
            "2024-11-02 01:30-04",
            ["2024-11-02T01:30-04:00", "2024-11-03T01:30-04:00", "2024-11-04T01:30-05:00"],
        ),
        # A clock-following schedule fires on both passes of the repeated hour.
        (
            "*/30 * * * *",
            "America/New_York",
            "2024-11-03 00:30-04",
            [
                "2024-11-03T00:30-04:00",
                "2024-11-03T01:00-04:00",
                "2024-11-03T01:30-04:00",
                "2024-11-03T01:00-05:00",
                "2024-11-03T01:30-05:00",
                "2024-11-03T02:00-05:00",
            ],
        ),
        (
            "0 1 * * *",
            "Europe/London",
            "2024-03-30 01:00+00",
            ["2024-03-30T01:00+00:00", "2024-03-31T02:00+01:00", "2024-04-01T01:00+01:00"],
        ),
        # Lord Howe moves by 30 minutes: 02:00-02:30 is skipped.
        (
            "15 2 * * *",
            "Australia/Lord_Howe",
            "2024-10-05 02:15+10:30",
            ["2024-10-05T02:15+10:30", "2024-10-06T02:30+11:00", "2024-10-07T02:15+11:00"],
        ),
    ],
)
def test_schedule_in_a_dst_zone_fires_at_its_wall_clock_times(
    db: Conn, cron: str, tz: str, first: str, expected: list[str]
) -> None:
    schedule_set(db, cron=cron, tz=tz)
    make_due(db, f"'{first}'")
    assert walk(db, len(expected)) == expected


# --------------------------------------------------------------------------------------------
# Packaging and privileges
# --------------------------------------------------------------------------------------------


def test_schedules_are_kept_by_pg_dump(db: Conn) -> None:
    row = db.execute(
        "SELECT 'hydra.schedule'::regclass = ANY (extconfig) FROM pg_extension"
        " WHERE extname = 'hydramq'"
    ).fetchone()
    assert row == (True,)


@pytest.fixture
def role(db: Conn) -> Any:
    """A throwaway login-less role; privileges and the role are removed afterwards."""
    name = f"hydra_test_{uuid.uuid4().hex[:12]}"
    db.execute(f'CREATE ROLE "{name}"')
    try:
        yield name
    finally:
        db.execute("RESET ROLE")
        db.execute(f'DROP OWNED BY "{name}"')
        db.execute(f'DROP ROLE "{name}"')


def test_producer_reads_schedules_and_cron_next_but_cannot_change_schedules(
    db: Conn, role: str
) -> None:
    schedule_set(db)
    db.execute("SELECT hydra.grant_producer(%s)", (role,))
    db.execute(f'SET ROLE "{role}"')
    assert [s["name"] for s in schedules(db)] == ["report"]
    assert db.execute("SELECT hydra.cron_next('@daily', now(), 'Europe/London')").fetchone()
    db.execute("SELECT hydra.cron_validate('@daily')")
    for call in (
        "SELECT hydra.schedule_set('x', '@daily', '{}')",
        "SELECT hydra.schedule_clear('report')",
    ):
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            db.execute(call)


def test_admin_manages_schedules_and_fires_them(db: Conn, role: str) -> None:
    db.execute("SELECT hydra.grant_admin(%s)", (role,))
    db.execute(f'SET ROLE "{role}"')
    schedule_set(db, name="mine")
    db.execute("RESET ROLE")
    make_due(db)
    db.execute(f'SET ROLE "{role}"')
    assert [e["detail"]["schedule"] for e in fire(db)] == ["mine"]
    assert db.execute("SELECT hydra.schedule_clear('mine')").fetchone() == (True,)
