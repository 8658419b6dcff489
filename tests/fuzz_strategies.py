"""Hypothesis strategies over the arguments of every public SQL function, for tests/test_fuzz.py.

Every argument is drawn as an :class:`Arg`: the SQL expression of its value (a literal cast
to the argument's type, or a short expression such as ``repeat('x', 100000)`` for a huge
value), so that a call is one SQL statement a reader can paste into psql. A text value
holding NUL cannot be written in SQL at all (PostgreSQL text rejects it); such an argument
carries the Python string instead, sent as a query parameter, which psycopg must refuse on the
client before anything reaches the server.

``SPECS`` names, for each public function, its arguments in catalog order with their types
and strategies; tests/test_fuzz.py compares it with ``pg_proc`` so that a function added (or
a signature changed) without a strategy fails the fuzz tests.

A strategy that needs what the database holds (ids of existing messages, lease tokens, role
names) takes a :class:`Known` and is built anew for each call.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from functools import cache
from typing import Any

from hypothesis import strategies as st

S = st.SearchStrategy

# Queues and channels the fuzzer writes to. The canary (tests/test_fuzz.py) lives in
# CANARY_CHANNEL of each of QUEUES, a channel no strategy names: fuzzed calls reach it only
# through what they do to its queue.
QUEUES = ("default", "fuzz-q")
CHANNELS = ("tenant-a", "tenant-b", "capped")
CANARY_CHANNEL = "hydra-fuzz-canary"


@dataclass(eq=False)
class Known:
    """What the database holds right now, for the strategies to pick from. One object per
    test, changed in place: strategies are built once per Known (hypothesis validates each new
    strategy object, which costs more than a call) and read its lists when they draw."""

    ids: list[int] = field(default_factory=list)  # messages that exist (or existed)
    leases: list[tuple[int, str]] = field(default_factory=list)  # (id, lease token) handed out
    roles: list[str] = field(default_factory=list)
    server_version: int = 18

    def clear(self) -> None:
        self.ids.clear()
        self.leases.clear()


@dataclass(frozen=True)
class Arg:
    """One argument value: ``sql`` is its SQL expression; ``param`` (only for text holding
    NUL, which no SQL literal can carry) is the Python value sent as a parameter instead."""

    sql: str
    param: str | None = None

    def __repr__(self) -> str:
        return self.sql if self.param is None else f"<parameter {self.param!r}>"


@dataclass(frozen=True)
class Call:
    """``SELECT * FROM hydra.<function>(<name> => <value>, ...)``."""

    function: str
    args: tuple[tuple[str, str, Arg], ...]  # (argument name, SQL type, value)
    procedure: bool = False

    def statement(self) -> tuple[str, list[str] | None]:
        """The SQL text and, when an argument holds NUL, the parameters to send with it."""
        params = [a.param for _, _, a in self.args if a.param is not None]
        parts = []
        for name, pgtype, arg in self.args:
            if arg.param is not None:
                value = f"%s::{pgtype}"
            else:
                value = arg.sql.replace("%", "%%") if params else arg.sql
            parts.append(f"{name} => {value}")
        verb = "CALL" if self.procedure else "SELECT * FROM"
        return f"{verb} hydra.{self.function}({', '.join(parts)})", params or None

    def __str__(self) -> str:
        query, params = self.statement()
        return query if params is None else f"{query}  -- parameters: {params!r}"


# --------------------------------------------------------------------------------------------
# SQL literals
# --------------------------------------------------------------------------------------------


def text_literal(value: str) -> str:
    """A SQL literal for ``value`` (no NUL) that prints on one line: characters outside
    printable ASCII are written as U& escapes."""
    if all(" " <= ch <= "~" for ch in value):
        return "'" + value.replace("'", "''") + "'"
    out = []
    for ch in value:
        if ch == "\\":
            out.append("\\\\")
        elif ch == "'":
            out.append("''")
        elif " " <= ch <= "~":
            out.append(ch)
        elif ord(ch) <= 0xFFFF:
            out.append(f"\\{ord(ch):04x}")
        else:
            out.append(f"\\+{ord(ch):06x}")
    return "U&'" + "".join(out) + "'"


def typed(value: str, pgtype: str) -> Arg:
    return Arg(f"{text_literal(value)}::{pgtype}")


def null(pgtype: str) -> Arg:
    return Arg(f"NULL::{pgtype}")


def text_arg(value: str) -> Arg:
    if "\x00" in value:
        return Arg("", param=value)
    return typed(value, "text")


def array_arg(items: Sequence[Arg], pgtype: str) -> Arg:
    """``ARRAY[...]::pgtype`` of SQL expressions (elements holding NUL are dropped: an array
    element cannot be a parameter of its own here)."""
    parts = [a.sql for a in items if a.param is None]
    return Arg(f"ARRAY[{', '.join(parts)}]::{pgtype}")


# --------------------------------------------------------------------------------------------
# Scalars
# --------------------------------------------------------------------------------------------


@st.composite
def _mostly(draw: st.DrawFn, valid: S[Any], hostile: S[Any]) -> Any:
    return draw(valid) if draw(st.integers(0, 9)) < 7 else draw(hostile)


# mostly() strategy -> its (valid, hostile) parts, for calls() to choose from.
PARTS: dict[S[Any], tuple[S[Any], S[Any]]] = {}


@cache
def mostly(valid: S[Any], hostile: S[Any]) -> S[Any]:
    """``valid`` seven times in ten, else ``hostile`` (shrinks towards ``valid``). A call
    stops at its first bad argument, so calls() makes one to three arguments of a call hostile
    and draws the others from their valid part: the function's body is reached."""
    strategy = _mostly(valid, hostile)
    PARTS[strategy] = (valid, hostile)
    return strategy

