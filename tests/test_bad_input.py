"""Bad arguments (SPEC §10): every public call rejects them with SQLSTATE 22023
(invalid_parameter_value) and a message that starts with the argument's name, and writes
nothing -- every table of schema hydra is the same, row for row, before and after."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from helpers import dequeue, enqueue, snapshot

Conn = psycopg.Connection[Any]

UNKNOWN_ID = 10**12
TOKEN = "ARRAY[%(token)s::uuid]"
LEASE = f"ARRAY[%(leased)s], {TOKEN}"


def many(messages: str, options: str = "") -> str:
    return f"SELECT hydra.enqueue_many('{messages}'{options})"


# (argument named by the error, SQL). %(ready)s is a ready message's id, %(leased)s and
# %(token)s a leased message's id and lease token.
CASES: list[tuple[str, str]] = [
    # enqueue
    ("num_attempts", "SELECT hydra.enqueue('{}', num_attempts => 0)"),
    ("num_attempts", "SELECT hydra.enqueue('{}', num_attempts => -1)"),
    ("delay_secs", "SELECT hydra.enqueue('{}', delay_secs => -1)"),
    ("delay_secs", "SELECT hydra.enqueue('{}', delay_secs => -0.001)"),
    ("lock_secs_factor", "SELECT hydra.enqueue('{}', lock_secs_factor => 0.99)"),
    ("lock_secs_factor", "SELECT hydra.enqueue('{}', lock_secs_factor => 0)"),
    ("lock_secs", "SELECT hydra.enqueue('{}', lock_secs => -1)"),
    ("max_processing_secs", "SELECT hydra.enqueue('{}', max_processing_secs => 0)"),
    ("max_processing_secs", "SELECT hydra.enqueue('{}', max_processing_secs => -5)"),
    ("priority", "SELECT hydra.enqueue('{}', priority => -2147483648)"),
    ("queue", "SELECT hydra.enqueue('{}', queue => '')"),
    ("queue", "SELECT hydra.enqueue('{}', queue => NULL)"),
    ("channel", "SELECT hydra.enqueue('{}', channel => '')"),
    ("payload", "SELECT hydra.enqueue(NULL)"),
    ("name", "SELECT hydra.enqueue('{}', name => '')"),
    ("cascade_failure", "SELECT hydra.enqueue('{}', cascade_failure => NULL)"),
    ("depends_on", f"SELECT hydra.enqueue('{{}}', depends_on => ARRAY[{UNKNOWN_ID}]::bigint[])"),
    ("depends_on", "SELECT hydra.enqueue('{}', depends_on => ARRAY[-1]::bigint[])"),
    ("depends_on", "SELECT hydra.enqueue('{}', depends_on => ARRAY[NULL]::bigint[])"),
    ("depends_on", "SELECT hydra.enqueue('{}', depends_on => ARRAY[%(ready)s, NULL]::bigint[])"),
    ("depends_on", "SELECT hydra.enqueue('{}', depends_on => ARRAY[%(ready)s, %(ready)s])"),
    # enqueue_many
    ("messages", many('{"payload": 1}')),
    ("messages", many('"x"')),
    ("messages", "SELECT hydra.enqueue_many(NULL)"),
    ("messages", many("[1]")),
    ("messages", many('[{"payload": 1}, {"channel": "a"}]')),
    ("messages", many('[{"payload": 1}, {"payload": 2, "chanel": 1}]')),
    ("num_attempts", many('[{"payload": 1}, {"payload": 2, "num_attempts": 0}]')),
    ("num_attempts", many('[{"payload": 1}]', ", num_attempts => 0")),
    ("priority", many('[{"payload": 1}, {"payload": 2, "priority": -2147483648}]')),
    ("delay_secs", many('[{"payload": 1, "delay_secs": -1}]')),
    ("depends_on", many(f'[{{"payload": 1}}, {{"payload": 2, "depends_on": [{UNKNOWN_ID}]}}]')),
    ("depends_on", "SELECT hydra.enqueue_many(jsonb_build_array(jsonb_build_object("
                   "'payload', 1, 'depends_on', ARRAY[%(ready)s, %(ready)s])))"),
    ("queue", many('[{"payload": 1}]', ", queue => ''")),
    ("channel", many('[{"payload": 1}, {"payload": 2, "channel": ""}]')),
    # dequeue
    ("batch", "SELECT * FROM hydra.dequeue(batch => 0)"),
    ("batch", "SELECT * FROM hydra.dequeue(batch => -1)"),
    ("batch", "SELECT * FROM hydra.dequeue(batch => NULL)"),
    ("queue", "SELECT * FROM hydra.dequeue(queue => '')"),
    ("queue", "SELECT * FROM hydra.dequeue(queues => ARRAY['default', ''])"),
    ("queues", "SELECT * FROM hydra.dequeue(queues => '{}')"),
    # settling: %(leased)s with its token is a valid pair, which must not be settled either
    ("message_ids", f"SELECT * FROM hydra.complete_many(ARRAY[%(leased)s, %(ready)s], {TOKEN})"),
    ("message_ids", "SELECT * FROM hydra.complete_many(ARRAY[%(leased)s], NULL)"),
    ("message_ids", f"SELECT * FROM hydra.fail_many(ARRAY[%(leased)s, %(ready)s], {TOKEN})"),
    ("errors", f"SELECT * FROM hydra.fail_many({LEASE}, errors => ARRAY['a', 'b'])"),
    ("retries", f"SELECT * FROM hydra.fail_many({LEASE}, retries => ARRAY[true, false])"),
    ("retry", f"SELECT * FROM hydra.fail_many({LEASE}, retry => NULL)"),
    ("extend_secs", "SELECT hydra.heartbeat(%(leased)s, %(token)s, extend_secs => 0)"),
    ("extend_secs", "SELECT hydra.heartbeat(%(leased)s, %(token)s, extend_secs => -1)"),
    # policies
    ("max_concurrency", "SELECT hydra.channel_policy_set('a', max_concurrency => -1)"),
    ("max_concurrency", "SELECT hydra.channel_policy_set('capped', max_concurrency => -1)"),
    ("max_size", "SELECT hydra.channel_policy_set('a', max_size => -1)"),
    ("queue", "SELECT hydra.channel_policy_set('a', max_concurrency => 1, queue => '')"),
    ("channel", "SELECT hydra.channel_policy_set('', max_concurrency => 1)"),
    ("queue", "SELECT hydra.channel_policy_clear('capped', queue => '')"),
    ("channel", "SELECT hydra.channel_policy_clear('')"),
    # coordination
    ("batch", "SELECT * FROM hydra.coordinate(batch => 0)"),
    ("failed_retention", "SELECT * FROM hydra.coordinate(failed_retention => '-1 day')"),
]  # fmt: skip


@pytest.fixture
def queue_state(db: Conn) -> dict[str, Any]:
    """Some of everything: a ready message, a leased one, a capped channel."""
    db.execute("SELECT hydra.channel_policy_set('capped', max_concurrency => 2)")
    leased = enqueue(db, {"k": "leased"}, channel="capped", num_attempts=3)
    ready = enqueue(db, {"k": "ready"}, channel="other")
    [row] = dequeue(db)
    assert row["id"] == leased
    return {"ready": ready, "leased": leased, "token": row["lease_token"]}


@pytest.mark.parametrize(("argument", "query"), CASES, ids=[f"{a}:{q}" for a, q in CASES])
def test_bad_arguments_raise_22023_naming_the_argument_and_write_nothing(
    db: Conn, queue_state: dict[str, Any], argument: str, query: str
) -> None:
    before = snapshot(db)
    with pytest.raises(psycopg.errors.InvalidParameterValue) as raised:
        db.execute(query, queue_state)
    message = raised.value.diag.message_primary or ""
    assert message.startswith(argument), message
    assert snapshot(db) == before


@pytest.mark.parametrize(
    "element",
    ['{"payload": 1, "num_attempts": "three"}', '{"payload": 1, "priority": 1.5}',
     '{"payload": 1, "depends_on": "7"}', '{"payload": 1, "cascade_failure": "maybe"}'],
)  # fmt: skip
def test_a_wrongly_typed_option_in_enqueue_many_names_its_key_and_writes_nothing(
    db: Conn, queue_state: dict[str, Any], element: str
) -> None:
    before = snapshot(db)
    with pytest.raises(psycopg.DataError) as raised:
        db.execute(many(f'[{{"payload": 0}}, {element}]'))
    assert (raised.value.sqlstate or "").startswith("22")  # 22023 or a more specific class 22
    key = element.split(",")[1].split(":")[0].strip().strip('"')
    assert key in (raised.value.diag.message_primary or ""), raised.value.diag.message_primary
    assert snapshot(db) == before


def test_good_calls_next_to_the_bad_ones_still_work(db: Conn, queue_state: dict[str, Any]) -> None:
    # The same calls with valid values write what they should: the cases above fail for the
    # value, not for the way they are written.
    db.execute(
        "SELECT hydra.enqueue('{}', num_attempts => 1, delay_secs => 0, lock_secs => 0,"
        " lock_secs_factor => 1, max_processing_secs => 0.001, priority => -2147483647)"
    )
    db.execute("SELECT hydra.enqueue_many(jsonb_build_array(jsonb_build_object("
               "'payload', 1, 'depends_on', ARRAY[%(ready)s])))", queue_state)  # fmt: skip
    db.execute("SELECT hydra.channel_policy_set('a', max_concurrency => 0, max_size => 0)")
    assert db.execute("SELECT count(*) FROM hydra.message").fetchone() == (4,)
