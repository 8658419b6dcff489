-- Schema, types, tables and indexes of hydramq: every object that holds data.
-- Invariants: a message row exists from enqueue until it succeeds (then it is deleted) or, when
-- it failed, until the failed-retention period ends; `vtime` orders ready messages fairly
-- (see docs/design.md); nothing here is granted to PUBLIC.
-- Upgrades: this file runs only at install. A change here is also written, as the statements
-- that turn the previous version's objects into these, in extension/upgrade/ (docs/releasing.md).
-- Every other file holds code (CREATE OR REPLACE) and is run again by each upgrade script.

CREATE SCHEMA hydra;
REVOKE ALL ON SCHEMA hydra FROM PUBLIC;
COMMENT ON SCHEMA hydra IS 'hydramq: fair multi-tenant message queue';

-- A message's state: an enum, so that the partial indexes' predicates compare object ids and
-- no CHECK constraint is re-read for every insert.
CREATE TYPE hydra.message_state AS ENUM (
    'pending', 'ready', 'parked', 'processing', 'locked', 'failed');
CREATE TYPE hydra.enqueue_result AS (result text, message_id bigint);
CREATE TYPE hydra.enqueue_many_result AS (ord integer, result text, message_id bigint);
CREATE TYPE hydra.fail_result AS (
    message_id   bigint,
    outcome      text,          -- 'locked' (will retry) | 'failed' (finished) | 'stale'
    attempt      integer,
    available_at timestamptz    -- when a locked message becomes ready again
);
CREATE TYPE hydra.event AS (
    event      text,            -- an event name of SPEC §3, e.g. 'MESSAGE_RELEASED'
    message_id bigint,
    queue      text,
    channel    text,            -- NULL for the default channel
    detail     jsonb
);
CREATE TYPE hydra.leased_message AS (
    id               bigint,
    queue            text,
    channel          text,      -- NULL for the default channel
    payload          jsonb,
    priority         integer,
    name             text,
    attempt          integer,   -- 1 on the first delivery
    num_attempts     integer,
    lease_token      uuid,
    lease_expires_at timestamptz,
    enqueued_at      timestamptz,
    failed_parents   bigint[]   -- parents that failed (only non-empty with cascade_failure off)
);

-- CACHE 1 keeps ids ascending in allocation order: a child always has a larger id than its
-- parents, which the lock order (ascending ids) relies on, and an id above last_value was never
-- issued, which is how enqueue tells an unknown parent from a finished one.
CREATE SEQUENCE hydra.message_id_seq CACHE 1;

CREATE TABLE hydra.message (
    id                  bigint      NOT NULL DEFAULT pg_catalog.nextval('hydra.message_id_seq'),
    queue               text COLLATE "C" NOT NULL,
    channel             text COLLATE "C" NOT NULL,  -- '' is the queue's default channel
    state               hydra.message_state NOT NULL,
    prio                integer     NOT NULL,            -- coalesce(priority, -2147483648)
    vtime               bigint      NOT NULL DEFAULT 0,  -- virtual time: the fair order
    attempt             integer     NOT NULL DEFAULT 0,  -- deliveries so far
    num_attempts        integer     NOT NULL,
    deps_left           integer     NOT NULL DEFAULT 0,  -- parents not yet resolved
    slot_epoch          bigint,                          -- epoch of the slot held; NULL: none
    cascade_failure     boolean     NOT NULL,
    lock_secs           numeric     NOT NULL,
    lock_secs_factor    numeric     NOT NULL,
    max_processing_secs numeric     NOT NULL,
    available_at        timestamptz,                     -- pending: delay end; locked: back-off end
    lease_token         uuid,
    lease_expires_at    timestamptz,
    enqueued_at         timestamptz NOT NULL DEFAULT pg_catalog.now(),
    finished_at         timestamptz,
    name                text COLLATE "C",
    last_error          text,
    failed_parents      bigint[],
    payload             jsonb       NOT NULL,
    CONSTRAINT message_pkey PRIMARY KEY (id)
) WITH (fillfactor = 90,
        -- A queue table turns over all day: vacuum and analyze it after 1% changes, not 20%.
        autovacuum_vacuum_scale_factor = 0.01, autovacuum_analyze_scale_factor = 0.01,
        autovacuum_vacuum_insert_scale_factor = 0.01);

COMMENT ON TABLE hydra.message IS
    'Messages not yet deleted. States: pending, ready, parked, processing, locked, failed.';

