-- Settling leased messages: complete, fail (retry with back-off, or finish), heartbeat, and the
-- concurrency-slot release they share with lease expiry.
-- Locks: the caller's own leased rows in ascending id order (waiting), then channel_limit rows
-- in (queue, channel) order (waiting), then parked rows with SKIP LOCKED.
-- States: processing -> deleted (success) | locked (retry) | failed.

-- Gives back the concurrency slots held by finished or retried messages. One array element
-- per released slot. A parked message of the channel takes the slot over (it becomes ready
-- with the slot reserved), so a saturated channel keeps flowing without a dequeuer parking
-- and admitting it again.
CREATE OR REPLACE FUNCTION hydra._release_slots(p_queues text[], p_channels text[], p_epochs bigint[])
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
SET jit = off
AS $$
DECLARE
    v_q    text[];
    v_c    text[];
    v_n    integer[];
    v_free integer[];
    v_ep   bigint[];
    v_woke text[];
BEGIN
    -- Two statements: the limit rows are locked first (sorted: the global lock order), so
    -- that the second statement's snapshot sees every message parked before we got them.
    -- Slots of an older epoch (the policy was cleared since) are not given back.
    SELECT array_agg(l.queue), array_agg(l.channel), array_agg(l.n), array_agg(l.free),
           array_agg(l.epoch)
      INTO v_q, v_c, v_n, v_free, v_ep
      FROM (SELECT cl.queue, cl.channel, cl.epoch, r.n,
                   CASE WHEN cl.max_concurrency IS NULL THEN 0
                        ELSE greatest(cl.max_concurrency - (cl.in_flight - r.n), 0) END AS free
              FROM hydra.channel_limit cl
              JOIN (SELECT u.q, u.c, u.e, count(*)::integer AS n
                      FROM unnest(p_queues, p_channels, p_epochs) u(q, c, e)
                     GROUP BY u.q, u.c, u.e) r
                ON r.q = cl.queue AND r.c = cl.channel AND r.e = cl.epoch
             ORDER BY cl.queue, cl.channel
               FOR NO KEY UPDATE OF cl) l;
    IF v_q IS NULL THEN
        RETURN;
    END IF;

    -- Each channel's share of what it gets back comes from the picks themselves (every row
    -- picked is locked here, so it is un-parked): no join of the picks with the channels.
    WITH lim AS (
        SELECT u.q, u.c, u.n, u.free, u.e
          FROM unnest(v_q, v_c, v_n, v_free, v_ep) u(q, c, n, free, e)
    ), pick AS MATERIALIZED (
        SELECT lim.q, lim.c, lim.n, lim.e, p.id
          FROM lim LEFT JOIN LATERAL (SELECT x.id FROM hydra.message x
                                       WHERE x.queue = lim.q AND x.channel = lim.c
                                         AND x.state = 'parked'
                                       ORDER BY x.prio DESC, x.vtime, x.id
                                       LIMIT lim.free
                                         FOR NO KEY UPDATE SKIP LOCKED) p ON true
    ), unparked AS (
        UPDATE hydra.message m
           SET state = 'ready', slot_epoch = pick.e
          FROM pick
         WHERE m.id = pick.id
    ), settled AS (
        UPDATE hydra.channel_limit cl
           SET in_flight = greatest(cl.in_flight - g.n + g.k, 0)
          FROM (SELECT pick.q, pick.c, pick.n, count(pick.id)::integer AS k
                  FROM pick GROUP BY pick.q, pick.c, pick.n) g
         WHERE cl.queue = g.q AND cl.channel = g.c
    )
    SELECT array_agg(DISTINCT pick.q) FILTER (WHERE pick.id IS NOT NULL) INTO v_woke
      FROM pick;

    -- Parked messages that became ready may be what an idle worker waits for.
    IF v_woke IS NOT NULL THEN
        PERFORM hydra._wake_workers(w) FROM unnest(v_woke) w;
    END IF;
END
$$;

-- Records, for finished messages that have waiting children, the outcome coordinate() will
-- hand down to them.
CREATE OR REPLACE FUNCTION hydra._record_outcomes(p_ids bigint[], p_succeeded boolean)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
SET jit = off
AS $$
BEGIN
    -- Nothing to do while no edge waits (one probe); else one probe of the unresolved-edge
    -- index per finished message (LIMIT 1 keeps each a probe: never a read of every edge).
    IF EXISTS (SELECT 1 FROM hydra.dependency d WHERE NOT d.resolved) THEN
        INSERT INTO hydra.parent_outcome (parent_id, succeeded)
        SELECT f.id, p_succeeded
          FROM unnest(p_ids) f(id)
         CROSS JOIN LATERAL (SELECT 1 FROM hydra.dependency d
                              WHERE d.parent_id = f.id AND NOT d.resolved LIMIT 1) e
        ON CONFLICT (parent_id) DO NOTHING;
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION hydra.complete_many(message_ids bigint[], lease_tokens uuid[])
RETURNS SETOF bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
SET jit = off
AS $$
DECLARE
    v_done     bigint[];
    v_queues   text[];
    v_channels text[];
    v_epochs   bigint[];
