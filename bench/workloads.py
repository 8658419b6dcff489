"""Every statement the benchmark times, for hydramq and for the baselines, side by side.

A *drain system* knows how to pre-fill its queue (untimed), dequeue a batch and complete it.
A *producer* knows how to enqueue during a time-boxed run. Both are looked up by name so that
worker processes (spawned, not forked) can rebuild them from a string.

Messages are built once in Python as JSON arrays of ``{"payload": ..., "channel": ...}``
objects (hydramq's ``enqueue_many`` format); the baselines insert the very same documents
through ``jsonb_array_elements`` so every system parses the same input.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg

QUEUE = "bench"
WARMUP_QUEUE = "bench_warmup"  # always empty

# --------------------------------------------------------------------------------------------
# hydramq (the public API only; docs/design.md)
# --------------------------------------------------------------------------------------------
HYDRA_FILL = "SELECT count(*) FROM hydra.enqueue_many(%s::jsonb, queue => %s)"
HYDRA_DEQUEUE = "SELECT id, lease_token FROM hydra.dequeue(queue => %s, batch => %s)"
HYDRA_COMPLETE = "SELECT count(*) FROM hydra.complete_many(%s::bigint[], %s::uuid[])"
HYDRA_ENQUEUE_ONE = ("SELECT * FROM hydra.enqueue('{\"n\":1}'::jsonb, queue => %s, "
                     "channel => 'c' || %s::int)")
HYDRA_ENQUEUE_MANY = HYDRA_FILL
HYDRA_POLICY_SET = ("SELECT hydra.channel_policy_set(%s, max_concurrency => %s, "
                    "queue => %s)")
HYDRA_POLICY_CLEAR = "SELECT hydra.channel_policy_clear(%s, queue => %s)"

# --------------------------------------------------------------------------------------------
# baselines (tables in baselines.py)
# --------------------------------------------------------------------------------------------
# Delete-on-dequeue: at most once, nothing to complete.
DQ_FILL = ("INSERT INTO bench_base.dq (channel, payload) "
           "SELECT m->>'channel', m->'payload' FROM jsonb_array_elements(%s::jsonb) AS m")
DQ_DEQUEUE = ("DELETE FROM bench_base.dq WHERE id IN ("
              "SELECT id FROM bench_base.dq ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED) "
              "RETURNING id, payload")

# Leasing queue: ready -> processing with a token; complete = DELETE fenced by the token.
LQ_FILL = ("INSERT INTO bench_base.lq (channel, payload) "
           "SELECT m->>'channel', m->'payload' FROM jsonb_array_elements(%s::jsonb) AS m")
LQ_DEQUEUE = ("UPDATE bench_base.lq SET status = 'processing', token = gen_random_uuid(), "
              "leased_at = now() WHERE id IN ("
              "SELECT id FROM bench_base.lq WHERE status = 'ready' "
              "ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED) "
              "RETURNING id, token")
LQ_COMPLETE = ("DELETE FROM bench_base.lq WHERE (id, token) IN ("
               "SELECT * FROM unnest(%s::bigint[], %s::uuid[]))")

# Leasing queue that places its messages after enqueue (bounds phase; baselines.py).
LQ_NEW_FILL = ("INSERT INTO bench_base.lq_new (channel, payload, status) "
               "SELECT m->>'channel', m->'payload', 'new' "
               "FROM jsonb_array_elements(%s::jsonb) AS m")
LQ_NEW_DEQUEUE = "SELECT id, token FROM bench_base.place_then_lease(%s)"
LQ_NEW_COMPLETE = ("DELETE FROM bench_base.lq_new WHERE (id, token) IN ("
                   "SELECT * FROM unnest(%s::bigint[], %s::uuid[]))")

# Enqueue baseline: one row per transaction / 100 rows per statement.
PLAIN_INSERT_ONE = ("INSERT INTO bench_base.plain (channel, payload) "
                    "VALUES ('c' || %s::int, '{\"n\":1}'::jsonb)")
PLAIN_INSERT_MANY = ("INSERT INTO bench_base.plain (channel, payload) "
                     "SELECT m->>'channel', m->'payload' FROM jsonb_array_elements(%s::jsonb) AS m")

# hydramq's own row, inserted directly (bounds phase): what placing at enqueue costs at least
# with hydramq's indexes, before any check, probe or fairness work.
BARE_COLUMNS = ("hydra.message (queue, channel, state, prio, vtime, num_attempts, "
                "cascade_failure, lock_secs, lock_secs_factor, max_processing_secs, payload)")
BARE_INSERT_ONE = (f"INSERT INTO {BARE_COLUMNS} VALUES (%s, 'c' || %s::int, 'ready', "
                   "-2147483648, 0, 1, true, 5, 2, 3600, '{\"n\":1}'::jsonb)")
BARE_INSERT_MANY = (f"INSERT INTO {BARE_COLUMNS} SELECT %s, m->>'channel', 'ready', "
                    "-2147483648, 0, 1, true, 5, 2, 3600, m->'payload' "
                    "FROM jsonb_array_elements(%s::jsonb) AS m")


@dataclass(frozen=True)
class DrainSystem:
    """One queue implementation as the drain loop sees it."""

    name: str
    label: str
    fill_sql: str
    dequeue_sql: str
    complete_sql: str | None

    def fill(self, conn: psycopg.Connection, messages_json: str) -> int:
        if self.name == "hydramq":
            row = conn.execute(self.fill_sql, (messages_json, QUEUE)).fetchone()
            return int(row[0]) if row else 0
        return conn.execute(self.fill_sql, (messages_json,)).rowcount

    def dequeue(self, conn: psycopg.Connection, batch: int) -> tuple[list[int], list[Any]]:
        params: tuple[Any, ...] = (QUEUE, batch) if self.name == "hydramq" else (batch,)
        rows = conn.execute(self.dequeue_sql, params).fetchall()
        return [r[0] for r in rows], [r[1] for r in rows]

    def warm_up(self, conn: psycopg.Connection) -> None:
        """Run the dequeue and complete statements once, untimed, on nothing (hydramq: an empty
        queue; baselines: LIMIT 0), so that no timed batch pays for a session's first call
        (PL/pgSQL compilation, plan caching). Workers are long-lived; the drain measures
        their steady state."""
        if self.name == "hydramq":
            conn.execute(self.dequeue_sql, (WARMUP_QUEUE, 1)).fetchall()
        else:
            conn.execute(self.dequeue_sql, (0,)).fetchall()
        if self.complete_sql is not None:
            conn.execute(self.complete_sql, ([], []))

    def complete(self, conn: psycopg.Connection, ids: list[int], tokens: list[Any]) -> int:
        """Finish a dequeued batch; returns how many were accepted (fewer = stale leases)."""
        if self.complete_sql is None:
            return len(ids)
        cur = conn.execute(self.complete_sql, (ids, tokens))
        if self.name == "hydramq":
            row = cur.fetchone()
            return int(row[0]) if row else 0
        return cur.rowcount


DRAIN_SYSTEMS: dict[str, DrainSystem] = {
    "hydramq": DrainSystem("hydramq", "hydramq", HYDRA_FILL, HYDRA_DEQUEUE, HYDRA_COMPLETE),
    "lease": DrainSystem("lease", "leasing queue", LQ_FILL, LQ_DEQUEUE, LQ_COMPLETE),
    "delete": DrainSystem("delete", "delete queue", DQ_FILL, DQ_DEQUEUE, None),
    "place_lease": DrainSystem("place_lease", "placing leasing queue", LQ_NEW_FILL,
                               LQ_NEW_DEQUEUE, LQ_NEW_COMPLETE),
}


@dataclass(frozen=True)
class Producer:
    """One enqueue method as a time-boxed producer loop sees it: ``run_once`` -> messages."""

    name: str
    per_call: int  # messages per statement

    def run_once(self, conn: psycopg.Connection, k: int, docs: Sequence[str]) -> int:
        if self.name == "hydramq_one":
            conn.execute(HYDRA_ENQUEUE_ONE, (QUEUE, k % 1000)).fetchall()
        elif self.name == "plain_one":
            conn.execute(PLAIN_INSERT_ONE, (k % 1000,))
        elif self.name == "hydramq_many":
            conn.execute(HYDRA_ENQUEUE_MANY, (docs[k % len(docs)], QUEUE)).fetchall()
        elif self.name == "plain_many":
            conn.execute(PLAIN_INSERT_MANY, (docs[k % len(docs)],))
        elif self.name == "bare_one":
            conn.execute(BARE_INSERT_ONE, (QUEUE, k % 1000))
        elif self.name == "bare_many":
            conn.execute(BARE_INSERT_MANY, (QUEUE, docs[k % len(docs)]))
        else:
            raise ValueError(f"unknown producer {self.name!r}")
        return self.per_call


PRODUCERS: dict[str, Producer] = {
    "hydramq_one": Producer("hydramq_one", 1),
    "plain_one": Producer("plain_one", 1),
    "hydramq_many": Producer("hydramq_many", 100),
    "plain_many": Producer("plain_many", 100),
    "bare_one": Producer("bare_one", 1),
    "bare_many": Producer("bare_many", 100),
}


def batch_docs(seed: int, count: int = 16, size: int = 100) -> list[str]:
    """JSON arrays of ``size`` messages on channels c0..c999, for the batch enqueue runs."""
    docs = []
    for d in range(count):
        base = (seed * 7919 + d * size) % 1000
        docs.append(json.dumps([{"payload": {"n": i}, "channel": f"c{(base + i) % 1000}"}
                                for i in range(size)]))
    return docs


def shape_chunks(channels: int, per_channel: int, prefix: str,
                 chunk: int = 1000) -> Iterator[str]:
    """The pre-fill of a drain shape as JSON arrays, channel by channel (all of a channel's
    messages contiguous, channels in order), at most ``chunk`` messages per array.

    When a channel's messages fill a chunk exactly (S3: 20 per channel, chunk=20), each call
    enqueues one channel, as a producer writing one tenant's burst would."""
    buf: list[dict[str, Any]] = []
    n = 0
    for c in range(channels):
        for _ in range(per_channel):
            buf.append({"payload": {"n": n, "k": "bench"}, "channel": f"{prefix}{c}"})
            n += 1
            if len(buf) >= chunk:
                yield json.dumps(buf)
                buf = []
    if buf:
        yield json.dumps(buf)
