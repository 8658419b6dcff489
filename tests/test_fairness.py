"""Fair round robin across channels (SPEC §5): one turn per channel per round, newcomers at the
back of the current round, batch dequeue equal to single dequeues, checked against a small
reference model with hypothesis."""

from __future__ import annotations

import itertools
from typing import Any

import psycopg
from helpers import dequeue, enqueue, enqueue_many
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

Conn = psycopg.Connection[Any]


def drain(conn: Conn, batch: int = 1, queue: str = "default") -> list[str]:
    """Dequeues until the queue is empty; returns each message's payload tag in order."""
    order: list[str] = []
    while rows := dequeue(conn, batch, queue):
        assert len(rows) <= batch
        order += [r["payload"]["tag"] for r in rows]
    return order


def tagged(channel: str, n: int, start: int = 1) -> list[dict[str, Any]]:
    """enqueue_many elements tagged "<channel><k>" for k = start, start+1, ..."""
    return [
        {"payload": {"tag": f"{channel}{k}"}, "channel": channel} for k in range(start, start + n)
    ]


def test_round_robin_serves_each_channel_once_per_turn(db: Conn) -> None:
    # SPEC §5: A holds 100 ready messages, B and C one each, enqueued in that order.
    enqueue_many(db, tagged("A", 100))
    enqueue(db, {"tag": "B1"}, channel="B")
    enqueue(db, {"tag": "C1"}, channel="C")
    assert drain(db) == ["A1", "B1", "C1"] + [f"A{k}" for k in range(2, 101)]


def test_round_robin_order_is_the_same_for_single_enqueues(db: Conn) -> None:
    for k in range(1, 21):
        enqueue(db, {"tag": f"A{k}"}, channel="A")
    enqueue(db, {"tag": "B1"}, channel="B")
    enqueue(db, {"tag": "C1"}, channel="C")
    enqueue(db, {"tag": "D1"})  # the queue's default channel is a channel like any other
    assert drain(db) == ["A1", "B1", "C1", "D1"] + [f"A{k}" for k in range(2, 21)]


def test_last_quiet_message_of_the_fairness_run_is_served_at_position_1010(db: Conn) -> None:
    # One noisy channel with 5,000 messages, then 100 quiet channels with 10 each.
    enqueue_many(db, tagged("noisy-", 5000))
    quiet = [f"q{c:03d}-" for c in range(100)]
    enqueue_many(db, [m for channel in quiet for m in tagged(channel, 10)])

    served = [dequeue(db)[0]["payload"]["tag"] for _ in range(1010)]

    assert served[-1] == f"{quiet[-1]}10"
    assert not any(tag.startswith("q") for tag in drain(db)), "quiet messages after 1,010"
    # Exactly 10 rounds of 101: the noisy channel once, then every quiet channel in turn.
    for r in range(10):
        assert served[r * 101 : (r + 1) * 101] == [f"noisy-{r + 1}"] + [
            f"{channel}{r + 1}" for channel in quiet
        ]


def test_a_channel_that_newly_gets_messages_joins_at_the_back_of_the_current_round(
    db: Conn,
) -> None:
    enqueue_many(db, tagged("A", 3) + tagged("B", 3) + tagged("C", 3))
    assert [r["payload"]["tag"] for r in dequeue(db, 2)] == ["A1", "B1"]
    # Round 1 is being served (C1 still waits): D comes after C1, not before it, and does
    # not wait for round 2 either.
    enqueue_many(db, tagged("D", 2))
    assert drain(db) == ["C1", "D1", "A2", "B2", "C2", "D2", "A3", "B3", "C3"]


def test_a_channel_that_comes_back_after_running_dry_waits_behind_waiting_channels(
    db: Conn,
) -> None:
    enqueue_many(db, tagged("A", 1) + tagged("B", 3) + tagged("C", 3))
    assert [r["payload"]["tag"] for r in dequeue(db, 3)] == ["A1", "B1", "C1"]
    # A ran dry; its new message cannot jump ahead of B2 and C2, which were waiting.
    enqueue(db, {"tag": "A2"}, channel="A")
    assert drain(db) == ["B2", "C2", "A2", "B3", "C3"]


