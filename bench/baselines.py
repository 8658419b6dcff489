"""The baselines hydramq is compared with: plain SQL tables in schema ``bench_base``.

They are deliberately minimal (PERF-NOTES, "Baselines"):

* ``dq`` — delete-on-dequeue queue. At-most-once; an upper bound, not a peer.
* ``lq`` — leasing queue: ready -> processing with a token, complete = token-fenced DELETE.
  FIFO, no fairness, no caps. Any at-least-once queue pays what it pays; the targets are
  ratios to it.
* ``plain`` — the enqueue baseline: a table shaped like a minimal queue table (primary key
  plus the partial "ready" index), filled by plain INSERTs.
* ``lq_new`` — the leasing queue with one more step, for the ``bounds`` phase: rows arrive
  ``new`` and each dequeue first moves up to k of them to ``ready``, then leases as ``lq``
  (``place_then_lease``). The least a queue pays that places messages in its order after
  enqueue (a second write per message) instead of at enqueue.

The statements that use these tables are in ``workloads.py``; docs/benchmarks.md quotes both.
"""

from __future__ import annotations

import psycopg

SCHEMA_DDL = """
CREATE SCHEMA IF NOT EXISTS bench_base;

CREATE TABLE IF NOT EXISTS bench_base.dq (
    id          bigserial PRIMARY KEY,
    channel     text,
    payload     jsonb NOT NULL,
    enqueued_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS bench_base.lq (
    id          bigserial PRIMARY KEY,
    status      text NOT NULL DEFAULT 'ready',
    token       uuid,
    leased_at   timestamptz,
    channel     text,
    payload     jsonb NOT NULL,
    enqueued_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS lq_ready_idx ON bench_base.lq (id) WHERE status = 'ready';

CREATE TABLE IF NOT EXISTS bench_base.plain (
    id          bigserial PRIMARY KEY,
    status      text NOT NULL DEFAULT 'ready',
    token       uuid,
    leased_at   timestamptz,
    channel     text,
    payload     jsonb NOT NULL,
    enqueued_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS plain_ready_idx ON bench_base.plain (id) WHERE status = 'ready';

CREATE TABLE IF NOT EXISTS bench_base.lq_new (LIKE bench_base.lq INCLUDING ALL);
CREATE INDEX IF NOT EXISTS lq_new_new_idx ON bench_base.lq_new (id) WHERE status = 'new';
CREATE OR REPLACE FUNCTION bench_base.place_then_lease(k integer)
RETURNS TABLE (id bigint, token uuid)
LANGUAGE plpgsql
AS $$
BEGIN
    UPDATE bench_base.lq_new q SET status = 'ready'
     WHERE q.id IN (SELECT x.id FROM bench_base.lq_new x WHERE x.status = 'new'
                     ORDER BY x.id LIMIT k FOR UPDATE SKIP LOCKED);
    RETURN QUERY
    UPDATE bench_base.lq_new q SET status = 'processing', token = gen_random_uuid(),
           leased_at = now()
     WHERE q.id IN (SELECT x.id FROM bench_base.lq_new x WHERE x.status = 'ready'
                     ORDER BY x.id LIMIT k FOR UPDATE SKIP LOCKED)
    RETURNING q.id, q.token;
END
$$;
"""

TABLES = ("dq", "lq", "plain", "lq_new")


def create(conn: psycopg.Connection) -> None:
    """Create schema ``bench_base`` and its tables (idempotent)."""
    conn.execute(SCHEMA_DDL)


def reset(conn: psycopg.Connection, table: str) -> None:
    """Empty one baseline table and restart its ids, so every run starts from the same state."""
    if table not in TABLES:
        raise ValueError(f"unknown baseline table {table!r}")
    conn.execute(f"TRUNCATE bench_base.{table} RESTART IDENTITY")
