"""Cron evaluated in SQL (extension/20_cron.sql): hydra.cron_next and hydra.cron_validate.

The oracle is croniter (``croniter(expr, aware_start).get_next(datetime)``). Where croniter is
inconsistent -- wall-clock times repeated by a fall-back overlap -- hydramq follows the rule
written in docs/cron.md, and ``reference_next`` below is that rule in executable form: every
divergence from croniter must be explained by it, or the test fails.
"""

from __future__ import annotations

import bisect
import os
from datetime import datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest
from croniter import croniter
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

UTC = timezone.utc
ZONES = ("UTC", "Europe/London", "America/New_York", "Australia/Lord_Howe")
CHAIN = 20
EXAMPLES = int(os.environ.get("HYDRAMQ_CRON_EXAMPLES", "150"))  # raise it for a soak run
# Hypothesis shares one database across the examples of a test: cron_* only read.
PROPERTY = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)

CHAIN_SQL = """
WITH RECURSIVE chain(n, at) AS (
    SELECT 0, %(start)s::timestamptz
    UNION ALL
    SELECT n + 1, hydra.cron_next(%(expr)s, at, %(tz)s) FROM chain WHERE n < %(count)s
)
SELECT at FROM chain WHERE n > 0 ORDER BY n
"""


def sql_chain(
    db: psycopg.Connection[Any], expr: str, start: datetime, tz: str, count: int = CHAIN
) -> list[datetime]:
    """``count`` consecutive hydra.cron_next results from ``start``, in one query."""
    rows = db.execute(CHAIN_SQL, {"expr": expr, "start": start, "tz": tz, "count": count})
    return [row[0] for row in rows.fetchall()]


def sql_next(db: psycopg.Connection[Any], expr: str, after: datetime, tz: str = "UTC") -> datetime:
    row = db.execute("SELECT hydra.cron_next(%s, %s, %s)", (expr, after, tz)).fetchone()
    assert row is not None
    return row[0]


def local(text: str, tz: str, fold: int = 0) -> datetime:
    """An aware datetime from a wall-clock time in ``tz`` (fold=1: the second of two)."""
    return datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(tz), fold=fold)


def iso(values: list[datetime], tz: str) -> list[str]:
    """Instants as wall-clock ISO strings with offset, for readable assertions."""
    return [v.astimezone(ZoneInfo(tz)).isoformat(timespec="minutes") for v in values]


# --------------------------------------------------------------------------------------------
# The documented DST rule, in executable form (docs/cron.md, "Daylight saving time")
# --------------------------------------------------------------------------------------------


def _transition(zone: ZoneInfo, lo: datetime, hi: datetime) -> datetime:
    """First whole second in (lo, hi] with hi's UTC offset: the instant the clock jumps."""
    target = hi.astimezone(zone).utcoffset()
    lo_s, hi_s = int(lo.timestamp()), int(hi.timestamp()) + (hi.timestamp() % 1 > 0)
    while hi_s - lo_s > 1:
        mid = (lo_s + hi_s) // 2
        if datetime.fromtimestamp(mid, zone).utcoffset() == target:
            hi_s = mid
        else:
            lo_s = mid
    return datetime.fromtimestamp(hi_s, UTC)


def fire_instants(wall: datetime, zone: ZoneInfo, hour_any: bool) -> list[datetime]:
    """The instants a matching wall-clock time fires at, per the documented rule."""
    first = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
    second = wall.replace(tzinfo=zone, fold=1).astimezone(UTC)
    if first.astimezone(zone).replace(tzinfo=None) != wall:  # skipped by a gap
        return [] if hour_any else [_transition(zone, second, first)]
    if first != second:  # repeated by a fall-back overlap
        return [first, second] if hour_any else [first]
    return [first]


def reference_next(expr: str, after: datetime, tz: str) -> datetime:
    """Next fire time (in UTC) per docs/cron.md: croniter (naive) names the wall-clock times,
    the DST rule maps them to instants."""
    zone = ZoneInfo(tz)
    hour_any = croniter.expand(expr)[0][1] == ["*"]
    wall_after = after.astimezone(zone).replace(tzinfo=None)
    # Near a fall-back, wall-clock order is not time order: look one overlap (<= 1 hour in
    # the tested zones) behind p_after's wall time and past the best candidate.
    margin = OVERLAP if touches_fall_back(tz, after, after) else timedelta(0)
    walls = croniter(expr, wall_after - margin)
    best: datetime | None = None
    best_wall = wall_after
    while True:
        wall = walls.get_next(datetime)
        if best is not None and wall > best_wall + margin:
            return best
        for instant in fire_instants(wall, zone, hour_any):
            if instant > after and (best is None or instant < best):
                best, best_wall = instant, wall
                if touches_fall_back(tz, after, best):
                    margin = OVERLAP