def test_batch_dequeue_returns_what_single_dequeues_would_in_order(db: Conn) -> None:
    # The same workload in two queues: one drained one message at a time, the other in
    # batches of assorted sizes.
    workload: list[dict[str, Any]] = []
    for i, channel in enumerate("ABCDEFG"):
        workload += tagged(channel, 3 + 7 * i % 11)
    workload += [
        {"payload": {"tag": f"P{k}"}, "channel": "P", "priority": k % 3} for k in range(1, 9)
    ]
    workload += [{"payload": {"tag": f"N{k}"}} for k in range(1, 6)]  # default channel
    enqueue_many(db, workload, queue="single")
    enqueue_many(db, workload, queue="batched")

    single = drain(db, 1, "single")
    batched: list[str] = []
    for size in itertools.cycle([2, 5, 1, 13, 3, 8]):
        rows = dequeue(db, size, "batched")
        if not rows:
            break
        assert len(rows) == size or not dequeue(db, 1, "batched"), "short batch, work left"
        batched += [r["payload"]["tag"] for r in rows]
    assert len(single) == len(workload)
    assert batched == single


def test_batch_dequeue_lists_the_rounds_in_order(db: Conn) -> None:
    enqueue_many(db, tagged("A", 100))
    enqueue(db, {"tag": "B1"}, channel="B")
    enqueue(db, {"tag": "C1"}, channel="C")
    rows = dequeue(db, 6)
    assert [r["payload"]["tag"] for r in rows] == ["A1", "B1", "C1", "A2", "A3", "A4"]
    assert [r["channel"] for r in rows] == ["A", "B", "C", "A", "A", "A"]


# --------------------------------------------------------------------------------------------
# Property: dequeue order against a reference model of SPEC §5's round robin
# --------------------------------------------------------------------------------------------


class RoundRobinModel:
    """SPEC §5 for one queue, written as rounds. Each priority level has its own rounds;
    higher levels are served first. A message gets a round when it becomes ready: the round
    after its channel's last waiting message, or -- when the channel has none waiting -- the
    round being served now (the lowest round with a waiting message): it joins at the back of
    the current round. Dequeue serves the lowest round first and, inside a round, turns in the
    order they were queued."""

    def __init__(self) -> None:
        self.waiting: list[tuple[int, int, int, str, str]] = []  # (-prio, round, seq, ch, tag)
        self.seq = itertools.count()

    def enqueue(self, channel: str, priority: int | None, tag: str) -> None:
        level = -(2**31) if priority is None else priority
        rounds = [w[1] for w in self.waiting if w[0] == -level]
        own = [w[1] for w in self.waiting if w[0] == -level and w[3] == channel]
        turn = max(own) + 1 if own else min(rounds, default=0)
        self.waiting.append((-level, turn, next(self.seq), channel, tag))

    def dequeue(self, n: int) -> list[str]:
        self.waiting.sort()
        served, self.waiting = self.waiting[:n], self.waiting[n:]
        return [w[4] for w in served]


# An operation: ("enqueue", [(channel, priority), ...]) -- one call, several messages when
# the list is longer than one -- or ("dequeue", batch).
channels = st.sampled_from(["a", "b", "c", None])
priorities = st.sampled_from([None, None, None, 1, 5])
operations = st.lists(
    st.one_of(
        st.tuples(
            st.just("enqueue"), st.lists(st.tuples(channels, priorities), min_size=1, max_size=6)
        ),
        st.tuples(st.just("dequeue"), st.integers(min_value=1, max_value=4)),
    ),
    min_size=1,
    max_size=14,
)
_queues = itertools.count()


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=operations)
def test_dequeue_order_matches_a_reference_model_of_round_robin(
    db: Conn, ops: list[tuple[str, Any]]
) -> None:
    queue = f"prop{next(_queues)}"  # a fresh queue per example, in the test's database
    model = RoundRobinModel()
    tags = itertools.count(1)
    for op, arg in ops:
        if op == "enqueue":
            batch = [(channel, priority, f"m{next(tags)}") for channel, priority in arg]
            if len(batch) == 1:
                channel, priority, tag = batch[0]
                enqueue(db, {"tag": tag}, queue=queue, channel=channel, priority=priority)
            else:
                enqueue_many(
                    db,
                    [{"payload": {"tag": t}, "channel": c, "priority": p} for c, p, t in batch],
                    queue=queue,
                )
            for channel, priority, tag in batch:
                model.enqueue(channel or "", priority, tag)
        else:
            got = [r["payload"]["tag"] for r in dequeue(db, arg, queue)]
            assert got == model.dequeue(arg), f"after {ops}"
    assert drain(db, 3, queue) == model.dequeue(10**6)