BEGIN
    -- Deletes the messages whose lease is still held (token matches), then releases their
    -- slots and tells waiting children. Stale or unknown ids are ignored (not returned).
    IF message_ids IS NULL OR lease_tokens IS NULL
       OR cardinality(message_ids) <> cardinality(lease_tokens) THEN
        PERFORM hydra._invalid('message_ids, lease_tokens',
                               'must be two arrays of the same length');
    END IF;
    WITH gone AS (
        DELETE FROM hydra.message m
         WHERE m.id = ANY (message_ids)
           AND m.lease_token = lease_tokens[array_position(message_ids, m.id)]
        RETURNING m.id, m.queue, m.channel, m.slot_epoch
    )
    SELECT coalesce(array_agg(g.id ORDER BY g.id), '{}'),
           array_agg(g.queue) FILTER (WHERE g.slot_epoch IS NOT NULL),
           array_agg(g.channel) FILTER (WHERE g.slot_epoch IS NOT NULL),
           array_agg(g.slot_epoch) FILTER (WHERE g.slot_epoch IS NOT NULL)
      INTO v_done, v_queues, v_channels, v_epochs
      FROM gone g;
    IF v_done = '{}' THEN
        RETURN;
    END IF;
    -- flows:begin
    -- Edges where these messages were the child are no longer needed.
    DELETE FROM hydra.dependency d WHERE d.child_id = ANY (v_done);
    PERFORM hydra._record_outcomes(v_done, true);
    -- flows:end
    IF v_queues IS NOT NULL THEN
        PERFORM hydra._release_slots(v_queues, v_channels, v_epochs);
    END IF;
    RETURN QUERY SELECT unnest(v_done);
END
$$;

COMMENT ON FUNCTION hydra.complete_many(bigint[], uuid[]) IS
'Marks leased messages as succeeded (they are deleted) and returns the ids completed. An id
whose lease expired or was handed to another worker (token mismatch) is skipped.';

CREATE OR REPLACE FUNCTION hydra.complete(message_id bigint, lease_token uuid)
RETURNS boolean
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
RETURN EXISTS (SELECT 1 FROM hydra.complete_many(ARRAY[message_id], ARRAY[lease_token]));

COMMENT ON FUNCTION hydra.complete(bigint, uuid) IS
'Marks one leased message as succeeded. Returns false when the lease is no longer held.';

-- The set-based core of _settle_failures: moves the given processing messages to locked
-- (retry after back-off) or failed in one statement; returns the ids that failed and the slots
-- (queue, channel, epoch) they held.
CREATE OR REPLACE FUNCTION hydra._settle_rows(
    p_ids        bigint[],
    p_errors     text[],
    p_retry      boolean[],
    OUT failed   bigint[],
    OUT queues   text[],
    OUT channels text[],
    OUT epochs   bigint[]
)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
SET jit = off
AS $$
BEGIN
    -- Decides retry vs finish per message. The slot a message held is read before the update
    -- clears it, and handed through the update's RETURNING (one probe per message; no join of
    -- the results back to the rows).
    WITH input AS MATERIALIZED (
        SELECT u.id, u.err, coalesce(u.retry, true) AS retry, o.queue, o.channel, o.slot_epoch
          FROM unnest(p_ids, p_errors, p_retry) u(id, err, retry)
          JOIN LATERAL (SELECT m.queue, m.channel, m.slot_epoch FROM hydra.message m
                         WHERE m.id = u.id LIMIT 1) o ON true
    ), upd AS (
        UPDATE hydra.message m
           SET state = CASE WHEN i.retry AND m.attempt < m.num_attempts
                            THEN 'locked'::hydra.message_state ELSE 'failed' END,
               available_at = CASE WHEN i.retry AND m.attempt < m.num_attempts
                                   THEN now() + hydra._backoff(m.lock_secs, m.lock_secs_factor,
                                                               m.attempt) END,
               finished_at = CASE WHEN i.retry AND m.attempt < m.num_attempts
                                  THEN NULL ELSE now() END,
               last_error = i.err,
               lease_token = NULL,
               lease_expires_at = NULL,
               slot_epoch = NULL
          FROM input i
         WHERE m.id = ANY (p_ids) AND m.id = i.id
        RETURNING m.id, m.state, i.queue, i.channel, i.slot_epoch
    )
    SELECT coalesce(array_agg(u.id) FILTER (WHERE u.state = 'failed'), '{}'),
           array_agg(u.queue) FILTER (WHERE u.slot_epoch IS NOT NULL),
           array_agg(u.channel) FILTER (WHERE u.slot_epoch IS NOT NULL),
           array_agg(u.slot_epoch) FILTER (WHERE u.slot_epoch IS NOT NULL)
      INTO failed, queues, channels, epochs
      FROM upd u;