def _transitions(tz: str) -> list[tuple[datetime, timedelta]]:
    """(instant, change of UTC offset) of every clock change of ``tz`` in 2019-2042."""
    zone = ZoneInfo(tz)
    found = []
    day = datetime(2019, 1, 1, tzinfo=UTC)
    while day.year < 2043:
        nxt = day + timedelta(days=1)
        before, after = day.astimezone(zone).utcoffset(), nxt.astimezone(zone).utcoffset()
        if before is not None and after is not None and after != before:
            found.append((_transition(zone, day, nxt), after - before))
        day = nxt
    return found


TRANSITIONS = {tz: _transitions(tz) for tz in ZONES}
FALL_BACKS = {tz: [t for t, change in TRANSITIONS[tz] if change < timedelta(0)] for tz in ZONES}
OVERLAP = max(-change for tz in ZONES for _, change in TRANSITIONS[tz] if change < timedelta(0))


def touches_fall_back(tz: str, start: datetime, end: datetime) -> bool:
    """Whether a fall-back overlap of ``tz`` lies within three hours of [start, end]."""
    times = FALL_BACKS[tz]
    i = bisect.bisect_left(times, start - timedelta(hours=3))
    return i < len(times) and times[i] <= end + timedelta(hours=3)


def assert_matches_croniter(
    db: psycopg.Connection[Any], expr: str, start: datetime, tz: str
) -> None:
    """hydra.cron_next's chain equals croniter's, except where docs/cron.md's overlap rule
    says otherwise (and then it must equal the reference)."""
    # Compare in UTC: aware datetimes with fold=1 never compare equal across zones (PEP 495).
    got = [value.astimezone(UTC) for value in sql_chain(db, expr, start, tz)]
    after = start.astimezone(ZoneInfo(tz))
    for step, value in enumerate(got):
        expected = croniter(expr, after).get_next(datetime).astimezone(UTC)
        if value != expected:
            assert touches_fall_back(tz, after, max(value, expected)), (
                f"step {step} after {after.isoformat()}: got {value.astimezone(after.tzinfo)}, "
                f"croniter {expected.isoformat()}"
            )
            assert value == reference_next(expr, after, tz), f"step {step} after {after}"
        after = value.astimezone(ZoneInfo(tz))


# --------------------------------------------------------------------------------------------
# Strategies: expressions of the dialect and start times
# --------------------------------------------------------------------------------------------

MONTHS = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
WEEKDAYS = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]


@st.composite
def name_or_number(draw: st.DrawFn, field: str, value: int) -> str:
    """``value`` spelled as a number or, for month and day-of-week, a name in random case."""
    names = {"month": MONTHS, "dow": WEEKDAYS}.get(field)
    if names and draw(st.booleans()):
        name = names[(value - 1) if field == "month" else value % 7]
        return draw(st.sampled_from([name, name.upper(), name.capitalize()]))
    return str(value)


@st.composite
def field_expr(draw: st.DrawFn, field: str, lo: int, hi: int) -> str:
    """One field: *, a value, a list, a range (wrapping or not), or a step form.

    Left out on purpose (documented divergences, tested explicitly below): equal ranges
    ``5-5`` (croniter reads the whole field) and wrapping ranges with a step (croniter is off
    by one)."""
    top = 7 if field == "dow" else hi  # day-of-week also accepts 7 = Sunday
    value = st.integers(lo, top)
    span = hi - lo + 1

    def item() -> st.SearchStrategy[str]:
        single = value.flatmap(lambda v: name_or_number(field, v))
        # a-b with a != b, wrapping when b < a (never both Sunday: "7-0" is "0-0" to croniter).
        ranged = (
            st.tuples(value, st.integers(1, top - lo))
            .map(lambda t: (t[0], lo + (t[0] - lo + t[1]) % (top - lo + 1)))
            .filter(lambda ab: field != "dow" or ab[0] % 7 != ab[1] % 7)
            .flatmap(
                lambda ab: st.tuples(name_or_number(field, ab[0]), name_or_number(field, ab[1]))
            )
            .map("-".join)
        )
        stepped = (
            st.integers(lo, hi - 1)
            .flatmap(lambda a: st.tuples(st.just(a), st.integers(a + 1, hi), st.integers(1, span)))
            .map(lambda t: f"{t[0]}-{t[1]}/{t[2]}")
        )
        started = st.tuples(value, st.integers(1, span)).flatmap(
            lambda t: name_or_number(field, t[0]).map(lambda v: f"{v}/{t[1]}")
        )
        return st.one_of(single, ranged, stepped, started)

    return draw(
        st.one_of(
            st.just("*"),
            st.integers(1, span).map(lambda step: f"*/{step}"),
            st.lists(item(), min_size=1, max_size=3).map(",".join),
        )
    )