INT4_EDGES = (
    -2147483648, -2147483647, -1, 0, 1, 2, 3, 100, 1023, 1024, 268435455, 268435456, 2147483646,
    2147483647,
)  # fmt: skip
INT8_EDGES = (-9223372036854775808, -1, 0, 1, 9223372036854775807, 2147483648)


@cache
def hostile_int4() -> S[Arg]:
    edges = st.sampled_from(INT4_EDGES)
    values = st.one_of(edges, edges, edges, st.integers(-(2**31), 2**31 - 1))
    return st.one_of(st.just(null("integer")), values.map(lambda v: typed(str(v), "integer")))


@cache
def int4() -> S[Arg]:
    """priority, max_concurrency, ...: small numbers or NULL, else the edges."""
    valid = st.one_of(st.just(null("integer")), st.integers(-5, 10).map(
        lambda v: typed(str(v), "integer")))  # fmt: skip
    return mostly(valid, hostile_int4())


@cache
def small_positive_int4() -> S[Arg]:
    """num_attempts, batch: 1 to 5, else the edges."""
    return mostly(st.integers(1, 5).map(lambda v: typed(str(v), "integer")), hostile_int4())


# numeric: the values the issue names, the documented bounds and just past them.
NUMERIC_EDGES = (
    "NaN", "Infinity", "-Infinity", "1e-400", "1e-400", "-1e-400", "1e-16383", "1e131071",
    "1e131071", "-1e131071", "0", "-0", "1e-16", "315360000", "315360000.000001", "1e10",
    "99999999999999999999", "-1",
)  # fmt: skip


@cache
def numeric() -> S[Arg]:
    """Seconds and factors: 0.001 to 60 mostly, else the edges, NULL or any decimal."""
    decimals = st.decimals(
        min_value=Decimal("-1e12"), max_value=Decimal("1e12"), allow_nan=False, places=6
    )
    valid = st.one_of(
        st.sampled_from(("0.001", "0.5", "1", "2", "5", "60")),
        st.decimals(min_value=Decimal("1"), max_value=Decimal("60"), places=3).map(str),
    ).map(lambda v: typed(v, "numeric"))
    edges = st.sampled_from(NUMERIC_EDGES).map(lambda v: typed(v, "numeric"))
    hostile = st.one_of(
        edges, edges, edges, st.just(null("numeric")),
        decimals.map(lambda v: typed(str(v), "numeric")),
    )
    return mostly(valid, hostile)


@cache
def boolean() -> S[Arg]:
    return st.sampled_from((null("boolean"), Arg("true"), Arg("false")))