END
$$;

-- The last resort of _settle_failures for one message whose settlement raised: failed at
-- once, with the error kept, by an update that computes nothing from the row. Returns what
-- _settle_rows returns for it.
CREATE OR REPLACE FUNCTION hydra._settle_broken(
    p_id         bigint,
    p_error      text,
    OUT failed   bigint[],
    OUT queues   text[],
    OUT channels text[],
    OUT epochs   bigint[]
)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET enable_seqscan = off
SET jit = off
AS $$
DECLARE
    v_queue   text;
    v_channel text;
    v_epoch   bigint;
BEGIN
    -- processing -> failed; the slot it held is read first and returned for release. Ending
    -- a message needs FOR UPDATE (children being attached; fail_many holds it already):
    -- when a producer holds the row, it is left for the next call.
    SELECT m.queue, m.channel, m.slot_epoch INTO v_queue, v_channel, v_epoch
      FROM hydra.message m WHERE m.id = p_id
       FOR UPDATE SKIP LOCKED;
    IF NOT FOUND THEN
        failed := '{}';
        RETURN;
    END IF;
    UPDATE hydra.message m
       SET state = 'failed', available_at = NULL, finished_at = now(), last_error = p_error,
           lease_token = NULL, lease_expires_at = NULL, slot_epoch = NULL
     WHERE m.id = p_id;
    failed := CASE WHEN FOUND THEN ARRAY[p_id] ELSE '{}' END;
    IF FOUND AND v_epoch IS NOT NULL THEN
        queues := ARRAY[v_queue];
        channels := ARRAY[v_channel];
        epochs := ARRAY[v_epoch];
    END IF;
END
$$;

