"""Priority (SPEC §5): higher first, NULL below every number; across channels the best ready
message decides before round robin applies; inside a channel priority, then FIFO; a newly
ready message of higher priority overtakes the ones already waiting."""

from __future__ import annotations

import time
from typing import Any

import psycopg
from helpers import coordinate, dequeue, enqueue, enqueue_many

Conn = psycopg.Connection[Any]


def tags(rows: list[dict[str, Any]]) -> list[str]:
    return [r["payload"]["tag"] for r in rows]


def drain(conn: Conn) -> list[str]:
    order: list[str] = []
    while rows := dequeue(conn):
        order += tags(rows)
    return order


def test_higher_priority_channels_are_served_before_round_robin_applies(db: Conn) -> None:
    enqueue_many(
        db,
        [
            {"payload": {"tag": "A1"}, "channel": "A"},
            {"payload": {"tag": "A2"}, "channel": "A"},
            {"payload": {"tag": "B1"}, "channel": "B", "priority": 5},
            {"payload": {"tag": "B2"}, "channel": "B", "priority": 5},
            {"payload": {"tag": "C1"}, "channel": "C", "priority": 1},
            {"payload": {"tag": "D1"}, "channel": "D", "priority": 5},
            {"payload": {"tag": "E1"}, "channel": "E", "priority": -5},
            {"payload": {"tag": "F1"}, "channel": "F", "priority": -2147483647},
            {"payload": {"tag": "G1"}, "channel": "G"},
        ],
    )
    # Priority 5 first (B and D take turns), then 1, then the negative numbers, then NULL
    # (round robin between A and G).
    assert drain(db) == ["B1", "D1", "B2", "C1", "E1", "F1", "A1", "G1", "A2"]


def test_null_priority_ranks_below_every_number(db: Conn) -> None:
    enqueue(db, {"tag": "null"}, channel="x")
    enqueue(db, {"tag": "lowest"}, channel="y", priority=-2147483647)
    enqueue(db, {"tag": "zero"}, channel="z", priority=0)
    rows = dequeue(db, 3)
    assert tags(rows) == ["zero", "lowest", "null"]
    assert [r["priority"] for r in rows] == [0, -2147483647, None]


def test_inside_a_channel_priority_comes_first_then_fifo(db: Conn) -> None:
    for tag, priority in [
        ("n1", None), ("p1a", 1), ("p3a", 3), ("p1b", 1), ("n2", None), ("p3b", 3), ("m1", -1),
    ]:  # fmt: skip
        enqueue(db, {"tag": tag}, channel="only", priority=priority)
    assert drain(db) == ["p3a", "p3b", "p1a", "p1b", "m1", "n1", "n2"]


def test_a_channel_whose_best_message_has_higher_priority_goes_first(db: Conn) -> None:
    # B's best ready message outranks everything A holds, even though A was first.
    enqueue_many(db, [{"payload": {"tag": f"A{k}"}, "channel": "A"} for k in range(1, 4)])
    enqueue(db, {"tag": "B-low"}, channel="B")
    enqueue(db, {"tag": "B-high"}, channel="B", priority=2)
    assert drain(db) == ["B-high", "A1", "B-low", "A2", "A3"]


def test_a_newly_enqueued_higher_priority_message_overtakes_waiting_ones(db: Conn) -> None:
    enqueue_many(db, [{"payload": {"tag": f"A{k}"}, "channel": "A"} for k in range(1, 6)])
    enqueue_many(db, [{"payload": {"tag": f"B{k}"}, "channel": "B"} for k in range(1, 6)])
    assert tags(dequeue(db, 3)) == ["A1", "B1", "A2"]
    # A message of another channel, and one of the channel being served, both urgent.
    enqueue(db, {"tag": "C-urgent"}, channel="C", priority=1)
    assert tags(dequeue(db)) == ["C-urgent"]
    enqueue(db, {"tag": "A-urgent"}, channel="A", priority=1)
    assert tags(dequeue(db)) == ["A-urgent"]
    assert drain(db) == ["B2", "A3", "B3", "A4", "B4", "A5", "B5"]


def test_a_delayed_higher_priority_message_overtakes_once_it_is_released(db: Conn) -> None:
    enqueue_many(db, [{"payload": {"tag": f"A{k}"}, "channel": "A"} for k in range(1, 6)])
    late = enqueue(db, {"tag": "late-urgent"}, channel="B", priority=9, delay_secs=0.3)
    assert tags(dequeue(db)) == ["A1"]
    time.sleep(0.35)
    assert ("MESSAGE_RELEASED", late) in coordinate(db)
    assert tags(dequeue(db)) == ["late-urgent"]
    assert drain(db) == ["A2", "A3", "A4", "A5"]


def test_a_retried_higher_priority_message_overtakes_once_its_back_off_ends(db: Conn) -> None:
    enqueue_many(db, [{"payload": {"tag": f"A{k}"}, "channel": "A"} for k in range(1, 6)])
    enqueue(db, {"tag": "urgent"}, channel="B", priority=3, num_attempts=2, lock_secs=0.2)
    [urgent] = dequeue(db)
    assert urgent["payload"]["tag"] == "urgent"
    db.execute("SELECT hydra.fail(%s, %s)", (urgent["id"], urgent["lease_token"]))
    assert tags(dequeue(db)) == ["A1"]
    time.sleep(0.25)
    coordinate(db)
    rows = dequeue(db)
    assert tags(rows) == ["urgent"] and rows[0]["attempt"] == 2


def test_batch_dequeue_returns_messages_in_priority_order(db: Conn) -> None:
    enqueue_many(
        db,
        [
            {"payload": {"tag": "low"}, "channel": "A"},
            {"payload": {"tag": "mid"}, "channel": "B", "priority": 1},
            {"payload": {"tag": "top"}, "channel": "C", "priority": 7},
            {"payload": {"tag": "mid2"}, "channel": "A", "priority": 1},
        ],
    )
    assert tags(dequeue(db, 10)) == ["top", "mid", "mid2", "low"]