# Strings: control characters, odd Unicode, NUL (client-side refusal), lengths around 255.
ODD_STRINGS = (
    "", " ", "  x  ", "\t", "a\nb", "a\rb", "\x1b[31m", "\x7f", "\u0085", "\u00a0", "\u200b",
    "\u202e", "\ufeff", "\uffff", "é", "Ω", "🎉" * 10, "\U0010ffff", "x" * 255, "é" * 255,
    "x" * 256, "x" * 3200, "'; DROP TABLE hydra.message; --", '"', "%s", "%(x)s", "\\", "null",
    "NULL", "default ", "Default", "a\x00b", "\x00",
)  # fmt: skip
# Any character a Python str can send (lone surrogates cannot be encoded), but NUL.
CHARACTERS = st.characters(exclude_categories=("Cs",), exclude_characters="\x00")
LONG_NAMES = ("x" * 255, "é" * 255, "x" * 256, "x" * 3200)
HUGE_STRINGS = ("repeat('x', 100000)", "repeat(U&'\\00e9', 70000)", "repeat('ab', 500000)")


@cache
def any_text() -> S[Arg]:
    return st.one_of(
        st.sampled_from(ODD_STRINGS).map(text_arg),
        st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=40).map(text_arg),
        st.sampled_from(HUGE_STRINGS).map(lambda e: Arg(f"{e}::text")),
    )


@cache
def name_from(pool: Sequence[str]) -> S[Arg]:
    """A text argument that is mostly one of ``pool``, else NULL or anything."""
    hostile = st.one_of(
        st.just(null("text")), st.sampled_from(LONG_NAMES).map(text_arg),
        st.sampled_from(ODD_STRINGS).map(text_arg), any_text(),
    )  # fmt: skip
    return mostly(st.sampled_from(pool).map(text_arg), hostile)


@cache
def queue_name() -> S[Arg]:
    return name_from(QUEUES)


@cache
def channel_name() -> S[Arg]:
    return name_from(CHANNELS)


@cache
def message_name() -> S[Arg]:
    return name_from(("invoice-1", "invoice-2"))


@cache
def text_array(element: S[Arg]) -> S[Arg]:
    good, bad = PARTS.get(element, (element, element))
    hostile = st.one_of(
        st.just(null("text[]")),
        st.just(Arg("'{}'::text[]")),
        st.lists(st.one_of(good, bad, bad, st.just(null("text"))), min_size=1, max_size=5).map(
            lambda items: array_arg(items, "text[]")
        ),
        st.just(Arg("array_fill('q'::text, ARRAY[10000])")),
    )
    return mostly(st.lists(good, min_size=1, max_size=4).map(
        lambda items: array_arg(items, "text[]")), hostile)  # fmt: skip


# --------------------------------------------------------------------------------------------
# Ids, lease tokens, arrays of them
# --------------------------------------------------------------------------------------------


@st.composite
def _message_id(draw: st.DrawFn, known: Known) -> int:
    """An id: mostly one the database holds (leased ones first), else an edge or any."""
    kind = draw(st.integers(0, 7))
    if kind <= 2 and known.leases:
        return draw(st.sampled_from(known.leases))[0]
    if kind <= 4 and known.ids:
        return draw(st.sampled_from(known.ids))
    if kind == 5:
        return max(known.ids, default=0) + 1  # the next id, never issued yet
    return draw(st.one_of(st.sampled_from(INT8_EDGES), st.integers(-(2**63), 2**63 - 1)))


@cache
def message_id(known: Known) -> S[int]:
    return _message_id(known)


@cache
def id_arg(known: Known) -> S[Arg]:
    return st.one_of(
        st.just(null("bigint")),
        message_id(known).map(lambda v: typed(str(v), "bigint")),
    )


@st.composite
def _token(draw: st.DrawFn, known: Known) -> str:
    """A lease token: mostly one handed out, else any."""
    if known.leases and draw(st.integers(0, 3)):
        return draw(st.sampled_from(known.leases))[1]
    return draw(st.one_of(st.uuids().map(str), st.just("00000000-0000-0000-0000-000000000000")))


@cache
def token(known: Known) -> S[str]:
    return _token(known)


@cache
def token_arg(known: Known) -> S[Arg]:
    return st.one_of(st.just(null("uuid")), token(known).map(lambda v: typed(v, "uuid")))


@cache
def token_array(known: Known) -> S[Arg]:
    element = st.one_of(st.just("NULL"), token(known).map(text_literal))
    return st.one_of(
        st.just(null("uuid[]")),
        st.lists(element, max_size=4).map(lambda items: Arg(f"ARRAY[{', '.join(items)}]::uuid[]")),
    )


