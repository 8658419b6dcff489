"""The enqueue fast paths against the general path they short-cut.

``hydra.enqueue`` and ``hydra.enqueue_many`` take a fast path for the common message (no name, no
parents, a channel or queue without policies) and the general set-based path otherwise. A
``"name": null`` key in an element means exactly "no name" but sends the batch down the general
path, and a unique name does the same for a single message, so the same input can be run
through both paths into two queues and everything each path stored compared: state, fair
position (virtual time), options, and the order in which the queue then serves them. Bad input
must be reported with the same error by both paths and write nothing.
"""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest
from helpers import dequeue, snapshot
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

Conn = psycopg.Connection[Any]

FAST, GENERAL = "fast_path", "general_path"

STORED = (
    "SELECT m.channel, m.prio, m.vtime, m.state, m.num_attempts, m.lock_secs,"
    " m.lock_secs_factor, m.max_processing_secs, m.cascade_failure,"
    " m.available_at IS NOT NULL, m.payload"
    " FROM hydra.message m WHERE m.queue = %s ORDER BY m.id"
)

# One element of a batch: payload plus any of the plain options (absent when not drawn).
elements = st.fixed_dictionaries(
    {"payload": st.integers(0, 9)},
    optional={
        "channel": st.sampled_from(["a", "b", "c", None]),
        "priority": st.sampled_from([1, 5, None]),
        "delay_secs": st.sampled_from([0, 30]),
        "num_attempts": st.sampled_from([1, 3]),
        "lock_secs": st.sampled_from([0, 2.5]),
        "cascade_failure": st.booleans(),
    },
)
call_defaults = st.fixed_dictionaries(
    {},
    optional={
        "channel": st.sampled_from(["a", "z"]),
        "priority": st.sampled_from([2, 9]),
        "delay_secs": st.sampled_from([0, 60]),
        "num_attempts": st.just(4),
    },
)
steps = st.lists(
    st.tuples(st.lists(elements, min_size=1, max_size=8), call_defaults, st.integers(0, 3)),
    min_size=1,
    max_size=5,
)


def run_many(db: Conn, queue: str, messages: list[dict[str, Any]],
             defaults: dict[str, Any]) -> list[tuple[int, str]]:
    args = "".join(f", {k} => %({k})s" for k in defaults)
    rows = db.execute(
        f"SELECT ord, result FROM hydra.enqueue_many(%(m)s::jsonb, queue => %(q)s{args})"
        " ORDER BY ord",
        {"m": json.dumps(messages), "q": queue, **defaults},
    ).fetchall()
    return [(r[0], r[1]) for r in rows]


def stored(db: Conn, queue: str) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in db.execute(STORED, (queue,)).fetchall()]


def served(db: Conn, queue: str, count: int) -> list[Any]:
    if count == 0:
        return []
    return [(r["channel"], r["priority"], r["payload"]) for r in dequeue(db, count, queue)]


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps)
def test_a_plain_batch_is_stored_and_served_as_the_general_path_stores_it(
    db: Conn, batches: list[tuple[list[dict[str, Any]], dict[str, Any], int]]
) -> None:
    db.execute("DELETE FROM hydra.message")
    for messages, defaults, take in batches:
        general = [{**m, "name": None} for m in messages]
        assert run_many(db, FAST, messages, defaults) == run_many(db, GENERAL, general, defaults)
        # Serving some between batches moves the head of the round being served.
        assert served(db, FAST, take) == served(db, GENERAL, take)
    assert stored(db, FAST) == stored(db, GENERAL)
    assert served(db, FAST, 100) == served(db, GENERAL, 100)


@settings(max_examples=25, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from(["a", "b", None]), st.sampled_from([None, 3]),
                          st.sampled_from([0, 20]), st.integers(0, 2)),
                min_size=1, max_size=12))  # fmt: skip
def test_a_single_plain_message_is_stored_as_the_general_path_stores_it(
    db: Conn, calls: list[tuple[str | None, int | None, int, int]]
) -> None:
    db.execute("DELETE FROM hydra.message")
    for n, (channel, priority, delay, take) in enumerate(calls):
        for queue, name in ((FAST, None), (GENERAL, f"unique-{n}")):
            row = db.execute(
                "SELECT result FROM hydra.enqueue(%s::jsonb, queue => %s, channel => %s,"
                " priority => %s, delay_secs => %s, name => %s)",
                (json.dumps(n), queue, channel, priority, delay, name),
            ).fetchone()
            assert row is not None and row[0] == "enqueued"
        assert served(db, FAST, take) == served(db, GENERAL, take)
    assert stored(db, FAST) == stored(db, GENERAL)


def test_an_element_override_and_an_explicit_null_differ_as_documented(db: Conn) -> None:
    # A key present overrides the call's default, even with null (the default channel, no
    # priority); an absent key takes the call's default.
    messages = [{"payload": 1}, {"payload": 2, "channel": None, "priority": None},
                {"payload": 3, "channel": "b", "priority": 7}]  # fmt: skip
    run_many(db, FAST, messages, {"channel": "a", "priority": 4})
    rows = db.execute(
        "SELECT channel, prio FROM hydra.message WHERE queue = %s ORDER BY id", (FAST,)
    ).fetchall()
    assert rows == [("a", 4), ("", -2147483648), ("b", 7)]


BAD_ELEMENTS = [
    '{"payload": null}',
    '{"payload": 1, "channel": ""}',
    '{"payload": 1, "channel": "' + "x" * 256 + '"}',
    '{"payload": 1, "channel": "a\\u0001"}',
    '{"payload": 1, "priority": -2147483648}',
    '{"payload": 1, "priority": 1.0}',
    '{"payload": 1, "num_attempts": 0}',
    '{"payload": 1, "lock_secs": -1}',
    '{"payload": 1, "lock_secs_factor": 0.5}',
    '{"payload": 1, "delay_secs": 315360001}',
    '{"payload": 1, "max_processing_secs": 0}',
]