-- Moves locked-by-caller processing messages to locked (retry after back-off) or failed.
-- Shared by fail_many and lease expiry; the caller has locked the rows FOR UPDATE (producers
-- lock no parent; only coordinate()'s check of a new edge holds one, FOR KEY SHARE, briefly).
-- One bad row never fails the batch: _backoff cannot raise on any stored value, and should
-- the statement raise anyway (something no bound foresaw), the rows are settled again one at
-- a time, and a row that still raises is failed without retry, the error in last_error. The
-- common case pays one subtransaction per call (this is never the dequeue/complete path).
CREATE OR REPLACE FUNCTION hydra._settle_failures(p_ids bigint[], p_errors text[], p_retry boolean[])
RETURNS SETOF hydra.fail_result
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
SET jit = off
AS $$
DECLARE
    v_failed   bigint[];
    v_queues   text[];
    v_channels text[];
    v_epochs   bigint[];
    v_one      record;
    v_state    text;
    v_text     text;
BEGIN
    -- Settles the rows; releases slots; records outcomes of finished ones.
    BEGIN
        SELECT r.failed, r.queues, r.channels, r.epochs
          INTO v_failed, v_queues, v_channels, v_epochs
          FROM hydra._settle_rows(p_ids, p_errors, p_retry) r;
    EXCEPTION WHEN OTHERS THEN
        v_failed := '{}';
        FOR v_i IN 1 .. coalesce(cardinality(p_ids), 0) LOOP
            BEGIN
                SELECT r.* INTO v_one
                  FROM hydra._settle_rows(p_ids[v_i:v_i], p_errors[v_i:v_i], p_retry[v_i:v_i]) r;
            EXCEPTION WHEN OTHERS THEN
                GET STACKED DIAGNOSTICS v_state = RETURNED_SQLSTATE, v_text = MESSAGE_TEXT;
                SELECT r.* INTO v_one
                  FROM hydra._settle_broken(p_ids[v_i], format(
                           'hydramq: settling this message raised %s (%s); failed without '
                           'retry. Reported error: %s', v_state, v_text,
                           coalesce(p_errors[v_i], '(none)'))) r;
            END;
            v_failed := v_failed || v_one.failed;
            v_queues := v_queues || v_one.queues;
            v_channels := v_channels || v_one.channels;
            v_epochs := v_epochs || v_one.epochs;
        END LOOP;
    END;
    IF v_failed <> '{}' THEN
        PERFORM hydra._record_outcomes(v_failed, false);
    END IF;
    IF v_queues IS NOT NULL THEN
        PERFORM hydra._release_slots(v_queues, v_channels, v_epochs);
    END IF;
    RETURN QUERY
        SELECT m.id, m.state::text, m.attempt, m.available_at
          FROM hydra.message m
         WHERE m.id = ANY (p_ids) AND m.state IN ('locked', 'failed')
         ORDER BY m.id;
END
$$;

CREATE OR REPLACE FUNCTION hydra.fail_many(
    message_ids  bigint[],
    lease_tokens uuid[],
    errors       text[]    DEFAULT NULL,
    retry        boolean   DEFAULT true,
    retries      boolean[] DEFAULT NULL
)
RETURNS SETOF hydra.fail_result
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
SET jit = off
AS $$
DECLARE
    v_held bigint[];
BEGIN
    -- Contract: waits for the caller's own rows (ascending id), then as _settle_failures.
    -- retries, when given, overrides retry per message. Stale ids come back as 'stale'.
    IF message_ids IS NULL OR lease_tokens IS NULL
       OR cardinality(message_ids) <> cardinality(lease_tokens) THEN
        PERFORM hydra._invalid('message_ids, lease_tokens',
                               'must be two arrays of the same length');
    END IF;
    IF errors IS NOT NULL AND cardinality(errors) <> cardinality(message_ids) THEN
        PERFORM hydra._invalid('errors', 'must have one element per message id');
    END IF;
    IF retries IS NOT NULL AND cardinality(retries) <> cardinality(message_ids) THEN
        PERFORM hydra._invalid('retries', 'must have one element per message id');
    END IF;
    IF retry IS NULL THEN
        PERFORM hydra._invalid('retry', 'must not be NULL');
    END IF;
    v_held := ARRAY(
        SELECT m.id FROM hydra.message m
         WHERE m.id = ANY (message_ids)
           AND m.lease_token = lease_tokens[array_position(message_ids, m.id)]
         ORDER BY m.id
           FOR UPDATE);
    RETURN QUERY
        SELECT * FROM hydra._settle_failures(
            v_held,
            ARRAY(SELECT errors[array_position(message_ids, h)] FROM unnest(v_held) h),
            ARRAY(SELECT coalesce(retries[array_position(message_ids, h)], fail_many.retry)
                    FROM unnest(v_held) h));
    RETURN QUERY
        SELECT s.id, 'stale'::text, NULL::integer, NULL::timestamptz
          FROM unnest(message_ids) s(id)
         WHERE s.id <> ALL (v_held);
END
$$;

COMMENT ON FUNCTION hydra.fail_many(bigint[], uuid[], text[], boolean, boolean[]) IS
'Reports failed attempts. With retry (default) and attempts left a message is locked for
lock_secs * lock_secs_factor^(attempt-1) seconds (at most ten years), then ready again;
otherwise it is failed at once. A message whose settlement raises is failed alone (the error in
last_error); the others are settled. Returns (message_id, outcome, attempt, available_at); outcome is locked, failed or stale
(the lease is no longer held: nothing changed).';

CREATE OR REPLACE FUNCTION hydra.fail(
    message_id  bigint,
    lease_token uuid,
    error       text    DEFAULT NULL,
    retry       boolean DEFAULT true
)
RETURNS hydra.fail_result
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
RETURN (SELECT f FROM hydra.fail_many(ARRAY[message_id], ARRAY[lease_token], ARRAY[error], retry) f
         LIMIT 1);

COMMENT ON FUNCTION hydra.fail(bigint, uuid, text, boolean) IS
'Reports one failed attempt; see hydra.fail_many.';

CREATE OR REPLACE FUNCTION hydra.heartbeat(
    message_id  bigint,
    lease_token uuid,
    extend_secs numeric DEFAULT NULL
)
RETURNS timestamptz
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET enable_seqscan = off
SET jit = off
AS $$
DECLARE
    v_deadline timestamptz;
BEGIN
    -- Pushes the lease deadline to now + extend_secs (default: max_processing_secs).
    IF extend_secs IS NOT NULL AND NOT extend_secs BETWEEN 0.001 AND 315360000 THEN
        PERFORM hydra._invalid('extend_secs', 'must be between 0.001 and 315360000 (ten years)');
    END IF;
    -- The stored max_processing_secs is clamped to the bounds, as in _lease.
    UPDATE hydra.message m
       SET lease_expires_at = now() + make_interval(secs => coalesce(extend_secs,
               greatest(least(m.max_processing_secs, 315360000), 0.001))::float8)
     WHERE m.id = heartbeat.message_id AND m.lease_token = heartbeat.lease_token
    RETURNING m.lease_expires_at INTO v_deadline;
    RETURN v_deadline;
END
$$;

COMMENT ON FUNCTION hydra.heartbeat(bigint, uuid, numeric) IS
'Extends the lease of a message being processed to now + extend_secs (0.001 to 315360000,
ten years; default: the message''s max_processing_secs). Returns the new deadline, or NULL when
the lease is no longer held (expired and re-delivered, or settled).';