@cache
def id_array(known: Known) -> S[Arg]:
    element = st.one_of(st.just("NULL"), message_id(known).map(lambda v: text_literal(str(v))))
    return st.one_of(
        st.just(null("bigint[]")),
        st.just(Arg("'{}'::bigint[]")),
        st.lists(element, min_size=1, max_size=6).map(
            lambda items: Arg(f"ARRAY[{', '.join(items)}]::bigint[]")
        ),
        st.just(Arg("ARRAY(SELECT generate_series(1, 1000))::bigint[]")),
    )


@cache
def leases(known: Known) -> S[tuple[Arg, Arg]]:
    return _leases(known)


@st.composite
def _leases(draw: st.DrawFn, known: Known) -> tuple[Arg, Arg]:
    """message_ids and lease_tokens of a *_many call: aligned pairs that are mostly real
    leases, sometimes misaligned, NULL or with NULL elements."""
    pairs: list[tuple[str, str]] = []
    for _ in range(draw(st.integers(0, 5))):
        if known.leases and draw(st.booleans()):
            mid, tok = draw(st.sampled_from(known.leases))
            pairs.append((str(mid), tok))
        else:
            pairs.append((str(draw(message_id(known))), draw(token(known))))
    ids = [text_literal(i) for i, _ in pairs]
    tokens = [text_literal(t) for _, t in pairs]
    shape = draw(st.sampled_from(("aligned", "aligned", "short", "null", "null-element")))
    if shape == "short" and tokens:
        tokens.pop()
    if shape == "null-element" and ids:
        ids[draw(st.integers(0, len(ids) - 1))] = "NULL"
    ids_arg = Arg(f"ARRAY[{', '.join(ids)}]::bigint[]")
    tokens_arg = Arg(f"ARRAY[{', '.join(tokens)}]::uuid[]")
    if shape == "null":
        which = draw(st.integers(0, 1))
        ids_arg = null("bigint[]") if which == 0 else ids_arg
        tokens_arg = null("uuid[]") if which == 1 else tokens_arg
    return ids_arg, tokens_arg


# --------------------------------------------------------------------------------------------
# JSON
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Raw:
    """A JSON token written as is (numbers Python's float cannot hold: 1e-400, 1e131071)."""

    token: str


JSON_EDGE_NUMBERS = (
    "0", "-0", "1", "-1", "1.5", "1e-400", "-1e-400", "1e-16383", "1e131071", "-1e131071",
    "2147483647", "2147483648", "-2147483648", "-2147483649", "99999999999",
    "99999999999999999999", "9223372036854775808", "1E2", "1e+308", "1e309",
    "0.000000000000000000000000000001", "123456789012345678901234567890.123456789",
)  # fmt: skip


def to_json(value: Any) -> str:
    """JSON text of a value built by these strategies (dicts, lists, Raw numbers, ...)."""
    if isinstance(value, Raw):
        return value.token
    if isinstance(value, dict):
        return "{" + ", ".join(f"{to_json(k)}: {to_json(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(to_json(v) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False)


# JSON strings: anything but NUL (jsonb rejects \u0000 when the literal is cast, before any
# function runs: that tests PostgreSQL, not hydramq).
json_strings = st.one_of(
    st.sampled_from([s for s in ODD_STRINGS if "\x00" not in s]),
    st.text(alphabet=CHARACTERS, max_size=20),
)
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.sampled_from(JSON_EDGE_NUMBERS).map(Raw),
    st.integers(-(2**70), 2**70),
    json_strings,
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(json_strings, inner, max_size=4)
    ),
    max_leaves=12,
)


def json_literal(value: Any) -> Arg:
    return typed(to_json(value), "jsonb")


DEEP_JSON = (
    "(repeat('[', 3000) || repeat(']', 3000))::jsonb",
    "(repeat('{\"a\": ', 3000) || '1' || repeat('}', 3000))::jsonb",
    "jsonb_build_object('big', repeat('x', 1000000))",
)


@cache
def payload() -> S[Arg]:
    return mostly(
        json_values.map(json_literal),
        st.one_of(st.just(null("jsonb")), st.sampled_from(DEEP_JSON).map(Arg)),
    )