-- The fair order: one ordered scan of this index is a dequeue.
CREATE INDEX message_ready_idx ON hydra.message (queue, prio DESC, vtime, id)
    WHERE state = 'ready';
-- Per-channel view of waiting messages: channel tail for vtime, un-parking, max_size counts.
-- Processing messages are left out on purpose: the ready -> processing update (the hot path)
-- then writes two index entries (primary key, lease) instead of three.
CREATE INDEX message_live_idx ON hydra.message (queue, channel, prio DESC, vtime, id)
    WHERE state IN ('ready', 'parked', 'locked');
-- Parked messages per channel in un-parking order: a slot release finds the next one with a
-- single probe instead of walking the channel's other entries.
CREATE INDEX message_parked_idx ON hydra.message (queue, channel, prio DESC, vtime, id)
    WHERE state = 'parked';
-- Time-driven work of coordinate(): delays, back-off, lease expiry, retention.
CREATE INDEX message_due_idx ON hydra.message (available_at)
    WHERE state = 'locked' OR (state = 'pending' AND deps_left = 0);
-- Processing messages per channel (slot and size counts) and their lease deadlines (expiry
-- reads the whole index: it holds only what workers hold right now).
CREATE INDEX message_lease_idx ON hydra.message (queue, channel, lease_expires_at)
    WHERE state = 'processing';
CREATE INDEX message_failed_idx ON hydra.message (finished_at)
    WHERE state = 'failed';
-- De-duplication: one never-dequeued message per (queue, channel, name). Names are scoped to
-- the channel (a tenant), so that one tenant cannot pre-empt another's name (issue 9, item 6).
-- flows:begin (the benchmark strips flows:begin..flows:end blocks to measure their cost)
CREATE UNIQUE INDEX message_dedup_idx ON hydra.message (queue, channel, name)
    WHERE name IS NOT NULL AND attempt = 0 AND state IN ('pending', 'ready', 'parked');
-- flows:end

-- DAG edges. A row is resolved once its parent's outcome is known.
CREATE TABLE hydra.dependency (
    child_id         bigint  NOT NULL,
    parent_id        bigint  NOT NULL,
    resolved         boolean NOT NULL DEFAULT false,
    parent_succeeded boolean,
    CONSTRAINT dependency_pkey PRIMARY KEY (child_id, parent_id)
);
CREATE INDEX dependency_parent_idx ON hydra.dependency (parent_id) WHERE NOT resolved;

-- Finished parents whose children still wait: an insert-only work list for coordinate().
CREATE TABLE hydra.parent_outcome (
    parent_id   bigint      NOT NULL,
    succeeded   boolean     NOT NULL,
    finished_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    CONSTRAINT parent_outcome_pkey PRIMARY KEY (parent_id)
);

-- Edges whose parent was unfinished when the producer read it, until coordinate() has made
-- sure the parent's finish cannot have missed them (enqueue locks no parent: docs/design.md,
-- Dependencies). Insert-only for producers; coordinate() deletes.
CREATE TABLE hydra.edge_check (
    child_id  bigint NOT NULL,
    parent_id bigint NOT NULL,
    CONSTRAINT edge_check_pkey PRIMARY KEY (child_id, parent_id)
);

-- Slot epochs: a channel gets a new one each time it becomes capped, so that slots handed out
-- under an earlier policy (cleared since) are never given back to the new one.
CREATE SEQUENCE hydra.slot_epoch_seq;

-- Channel policies. in_flight counts the channel's messages holding a slot of this epoch.
CREATE TABLE hydra.channel_limit (
    queue           text COLLATE "C" NOT NULL,
    channel         text COLLATE "C" NOT NULL,
    max_concurrency integer,
    max_size        integer,
    in_flight       integer NOT NULL DEFAULT 0,
    epoch           bigint  NOT NULL DEFAULT pg_catalog.nextval('hydra.slot_epoch_seq'),
    CONSTRAINT channel_limit_pkey PRIMARY KEY (queue, channel)
) WITH (fillfactor = 50);
-- "Does this queue cap any channel?" (every dequeue asks) in one probe, however many channels
-- have only a size limit. in_flight is not indexed, so its updates stay HOT.
CREATE INDEX channel_limit_capped_idx ON hydra.channel_limit (queue)
    WHERE max_concurrency IS NOT NULL;