def _day_sets(expr: str) -> tuple[list[Any], list[Any], list[Any]]:
    expanded = croniter.expand(expr)[0]
    return expanded[2], expanded[3], expanded[4]


@st.composite
def cron_exprs(draw: st.DrawFn) -> str:
    """Expressions of the dialect that hydramq and croniter read the same way."""
    if draw(st.integers(0, 19)) == 0:
        return draw(
            st.sampled_from(
                [
                    "@yearly",
                    "@annually",
                    "@monthly",
                    "@weekly",
                    "@daily",
                    "@midnight",
                    "@hourly",
                    "@Daily",
                    "@HOURLY",
                ]
            )
        )
    minute = draw(field_expr("minute", 0, 59))
    hour = draw(st.one_of(st.just("*"), field_expr("hour", 0, 23)))
    dom = draw(st.one_of(st.just("*"), field_expr("dom", 1, 31)))
    month = draw(st.one_of(st.just("*"), field_expr("month", 1, 12)))
    dow = draw(st.one_of(st.just("*"), field_expr("dow", 0, 6)))
    expr = f"{minute} {hour} {dom} {month} {dow}"
    doms, months, dows = _day_sets(expr)
    # A day field listing every day is "*" for hydramq but restricted for croniter (docs).
    assume(not (doms != ["*"] and len(doms) == 31) and not (dows != ["*"] and len(dows) == 7))
    if dows == ["*"] and doms != ["*"]:  # must be able to fire (others are rejected, tested)
        limits = [31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]
        month_list = range(1, 13) if months == ["*"] else months
        assume(any(d <= limits[m - 1] for d in doms for m in month_list))
    return expr


@st.composite
def starts(draw: st.DrawFn, tz: str) -> datetime:
    """A start instant in 2020-2032: uniform, or within a few hours of a DST transition."""
    changes = [t for t, _ in TRANSITIONS[tz] if 2020 <= t.year <= 2032]
    if changes and draw(st.booleans()):
        base = draw(st.sampled_from(changes))
        return base + timedelta(seconds=draw(st.integers(-6 * 3600, 3 * 3600)))
    seconds = draw(
        st.integers(0, int((datetime(2033, 1, 1) - datetime(2020, 1, 1)).total_seconds()))
    )
    return datetime(2020, 1, 1, tzinfo=UTC) + timedelta(seconds=seconds)


zoned_starts = st.sampled_from(ZONES).flatmap(lambda tz: st.tuples(st.just(tz), starts(tz)))


# --------------------------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------------------------


@PROPERTY
@given(expr=cron_exprs(), zoned=zoned_starts)
def test_cron_next_chain_matches_croniter(
    db: psycopg.Connection[Any], expr: str, zoned: tuple[str, datetime]
) -> None:
    tz, start = zoned
    assert_matches_croniter(db, expr, start, tz)


@PROPERTY
@given(expr=cron_exprs(), tz=st.sampled_from(ZONES[1:]), data=st.data())
def test_cron_next_chain_through_fall_back_follows_documented_rule(
    db: psycopg.Connection[Any], expr: str, tz: str, data: st.DataObject
) -> None:
    """Starting inside or just before an overlap, each step equals the reference rule."""
    base = data.draw(st.sampled_from(FALL_BACKS[tz][2:16]))
    start = base + timedelta(seconds=data.draw(st.integers(-2 * 3600, 3600)))
    after = start
    for value in sql_chain(db, expr, start, tz):
        value = value.astimezone(UTC)
        assert value == reference_next(expr, after, tz), f"after {after.astimezone(ZoneInfo(tz))}"
        after = value


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(expr=cron_exprs())
def test_cron_validate_accepts_every_expression_croniter_accepts(
    db: psycopg.Connection[Any], expr: str
) -> None:
    db.execute("SELECT hydra.cron_validate(%s)", (expr,))