ELEMENT_KEYS = (
    "payload", "queue", "channel", "priority", "name", "num_attempts", "lock_secs",
    "lock_secs_factor", "delay_secs", "depends_on", "cascade_failure", "max_processing_secs",
)  # fmt: skip
ODD_KEYS = ("chanel", "", "PAYLOAD", "payload ", "x" * 300, "ord", "id")


@cache
def option_value(known: Known, key: str) -> S[Any]:
    """A JSON value for one option of an enqueue_many element: sensible ones, wrong types,
    edge numbers."""
    sensible: dict[str, S[Any]] = {
        "payload": json_values,
        "queue": st.sampled_from(QUEUES),
        "channel": st.sampled_from(CHANNELS),
        "name": st.sampled_from(("invoice-1", "invoice-2")),
        "num_attempts": st.integers(1, 4),
        "priority": st.integers(-5, 5),
        "cascade_failure": st.booleans(),
        "depends_on": st.lists(message_id(known), max_size=3),
    }
    edge = st.sampled_from(JSON_EDGE_NUMBERS).map(Raw)
    edge_lists = st.lists(st.one_of(edge, st.none(), st.just("1")), min_size=1, max_size=3)
    seconds = st.sampled_from((Raw("0.001"), Raw("0.5"), 1, 2, 5, 60))
    return mostly(sensible.get(key, seconds),
                  st.one_of(edge, json_scalars, edge_lists, json_values))  # fmt: skip


@cache
def element(known: Known) -> S[Any]:
    return _element(known)


@st.composite
def _element(draw: st.DrawFn, known: Known) -> Any:
    kind = draw(st.sampled_from(("message",) * 12 + ("scalar", "no-payload", "odd-key")))
    if kind == "scalar":
        return draw(json_values)
    keys = draw(st.lists(st.sampled_from(ELEMENT_KEYS[1:]), max_size=5, unique=True))
    if kind != "no-payload":
        keys = ["payload", *keys]
    if kind == "odd-key":
        keys.append(draw(st.sampled_from(ODD_KEYS)))
    return {k: draw(option_value(known, k)) for k in keys}


@cache
def messages(known: Known) -> S[Arg]:
    hostile = st.one_of(
        st.just(null("jsonb")),
        st.sampled_from(("[]", "{}", '"x"', "1", "null", '{"payload": 1}')).map(
            lambda v: typed(v, "jsonb")
        ),
        st.just(
            Arg("(SELECT jsonb_agg(jsonb_build_object('payload', g, 'channel', 'c' || g % 7))"
                " FROM generate_series(1, 500) g)")
        ),
        st.sampled_from(DEEP_JSON).map(Arg),
    )
    return mostly(st.lists(element(known), min_size=1, max_size=8).map(json_literal), hostile)


# --------------------------------------------------------------------------------------------
# Cron, time zones, instants, intervals
# --------------------------------------------------------------------------------------------

VALID_CRON = (
    "* * * * *", "*/5 * * * *", "0 0 * * *", "0 0 29 2 *", "0 0 31 * *", "0 0 30 2 *",
    "0 0 31 4 *", "0 0 * * 0", "0 0 * * 7", "0 0 13 * FRI", "59 23 31 12 *", "0 0 1 JAN MON",
    "10-40/10 * * * *", "30 2 * * *", "0 2 * * SUN", "0 0 29 2 1", "50-10 22-2 * * *",
    "@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly",
)  # fmt: skip
BAD_FIELDS = (
    "60", "24", "32", "13", "8", "-1", "*/0", "5-1", "1-99", "99999999999999999999",
    "*/2147483648", "2147483648", "L", "?", "1#2", "15W", "JANUARY", "MO", "", " ", "1,,2",
    ",", "/", "*/", "1-", "-", "0-59/60", "*/61", "A-Z", "0x10", "1.5", "\u0663", "\uff11",
    "*/-1", "1-2-3", "1/2/3", "**",
)  # fmt: skip
ODD_CRON = (
    "", " ", "@reboot", "@every 5m", "@YEARLY", " @daily", "@daily ", "@", "* * * * * *",
    "* * * *", "*\t*\t*\t*\t*", "*\n* * * *", "  *  *  *  *  *  ", "* * * * * * * * * *",
    "0 0 * * * 2026", "@yearly @daily",
)  # fmt: skip