-- Idle workers waiting on LISTEN, one row per (queue, registration). An enqueue that wakes
-- them claims (deletes) one row, so a registered idle worker costs one NOTIFY per idle
-- period, not one per enqueue. No unique key: a claim held by an open producer transaction
-- never blocks the worker registering again.
CREATE UNLOGGED TABLE hydra.waiting_worker (
    id          bigint      GENERATED ALWAYS AS IDENTITY,
    queue       text COLLATE "C" NOT NULL,
    backend_pid integer     NOT NULL,
    since       timestamptz NOT NULL DEFAULT pg_catalog.now(),
    CONSTRAINT waiting_worker_pkey PRIMARY KEY (id)
);
CREATE INDEX waiting_worker_queue_idx ON hydra.waiting_worker (queue);

-- Queue data survives pg_dump (waiting_worker is runtime state and is left out).
SELECT pg_catalog.pg_extension_config_dump('hydra.message', '');
SELECT pg_catalog.pg_extension_config_dump('hydra.message_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('hydra.dependency', '');
SELECT pg_catalog.pg_extension_config_dump('hydra.parent_outcome', '');
SELECT pg_catalog.pg_extension_config_dump('hydra.edge_check', '');
SELECT pg_catalog.pg_extension_config_dump('hydra.channel_limit', '');
SELECT pg_catalog.pg_extension_config_dump('hydra.slot_epoch_seq', '');

-- Queue settings (SPEC §15: queues are objects with settings; more columns will follow). A
-- queue needs no row: one without, or a NULL setting, uses the default. hydra.queue_set.
CREATE TABLE hydra.queue (
    name              text COLLATE "C" NOT NULL,
    max_payload_bytes integer,                     -- NULL: the default, 1048576 (1 MiB)
    updated_at        timestamptz NOT NULL DEFAULT pg_catalog.now(),
    CONSTRAINT queue_pkey PRIMARY KEY (name)
);

COMMENT ON TABLE hydra.queue IS
    'Queues with settings; a queue without a row uses the defaults. Use hydra.queue_set.';

SELECT pg_catalog.pg_extension_config_dump('hydra.queue', '');

-- Cron schedules (their functions are in 70_schedules.sql).
CREATE TABLE hydra.schedule (
    queue               text COLLATE "C" NOT NULL,
    channel             text COLLATE "C" NOT NULL DEFAULT '',  -- '' is the default channel
    name                text COLLATE "C" NOT NULL,
    cron                text        NOT NULL,
    tz                  text        NOT NULL,              -- canonical IANA name
    payload             jsonb       NOT NULL,
    priority            integer,
    num_attempts        integer     NOT NULL,
    lock_secs           numeric     NOT NULL,
    lock_secs_factor    numeric     NOT NULL,
    max_processing_secs numeric     NOT NULL,
    next_fire_at        timestamptz NOT NULL,              -- 'infinity': stopped (see last_error)
    last_fire_at        timestamptz,                       -- the last tick handled
    last_error          text,                              -- why that tick enqueued nothing
    created_at          timestamptz NOT NULL DEFAULT pg_catalog.now(),
    updated_at          timestamptz NOT NULL DEFAULT pg_catalog.now(),  -- last schedule_set
    CONSTRAINT schedule_pkey PRIMARY KEY (queue, channel, name)
);

COMMENT ON TABLE hydra.schedule IS
    'Cron schedules: each tick enqueues one message built from the row. Use hydra.schedule_set.';

CREATE INDEX schedule_next_fire_idx ON hydra.schedule (next_fire_at);

SELECT pg_catalog.pg_extension_config_dump('hydra.schedule', '');

-- A parsed expression: each field as a "next allowed value" lookup table, so that the search
-- jumps straight to the next candidate month, day, hour and minute instead of testing minutes.
CREATE TYPE hydra._cron_spec AS (
    minute_next int[],    -- [0:59] smallest allowed minute >= i, NULL when none is left
    hour_next   int[],    -- [0:23] smallest allowed hour >= i
    dom_next    int[],    -- [1:31] smallest allowed day of month >= i
    month_next  int[],    -- [1:12] smallest allowed month >= i
    dow_ahead   int[],    -- [0:6]  days from weekday i (0 = Sunday) to the next allowed weekday
    dom_any     boolean,  -- day-of-month allows all 31 days (counts as "*")
    dow_any     boolean,  -- day-of-week allows all 7 weekdays (counts as "*")
    hour_any    boolean   -- all 24 hours allowed: the expression follows the clock across DST
);