# --------------------------------------------------------------------------------------------
# Explicit behaviour
# --------------------------------------------------------------------------------------------


def test_cron_next_is_strictly_after_the_given_instant(db: psycopg.Connection[Any]) -> None:
    assert sql_next(db, "*/5 * * * *", datetime(2024, 1, 1, 0, 5, tzinfo=UTC)) == datetime(
        2024, 1, 1, 0, 10, tzinfo=UTC
    )
    assert sql_next(
        db, "*/5 * * * *", datetime(2024, 1, 1, 0, 4, 59, 999999, tzinfo=UTC)
    ) == datetime(2024, 1, 1, 0, 5, tzinfo=UTC)


def test_cron_next_ignores_the_session_time_zone(db: psycopg.Connection[Any]) -> None:
    after = datetime(2024, 6, 1, 12, tzinfo=UTC)
    db.execute("SET TimeZone = 'Asia/Kolkata'")
    assert sql_next(db, "0 9 * * *", after, "Europe/London") == local(
        "2024-06-02T09:00", "Europe/London"
    )
    assert db.execute("SHOW TimeZone").fetchone() == ("Asia/Kolkata",)


@pytest.mark.parametrize(
    ("macro", "five_fields"),
    [
        ("@yearly", "0 0 1 1 *"),
        ("@annually", "0 0 1 1 *"),
        ("@monthly", "0 0 1 * *"),
        ("@weekly", "0 0 * * 0"),
        ("@daily", "0 0 * * *"),
        ("@midnight", "0 0 * * *"),
        ("@hourly", "0 * * * *"),
        ("@DAILY", "0 0 * * *"),
    ],
)
def test_macros_fire_like_their_five_field_forms(
    db: psycopg.Connection[Any], macro: str, five_fields: str
) -> None:
    start = datetime(2023, 5, 17, 13, 37, tzinfo=UTC)
    assert sql_chain(db, macro, start, "Europe/London", 5) == sql_chain(
        db, five_fields, start, "Europe/London", 5
    )


def test_day_of_month_or_day_of_week_when_both_are_restricted(db: psycopg.Connection[Any]) -> None:
    # The 13th, or any Friday: classic cron's OR rule.
    got = sql_chain(db, "0 0 13 * FRI", datetime(2024, 9, 1, tzinfo=UTC), "UTC", 6)
    assert [v.date().isoformat() for v in got] == [
        "2024-09-06",
        "2024-09-13",
        "2024-09-20",
        "2024-09-27",
        "2024-10-04",
        "2024-10-11",
    ]


def test_sunday_is_both_0_and_7(db: psycopg.Connection[Any]) -> None:
    start = datetime(2024, 1, 1, tzinfo=UTC)
    expected = sql_chain(db, "0 12 * * 0", start, "UTC", 4)
    assert sql_chain(db, "0 12 * * 7", start, "UTC", 4) == expected
    assert sql_chain(db, "0 12 * * sun", start, "UTC", 4) == expected
    assert {v.isoweekday() for v in sql_chain(db, "0 12 * * 5-7", start, "UTC", 9)} == {5, 6, 7}


def test_ranges_wrap_around_the_end_of_the_cycle(db: psycopg.Connection[Any]) -> None:
    start = datetime(2024, 1, 1, tzinfo=UTC)  # a Monday
    assert {v.isoweekday() for v in sql_chain(db, "0 0 * * FRI-MON", start, "UTC", 12)} == {
        5,
        6,
        7,
        1,
    }
    assert sorted({v.hour for v in sql_chain(db, "0 22-1 * * *", start, "UTC", 12)}) == [
        0,
        1,
        22,
        23,
    ]


def test_leap_day_fires_only_in_leap_years(db: psycopg.Connection[Any]) -> None:
    got = sql_chain(db, "0 0 29 2 *", datetime(2023, 1, 1, tzinfo=UTC), "UTC", 4)
    assert [v.year for v in got] == [2024, 2028, 2032, 2036]
    # 2100 is not a leap year: the longest gap, eight years.
    assert sql_next(db, "0 0 29 2 *", datetime(2096, 3, 1, tzinfo=UTC)) == datetime(
        2104, 2, 29, tzinfo=UTC
    )