@cache
def near_valid_cron() -> S[str]:
    return _near_valid_cron()


@st.composite
def _near_valid_cron(draw: st.DrawFn) -> str:
    fields = draw(st.sampled_from([c for c in VALID_CRON if not c.startswith("@")])).split()
    fields[draw(st.integers(0, 4))] = draw(st.sampled_from(BAD_FIELDS))
    return " ".join(fields)


@cache
def cron_expr() -> S[Arg]:
    alphabet = "0123456789*/,-@ abdefjmnorstuwyJANFEBMONSUNFRI\t"
    hostile = st.one_of(
        st.just(null("text")),
        near_valid_cron().map(text_arg),
        st.sampled_from(ODD_CRON).map(text_arg),
        st.text(alphabet=alphabet, max_size=30).map(text_arg),
        any_text(),
    )
    return mostly(st.sampled_from(VALID_CRON).map(text_arg), hostile)


TIME_ZONES = (
    "UTC", "America/New_York", "Europe/London", "Australia/Lord_Howe", "Pacific/Chatham",
    "Pacific/Kiritimati", "Pacific/Pago_Pago", "Asia/Kathmandu", "America/St_Johns",
    "Europe/Dublin", "Africa/Casablanca", "America/Santiago", "Europe/Kyiv",
)  # fmt: skip
# Names PostgreSQL itself may accept or not, POSIX strings, files that are no zone, ...
TRAP_TIME_ZONES = (
    "", "UTC+1", "Mars/Olympus", "posixrules", "Factory", "x" * 5000, "EST5EDT", "+14", "-14",
    "Etc/GMT-14", "Etc/GMT+12", "localtime", "<+05>-5", "utc", "../../etc/passwd", "GMT0",
    "UTC+99999999", "posix/Europe/Paris", "right/UTC", "Europe/", "/UTC", "UTC ",
)  # fmt: skip


@cache
def time_zone() -> S[Arg]:
    hostile = st.one_of(
        st.just(null("text")), st.sampled_from(TRAP_TIME_ZONES).map(text_arg), any_text()
    )
    return mostly(st.sampled_from(TIME_ZONES).map(text_arg), hostile)


INSTANTS = (
    "0001-01-01 00:00:00+00", "0001-01-01 00:00:00-14", "0001-12-31 23:59:59+00",
    "9999-12-31 23:59:59.999999+00", "9999-12-31 23:59:59.999999+14", "9999-12-29 00:00+00",
    "9999-12-31 00:00+00", "9999-12-30 23:59:59+00", "9999-11-30 00:00+00",
    "2026-03-08 02:30:00 America/New_York", "2026-11-01 01:30:00 America/New_York",
    "2026-03-29 01:00:00+00", "2028-02-29 00:00:00+00", "2026-12-31 23:59:59.999999+00",
)  # fmt: skip


@cache
def instant() -> S[Arg]:
    zones = st.sampled_from((timezone.utc, timezone(timedelta(hours=14)),
                             timezone(timedelta(hours=-12))))  # fmt: skip
    datetimes = st.datetimes(
        min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=zones
    )
    return mostly(
        st.one_of(st.sampled_from(INSTANTS), datetimes.map(lambda v: v.isoformat())).map(
            lambda v: typed(v, "timestamptz")),
        st.sampled_from(("infinity", "-infinity", None)).map(
            lambda v: null("timestamptz") if v is None else typed(v, "timestamptz")),
    )  # fmt: skip


INTERVALS = (
    "0", "1 microsecond", "-1 microsecond", "-1 day", "7 days", "1000000 years",
    "178000000 years", "-178000000 years", "2147483647 days", "-2147483648 days",
    "2562047788 hours", "-2562047788 hours", "1 mon -1 day", "1 year -1 second",
)  # fmt: skip


@cache
def interval(known: Known) -> S[Arg]:
    values = list(INTERVALS)
    if known.server_version >= 17:  # interval infinity is new in 17
        values += ["infinity", "-infinity"]
    units = st.sampled_from(("seconds", "minutes", "days", "months", "years"))
    amounts = st.integers(-10_000_000, 10_000_000)
    return st.one_of(
        st.just(null("interval")),
        st.sampled_from(values).map(lambda v: typed(v, "interval")),
        st.tuples(amounts, units).map(lambda t: typed(f"{t[0]} {t[1]}", "interval")),
    )