@pytest.mark.parametrize("element", BAD_ELEMENTS)
def test_both_paths_reject_a_bad_element_alike_and_write_nothing(db: Conn, element: str) -> None:
    before = snapshot(db)
    errors = []
    for suffix in ("", ', {"payload": 0, "name": null}'):  # fast path, then general path
        with pytest.raises(psycopg.DataError) as raised:
            batch = f'[{{"payload": 0}}, {element}{suffix}]'
            db.execute("SELECT * FROM hydra.enqueue_many(%s::jsonb)", (batch,))
        errors.append((raised.value.sqlstate, raised.value.diag.message_primary))
    assert errors[0] == errors[1]
    assert (errors[0][0] or "").startswith("22")
    assert snapshot(db) == before


WRONG_JSON = [
    ('1', "messages[2]: must be an object"),
    ('{"channel": "a"}', 'messages[2]: has no "payload" key'),
    ('{"payload": 1, "colour": "red"}', "messages[2].colour: unknown key"),
    ('{"payload": 1, "channel": 5}', "messages[2].channel: must be a string"),
    ('{"payload": 1, "priority": "3"}', "messages[2].priority: must be an integer"),
    ('{"payload": 1, "num_attempts": true}', "messages[2].num_attempts: must be an integer"),
    ('{"payload": 1, "lock_secs": "5"}', "messages[2].lock_secs: must be a number"),
    ('{"payload": 1, "lock_secs_factor": [2]}', "messages[2].lock_secs_factor: must be a number"),
    ('{"payload": 1, "delay_secs": {}}', "messages[2].delay_secs: must be a number"),
    ('{"payload": 1, "max_processing_secs": "1"}',
     "messages[2].max_processing_secs: must be a number"),
    ('{"payload": 1, "cascade_failure": 1}', "messages[2].cascade_failure: must be a boolean"),
]


@pytest.mark.parametrize(("element", "message"), WRONG_JSON)
def test_an_element_of_the_wrong_json_shape_leaves_the_plain_path_and_is_named(
    db: Conn, element: str, message: str
) -> None:
    # The plain path's gate must send it to the general path's precise checks, not cast it.
    before = snapshot(db)
    with pytest.raises(psycopg.DataError) as raised:
        batch = f'[{{"payload": 0}}, {element}]'
        db.execute("SELECT * FROM hydra.enqueue_many(%s::jsonb)", (batch,))
    assert raised.value.sqlstate == "22023"
    assert raised.value.diag.message_primary == message
    assert snapshot(db) == before


def test_a_batch_into_a_queue_with_a_channel_policy_still_respects_the_cap(db: Conn) -> None:
    db.execute("SELECT hydra.channel_policy_set('a', max_concurrency => 1, queue => %s)", (FAST,))
    run_many(db, FAST, [{"payload": i, "channel": "a"} for i in range(3)], {})
    states = db.execute(
        "SELECT state, count(*) FROM hydra.message WHERE queue = %s GROUP BY 1", (FAST,)
    ).fetchall()
    assert dict(states) == {"parked": 2, "ready": 1}


@pytest.mark.parametrize(
    ("call", "fast"),
    [("SELECT hydra.enqueue_many('[{\"payload\": 1, \"channel\": \"a\"}]')", True),
     ("SELECT hydra.enqueue_many('[{\"payload\": 1, \"name\": null}]')", False),
     ("SELECT hydra.enqueue_many('[{\"payload\": 1}]', name => 'n')", False),
     ("SELECT hydra.enqueue('1', channel => 'a')", True),
     ("SELECT hydra.enqueue('1', name => 'n')", False)],
)  # fmt: skip
def test_the_paths_compared_above_are_the_ones_taken(db: Conn, call: str, fast: bool) -> None:
    # Function-call statistics of this transaction show which path ran: the general path is
    # hydra._enqueue_rows, the plain batch path hydra._enqueue_plain_batch.
    db.execute("SET track_functions = 'pl'")
    with db.transaction():
        db.execute(call)
        general, plain = db.execute(
            "SELECT coalesce(pg_stat_get_xact_function_calls('hydra._enqueue_rows'::regproc), 0),"
            " coalesce(pg_stat_get_xact_function_calls('hydra._enqueue_plain_batch'::regproc), 0)"
        ).fetchone() or (None, None)
    assert general == (0 if fast else 1)
    assert plain == (1 if fast and "enqueue_many" in call else 0)


def test_a_parked_leftover_in_an_uncapped_channel_does_not_let_a_new_message_jump_ahead(
    db: Conn,
) -> None:
    # Clearing a cap un-parks with SKIP LOCKED, so a parked row can outlive its cap until the
    # coordinator repairs it. Such a tail may sit before the round being served; a message
    # enqueued behind it must still join the back of the current round.
    a = [enqueue_one(db, "a") for _ in range(3)]
    leftover = enqueue_one(db, "c")
    db.execute("UPDATE hydra.message SET state = 'parked' WHERE id = %s", (leftover,))
    assert [r["id"] for r in dequeue(db, 2)] == a[:2]
    late = enqueue_one(db, "c")
    assert [r["id"] for r in dequeue(db, 2)] == [a[2], late]


def enqueue_one(db: Conn, channel: str) -> int:
    row = db.execute("SELECT message_id FROM hydra.enqueue('{}', channel => %s)", (channel,))
    return int(row.fetchone()[0])  # type: ignore[index]