# --- DST: spring forward (a wall-clock hour is skipped) -------------------------------------


@pytest.mark.parametrize(
    ("tz", "day", "expr", "expected"),
    [
        # New York skips 02:00-03:00; London 01:00-02:00; Lord Howe 02:00-02:30 (a 30-minute shift).
        (
            "America/New_York",
            "2024-03-10",
            "30 2 * * *",
            ["2024-03-09T02:30-05:00", "2024-03-10T03:00-04:00", "2024-03-11T02:30-04:00"],
        ),
        (
            "America/New_York",
            "2024-03-10",
            "30 1 * * *",
            ["2024-03-09T01:30-05:00", "2024-03-10T01:30-05:00", "2024-03-11T01:30-04:00"],
        ),
        (
            "Europe/London",
            "2024-03-31",
            "30 1 * * *",
            ["2024-03-30T01:30+00:00", "2024-03-31T02:00+01:00", "2024-04-01T01:30+01:00"],
        ),
        (
            "Australia/Lord_Howe",
            "2024-10-06",
            "15 2 * * *",
            ["2024-10-05T02:15+10:30", "2024-10-06T02:30+11:00", "2024-10-07T02:15+11:00"],
        ),
        (
            "Australia/Lord_Howe",
            "2024-10-06",
            "45 2 * * *",
            ["2024-10-05T02:45+10:30", "2024-10-06T02:45+11:00", "2024-10-07T02:45+11:00"],
        ),
    ],
)
def test_time_of_day_skipped_by_spring_forward_fires_at_end_of_gap(
    db: psycopg.Connection[Any], tz: str, day: str, expr: str, expected: list[str]
) -> None:
    start = local(day, tz) - timedelta(days=1)
    assert iso(sql_chain(db, expr, start, tz, 3), tz) == expected


@pytest.mark.parametrize(
    ("tz", "start", "expr", "expected"),
    [
        (
            "America/New_York",
            "2024-03-10T01:20",
            "*/20 * * * *",
            ["2024-03-10T01:40-05:00", "2024-03-10T03:00-04:00", "2024-03-10T03:20-04:00"],
        ),
        (
            "Australia/Lord_Howe",
            "2024-10-06T01:40",
            "*/10 * * * *",
            ["2024-10-06T01:50+10:30", "2024-10-06T02:30+11:00", "2024-10-06T02:40+11:00"],
        ),
    ],
)
def test_clock_following_expression_skips_the_missing_times(
    db: psycopg.Connection[Any], tz: str, start: str, expr: str, expected: list[str]
) -> None:
    assert iso(sql_chain(db, expr, local(start, tz), tz, 3), tz) == expected


# --- DST: fall back (a wall-clock hour is repeated) ------------------------------------------


@pytest.mark.parametrize(
    ("tz", "day", "expr", "expected"),
    [
        # New York repeats 01:00-02:00; London 01:00-02:00; Lord Howe 01:30-02:00.
        (
            "America/New_York",
            "2024-11-03",
            "30 1 * * *",
            ["2024-11-02T01:30-04:00", "2024-11-03T01:30-04:00", "2024-11-04T01:30-05:00"],
        ),
        (
            "America/New_York",
            "2024-11-03",
            "30 2 * * *",
            ["2024-11-02T02:30-04:00", "2024-11-03T02:30-05:00", "2024-11-04T02:30-05:00"],
        ),
        (
            "Europe/London",
            "2024-10-27",
            "0 1 * * *",
            ["2024-10-26T01:00+01:00", "2024-10-27T01:00+01:00", "2024-10-28T01:00+00:00"],
        ),
        (
            "Australia/Lord_Howe",
            "2024-04-07",
            "45 1 * * *",
            ["2024-04-06T01:45+11:00", "2024-04-07T01:45+11:00", "2024-04-08T01:45+10:30"],
        ),
    ],
)
def test_time_of_day_repeated_by_fall_back_fires_once(
    db: psycopg.Connection[Any], tz: str, day: str, expr: str, expected: list[str]
) -> None:
    start = local(day, tz) - timedelta(days=1)
    assert iso(sql_chain(db, expr, start, tz, 3), tz) == expected