# coordinate_loop runs until the end of its period (the default: a minute; always passed): the
# only valid period drawn is the shortest.
LOOP_PERIODS = (
    "1 second", "0", "-1 second", "999 milliseconds", "1 day 00:00:01", "1000000 years",
    "-178000000 years",
)  # fmt: skip


@cache
def loop_period(known: Known) -> S[Arg]:
    values = list(LOOP_PERIODS) + (["infinity", "-infinity"] if known.server_version >= 17 else [])
    return st.one_of(
        st.just(null("interval")), st.sampled_from(values).map(lambda v: typed(v, "interval"))
    )


@cache
def role(known: Known) -> S[Arg]:
    return st.one_of(
        st.sampled_from(known.roles or ["postgres"]).map(lambda r: typed(r, "regrole")),
        st.sampled_from(("0", "1", "4294967295")).map(lambda v: typed(v, "regrole")),
        st.just(null("regrole")),
    )


# --------------------------------------------------------------------------------------------
# Every public function
# --------------------------------------------------------------------------------------------

ArgStrategy = Callable[[Known], S[Arg]]


def fixed(strategy: Callable[[], S[Arg]]) -> ArgStrategy:
    return lambda _known: strategy()


@dataclass(frozen=True)
class Spec:
    """A function's arguments in catalog order: (name, SQL type, strategy); the first
    ``required`` have no default and are always passed, the others only sometimes."""

    args: tuple[tuple[str, str, ArgStrategy], ...]
    required: int
    procedure: bool = False
    always: int = 0  # leading arguments passed in every call, defaults or not

    def signature(self, function: str) -> str:
        """As ``oid::regprocedure`` prints it."""
        return f"hydra.{function}({','.join(t for _, t, _ in self.args)})"


ENQUEUE_OPTIONS: tuple[tuple[str, str, ArgStrategy], ...] = (
    ("queue", "text", fixed(queue_name)),
    ("channel", "text", fixed(channel_name)),
    ("priority", "integer", fixed(int4)),
    ("name", "text", fixed(message_name)),
    ("num_attempts", "integer", fixed(small_positive_int4)),
    ("lock_secs", "numeric", fixed(numeric)),
    ("lock_secs_factor", "numeric", fixed(numeric)),
    ("delay_secs", "numeric", fixed(numeric)),
    ("depends_on", "bigint[]", id_array),
    ("cascade_failure", "boolean", fixed(boolean)),
    ("max_processing_secs", "numeric", fixed(numeric)),
)
SCHEDULE_OPTIONS = tuple(
    o for o in ENQUEUE_OPTIONS if o[0] in ("priority", "num_attempts", "lock_secs",
                                           "lock_secs_factor", "max_processing_secs")
)  # fmt: skip
ERRORS = fixed(lambda: text_array(any_text()))
RETRIES: ArgStrategy = fixed(
    lambda: st.one_of(
        st.just(null("boolean[]")),
        st.lists(st.sampled_from(("true", "false", "NULL")), max_size=5).map(
            lambda v: Arg(f"ARRAY[{', '.join(v)}]::boolean[]")
        ),
    )
)

SPECS: dict[str, Spec] = {
    "enqueue": Spec((("payload", "jsonb", fixed(payload)), *ENQUEUE_OPTIONS), 1),
    "enqueue_many": Spec((("messages", "jsonb", messages), *ENQUEUE_OPTIONS), 1),
    "dequeue": Spec(
        (("queue", "text", fixed(queue_name)), ("batch", "integer", fixed(small_positive_int4)),
         ("queues", "text[]", fixed(lambda: text_array(queue_name())))), 0),  # fmt: skip
    "complete": Spec((("message_id", "bigint", id_arg), ("lease_token", "uuid", token_arg)), 2),
    "complete_many": Spec(
        (("message_ids", "bigint[]", id_array), ("lease_tokens", "uuid[]", token_array)), 2
    ),
    "fail": Spec(
        (("message_id", "bigint", id_arg), ("lease_token", "uuid", token_arg),
         ("error", "text", fixed(any_text)), ("retry", "boolean", fixed(boolean))), 2),  # fmt: skip
    "fail_many": Spec(
        (("message_ids", "bigint[]", id_array), ("lease_tokens", "uuid[]", token_array),
         ("errors", "text[]", ERRORS), ("retry", "boolean", fixed(boolean)),
         ("retries", "boolean[]", RETRIES)), 2),  # fmt: skip
    "heartbeat": Spec(
        (("message_id", "bigint", id_arg), ("lease_token", "uuid", token_arg),
         ("extend_secs", "numeric", fixed(numeric))), 2),  # fmt: skip
    "worker_idle": Spec((("queues", "text[]", fixed(lambda: text_array(queue_name()))),), 1),
    "worker_busy": Spec((), 0),
    "channel_policy_set": Spec(
        (("channel", "text", fixed(channel_name)), ("max_concurrency", "integer", fixed(int4)),
         ("max_size", "integer", fixed(int4)),
         ("queue", "text", fixed(queue_name))), 1),  # fmt: skip
    "channel_policy_clear": Spec(
        (("channel", "text", fixed(channel_name)), ("queue", "text", fixed(queue_name))), 1
    ),
    "queue_set": Spec(
        (("queue", "text", fixed(queue_name)), ("max_payload_bytes", "integer", fixed(int4))), 1
    ),
    "queue_clear": Spec((("queue", "text", fixed(queue_name)),), 1),
    "schedule_set": Spec(
        (("name", "text", fixed(lambda: name_from(("nightly", "hourly")))),
         ("cron", "text", fixed(cron_expr)), ("payload", "jsonb", fixed(payload)),
         ("queue", "text", fixed(queue_name)), ("channel", "text", fixed(channel_name)),
         ("tz", "text", fixed(time_zone)), *SCHEDULE_OPTIONS), 3),  # fmt: skip
    "schedule_clear": Spec(
        (("name", "text", fixed(lambda: name_from(("nightly", "hourly")))),
         ("queue", "text", fixed(queue_name)),
         ("channel", "text", fixed(channel_name))), 1),  # fmt: skip
    "coordinate": Spec(
        (("batch", "integer", fixed(small_positive_int4)),
         ("failed_retention", "interval", interval)), 0),  # fmt: skip
    "coordinate_loop": Spec(
        (("period", "interval", loop_period), ("poll_secs", "numeric", fixed(numeric)),
         ("batch", "integer", fixed(small_positive_int4)),
         ("failed_retention", "interval", interval), ("rounds", "integer", fixed(int4)),
         ("transitions", "jsonb", fixed(payload)), ("retried", "integer", fixed(int4))), 0,
        procedure=True, always=1),  # fmt: skip
    "cron_validate": Spec((("expr", "text", fixed(cron_expr)),), 1),
    "cron_next": Spec(
        (("expr", "text", fixed(cron_expr)), ("after", "timestamp with time zone",
         fixed(instant)), ("tz", "text", fixed(time_zone))), 2),  # fmt: skip
    "grant_producer": Spec((("role", "regrole", role),), 1),
    "grant_worker": Spec((("role", "regrole", role),), 1),
    "grant_admin": Spec((("role", "regrole", role),), 1),
}

# The settling functions take aligned arrays: draw them together.
PAIRED = {"complete_many", "fail_many"}


@cache
def calls(function: str, known: Known) -> S[Call]:
    return _calls(function, known)


@st.composite
def _calls(draw: st.DrawFn, function: str, known: Known) -> Call:
    """One call of ``function``: its required arguments and each optional one half the time,
    named; none to three of them hostile, the others valid (where the strategy knows which
    values are)."""
    spec = SPECS[function]
    paired = draw(leases(known)) if function in PAIRED else None
    passed = [
        position for position in range(len(spec.args))
        if position < max(spec.required, spec.always) or draw(st.booleans())
    ]  # fmt: skip
    count = min(len(passed), draw(st.sampled_from((0, 1, 1, 1, 2, 2, 3))))
    hostile = set(draw(st.permutations(passed))[:count]) if count else set()
    args: list[tuple[str, str, Arg]] = []
    for position in passed:
        name, pgtype, make = spec.args[position]
        if paired is not None and position < 2:
            args.append((name, pgtype, paired[position]))
            continue
        strategy = make(known)
        if strategy in PARTS:
            strategy = PARTS[strategy][1 if position in hostile else 0]
        args.append((name, pgtype, draw(strategy)))
    return Call(function, tuple(args), spec.procedure)