def test_clock_following_expression_fires_on_both_passes_of_the_repeated_hour(
    db: psycopg.Connection[Any],
) -> None:
    tz = "America/New_York"
    got = sql_chain(db, "*/20 * * * *", local("2024-11-03T00:50", tz), tz, 8)
    assert iso(got, tz) == [
        "2024-11-03T01:00-04:00",
        "2024-11-03T01:20-04:00",
        "2024-11-03T01:40-04:00",
        "2024-11-03T01:00-05:00",
        "2024-11-03T01:20-05:00",
        "2024-11-03T01:40-05:00",
        "2024-11-03T02:00-05:00",
        "2024-11-03T02:20-05:00",
    ]


def test_clock_following_expression_in_lord_howe_half_hour_overlap(
    db: psycopg.Connection[Any],
) -> None:
    # croniter drops 01:42+10:30 here (it repeats whole-hour overlaps but not this one).
    tz = "Australia/Lord_Howe"
    got = sql_chain(db, "*/21 * * * *", local("2024-04-07T01:15", tz), tz, 5)
    assert iso(got, tz) == [
        "2024-04-07T01:21+11:00",
        "2024-04-07T01:42+11:00",
        "2024-04-07T01:42+10:30",
        "2024-04-07T02:00+10:30",
        "2024-04-07T02:21+10:30",
    ]


def test_start_in_second_pass_of_overlap(db: psycopg.Connection[Any]) -> None:
    tz = "America/New_York"
    after = local("2024-11-03T01:10", tz, fold=1)  # 01:10 EST, the second 01:10
    assert iso([sql_next(db, "30 1 * * *", after, tz)], tz) == ["2024-11-04T01:30-05:00"]
    assert iso([sql_next(db, "30 * * * *", after, tz)], tz) == ["2024-11-03T01:30-05:00"]


def test_start_in_first_pass_returns_to_the_repeated_times(db: psycopg.Connection[Any]) -> None:
    tz = "America/New_York"
    after = local("2024-11-03T01:50", tz)  # 01:50 EDT: 01:00-01:50 come again
    assert iso([sql_next(db, "5 * * * *", after, tz)], tz) == ["2024-11-03T01:05-05:00"]
    assert iso([sql_next(db, "5 1 * * *", after, tz)], tz) == ["2024-11-04T01:05-05:00"]


# --- documented divergences from croniter ----------------------------------------------------


def test_equal_range_is_one_value_not_the_whole_field(db: psycopg.Connection[Any]) -> None:
    # croniter reads "5-5" as "*" (so that "SUN-SUN" means every day); cron means minute 5.
    got = sql_chain(db, "5-5 * * * *", datetime(2024, 1, 1, tzinfo=UTC), "UTC", 2)
    assert [v.minute for v in got] == [5, 5]


def test_wrapping_range_with_step_counts_around_the_cycle(db: psycopg.Connection[Any]) -> None:
    # 50, 65 = 5: croniter says 50, 6 (off by one when the step crosses the end).
    got = sql_chain(db, "50-10/15 * * * *", datetime(2024, 1, 1, tzinfo=UTC), "UTC", 3)
    assert [v.minute for v in got] == [5, 50, 5]


def test_day_field_listing_every_day_counts_as_unrestricted(db: psycopg.Connection[Any]) -> None:
    # "1-31" with a weekday: only Mondays (the day-of-month field allows everything, like "*").
    got = sql_chain(db, "0 0 1-31 * MON", datetime(2024, 1, 2, tzinfo=UTC), "UTC", 3)
    assert {v.isoweekday() for v in got} == {1}


# --- validation -------------------------------------------------------------------------------


def raises_22023(
    db: psycopg.Connection[Any], query: str, params: tuple[Any, ...], starts_with: str
) -> str:
    with pytest.raises(psycopg.Error) as caught:
        db.execute(query, params)
    assert caught.value.diag.sqlstate == "22023", caught.value
    message = caught.value.diag.message_primary or ""
    assert message.startswith(starts_with), message
    return message


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("61 * * * *", 'expr: minute field "61" out of range 0-59'),
        ("* 24 * * *", 'expr: hour field "24" out of range 0-23'),
        ("* * 0 * *", 'expr: day-of-month field "0" out of range 1-31'),
        ("* * 32 * *", 'expr: day-of-month field "32" out of range 1-31'),
        ("* * * 13 *", 'expr: month field "13" out of range 1-12'),
        ("* * * 0 *", 'expr: month field "0" out of range 1-12'),
        ("* * * * 8", 'expr: day-of-week field "8" out of range 0-7'),
        ("* * * JANUARY *", 'expr: month field "JANUARY" is not a number or month name'),
        ("* * * * FUN", 'expr: day-of-week field "FUN" is not a number or weekday name'),
        ("MON * * * *", 'expr: minute field "MON" is not a number'),
        ("*/0 * * * *", 'expr: minute field "*/0": step must be between 1 and 60'),
        ("* */25 * * *", 'expr: hour field "*/25": step must be between 1 and 24'),
        ("1,,2 * * * *", 'expr: minute field "1,,2" is not valid'),
        ("5- * * * *", 'expr: minute field "5-" is not valid'),
        ("* * * * 1-2-3", 'expr: day-of-week field "1-2-3" is not valid'),
        ("* * L * *", 'expr: day-of-month field "L" is not a number'),
        ("-5 * * * *", 'expr: minute field "-5" is not valid'),
        ("* * * *", "expr: expected 5 fields"),
        ("* * * * * *", "expr: expected 5 fields"),
        ("", "expr: expected 5 fields"),
        ("@every_minute", 'expr: unknown macro "@every_minute"'),
        ("0 0 31 2 *", 'expr: day-of-month field "31" never occurs in month field "2"'),
        ("0 0 30 2 *", 'expr: day-of-month field "30" never occurs in month field "2"'),
        ("0 0 31 APR,JUN,SEP,NOV *", 'expr: day-of-month field "31" never occurs in month field'),
    ],
)
def test_invalid_expression_is_rejected_naming_the_field(
    db: psycopg.Connection[Any], expr: str, message: str
) -> None:
    raises_22023(db, "SELECT hydra.cron_validate(%s)", (expr,), message)
    raises_22023(db, "SELECT hydra.cron_next(%s, now())", (expr,), message)


def test_null_expression_is_rejected(db: psycopg.Connection[Any]) -> None:
    raises_22023(db, "SELECT hydra.cron_validate(NULL)", (), "expr: must not be null")


def test_impossible_date_with_a_weekday_is_valid_by_the_or_rule(
    db: psycopg.Connection[Any],
) -> None:
    # 31 February never comes, but every Monday does.
    got = sql_chain(db, "0 0 31 2 MON", datetime(2024, 1, 1, tzinfo=UTC), "UTC", 2)
    assert [v.isoweekday() for v in got] == [1, 1]


@pytest.mark.parametrize(
    "tz", ["Mars/Base", "UTC+3", "+05", "-5", "<+05>-5", "", "PST", "Europe/London; DROP TABLE x"]
)
def test_unknown_time_zone_is_rejected_naming_tz(db: psycopg.Connection[Any], tz: str) -> None:
    message = raises_22023(db, "SELECT hydra.cron_next('* * * * *', now(), %s)", (tz,), "tz: ")
    assert message == f'tz: unknown time zone "{tz}"'


def test_null_or_out_of_range_arguments_are_rejected(db: psycopg.Connection[Any]) -> None:
    raises_22023(db, "SELECT hydra.cron_next('* * * * *', now(), NULL)", (), "tz: must not be null")
    for after in (None, "infinity", "-infinity", "0044-03-15 BC", "294000-01-01"):
        raises_22023(
            db,
            "SELECT hydra.cron_next('0 0 29 2 *', %s::timestamptz)",
            (after,),
            "after: must be a finite timestamp between years 1 and 9999",
        )


def test_time_zone_names_are_case_insensitive_and_legacy_names_work(
    db: psycopg.Connection[Any],
) -> None:
    after = datetime(2024, 7, 1, tzinfo=UTC)
    assert sql_next(db, "0 12 * * *", after, "america/new_york") == sql_next(
        db, "0 12 * * *", after, "America/New_York"
    )
    assert sql_next(db, "0 12 * * *", after, "EST5EDT") == sql_next(
        db, "0 12 * * *", after, "America/New_York"
    )
    # "CET" is also a fixed-offset abbreviation to PostgreSQL; as a zone it has summer time.
    assert sql_next(db, "0 12 * * *", after, "CET") == datetime(2024, 7, 1, 10, tzinfo=UTC)
