-- Coordination: all time-driven work, in bounded steps, safe from any number of sessions at
-- once. Every message row is taken with SKIP LOCKED; limit rows are waited for only while
-- releasing the slots of expired leases (sorted, the global order) and otherwise skipped when
-- busy, so a coordinator never waits in a cycle and one busy item never blocks the rest.

CREATE OR REPLACE FUNCTION hydra._event(p_event text, p_id bigint, p_queue text, p_channel text,
                             p_detail jsonb DEFAULT '{}')
RETURNS hydra.event
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
RETURN ROW(p_event, p_id, p_queue, NULLIF(p_channel, ''), p_detail)::hydra.event;

-- Expired leases count as failed attempts: locked for back-off, or failed when none remain.
CREATE OR REPLACE FUNCTION hydra._expire_leases(p_batch integer)
RETURNS SETOF hydra.event
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET enable_seqscan = off
SET jit = off
AS $$
DECLARE
    v_ids bigint[];
BEGIN
    -- Takes expired leases with SKIP LOCKED: waits for no one.
    v_ids := ARRAY(SELECT m.id FROM hydra.message m
                    WHERE m.state = 'processing' AND m.lease_expires_at < now()
                    ORDER BY m.lease_expires_at
                    LIMIT p_batch
                      FOR NO KEY UPDATE SKIP LOCKED);
    -- A lease that ends the message takes FOR UPDATE; one whose new edge another coordinator
    -- is checking right now (FOR KEY SHARE) waits for the next call.
    v_ids := ARRAY(SELECT m.id FROM hydra.message m
                    WHERE m.id = ANY (v_ids) AND m.attempt < m.num_attempts)
          || ARRAY(SELECT m.id FROM hydra.message m
                    WHERE m.id = ANY (v_ids) AND m.attempt >= m.num_attempts
                      FOR UPDATE SKIP LOCKED);
    -- Their slots go back under the channels' limit rows: take those with SKIP LOCKED too
    -- (a coordinator never waits while it holds message rows), and leave a lease whose
    -- channel is busy for the next call.
    v_ids := ARRAY(
        SELECT m.id FROM hydra.message m
         WHERE m.id = ANY (v_ids)
           AND (m.slot_epoch IS NULL
                OR (m.queue, m.channel) IN (
                       -- One probe per channel: never a read of every limit row.
                       SELECT cl.queue, cl.channel
                         FROM (SELECT DISTINCT x.queue, x.channel FROM hydra.message x
                                WHERE x.id = ANY (v_ids) AND x.slot_epoch IS NOT NULL) k
                        CROSS JOIN LATERAL (SELECT l.queue, l.channel FROM hydra.channel_limit l
                                             WHERE l.queue = k.queue AND l.channel = k.channel
                                               FOR NO KEY UPDATE SKIP LOCKED) cl)));
    IF v_ids = '{}' THEN
        RETURN;
    END IF;
    RETURN QUERY
    SELECT e.*
      FROM hydra._settle_failures(v_ids, array_fill('lease expired'::text, ARRAY[cardinality(v_ids)]),
                                  array_fill(true, ARRAY[cardinality(v_ids)])) f
      CROSS JOIN LATERAL (SELECT x.id, x.queue, x.channel FROM hydra.message x
                           WHERE x.id = f.message_id LIMIT 1) m,
           LATERAL (VALUES
               (CASE f.outcome WHEN 'locked' THEN 'MESSAGE_LOCKED'
                               ELSE 'MESSAGE_ATTEMPTS_EXHAUSTED' END,
                jsonb_build_object('reason', 'lease expired', 'attempt', f.attempt,
                                   'available_at', f.available_at)),
               (CASE WHEN f.outcome = 'failed' THEN 'MESSAGE_FINALIZED' END,
                jsonb_build_object('success', false))) AS v(event, detail),
           LATERAL hydra._event(v.event, m.id, m.queue, m.channel, v.detail) e
     WHERE v.event IS NOT NULL;
END
$$;

-- Gives one message the next virtual time of its channel and makes it ready.
CREATE OR REPLACE FUNCTION hydra._make_ready(p_id bigint)
RETURNS void
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
SET enable_seqscan = off
SET jit = off
BEGIN ATOMIC
    UPDATE hydra.message m
       SET state = 'ready', available_at = NULL,
           vtime = (SELECT v.base FROM hydra._next_vtimes(m.queue, ARRAY[m.channel],
                                                          ARRAY[m.prio]) v)
     WHERE m.id = p_id;
END;

-- Back-off over: locked -> ready.
CREATE OR REPLACE FUNCTION hydra._unlock_due(p_batch integer)
RETURNS SETOF hydra.event
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET enable_seqscan = off
SET jit = off
AS $$
DECLARE
    v_row record;
BEGIN
    -- One row at a time so that several messages of one channel get successive vtimes.
    FOR v_row IN
        SELECT m.id, m.queue, m.channel FROM hydra.message m
         WHERE m.state = 'locked' AND m.available_at <= now()
         ORDER BY m.available_at, m.id
         LIMIT p_batch
           FOR NO KEY UPDATE SKIP LOCKED
    LOOP
        PERFORM hydra._make_ready(v_row.id);
        PERFORM hydra._wake_workers(v_row.queue);
        RETURN NEXT hydra._event('MESSAGE_UNLOCKED', v_row.id, v_row.queue, v_row.channel);
    END LOOP;
END
$$;

-- Marks messages failed without running them (dropped, or parents failed with cascade) and
-- passes the outcome to their own children.
CREATE OR REPLACE FUNCTION hydra._finish_unrun(p_id bigint, p_reason text)
RETURNS void
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
SET enable_seqscan = off
SET jit = off
BEGIN ATOMIC
    UPDATE hydra.message m
       SET state = 'failed', finished_at = now(), last_error = p_reason, available_at = NULL
     WHERE m.id = p_id;
    SELECT hydra._record_outcomes(ARRAY[p_id], false);
END;

-- Delay over and parents resolved: pending -> ready, through max_size admission.
CREATE OR REPLACE FUNCTION hydra._release_due(p_batch integer)
RETURNS SETOF hydra.event
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET enable_seqscan = off
SET jit = off
AS $$
DECLARE
    v_row      record;
    v_limit    hydra.channel_limit;
    v_group    text[];
    v_locked   boolean := false;
    v_room     bigint;
BEGIN
    -- Rows grouped by channel; a sized channel's limit row is taken with SKIP LOCKED (its
    -- messages wait for the next call when it is busy); admitted counts only fall while we
    -- hold it, so the room computed once per channel is safe.
    FOR v_row IN
        SELECT d.id, d.queue, d.channel, l.max_size
          FROM (SELECT m.id, m.queue, m.channel, m.available_at FROM hydra.message m
                 WHERE m.state = 'pending' AND m.deps_left = 0 AND m.available_at <= now()
                 ORDER BY m.available_at, m.id
                 LIMIT p_batch
                   FOR NO KEY UPDATE SKIP LOCKED) d
          LEFT JOIN LATERAL (SELECT cl.max_size FROM hydra.channel_limit cl
                              WHERE cl.queue = d.queue AND cl.channel = d.channel
                              LIMIT 1) l ON true
         ORDER BY d.queue, d.channel, d.available_at, d.id
    LOOP
        IF v_row.max_size IS NOT NULL THEN
            IF v_group IS DISTINCT FROM ARRAY[v_row.queue, v_row.channel] THEN
                v_group := ARRAY[v_row.queue, v_row.channel];
                SELECT * INTO v_limit FROM hydra.channel_limit l
                 WHERE l.queue = v_row.queue AND l.channel = v_row.channel
                   FOR NO KEY UPDATE SKIP LOCKED;
                v_locked := FOUND;
                IF v_locked AND v_limit.max_size IS NOT NULL THEN
                    v_room := v_limit.max_size
                              - hydra._admitted_count(v_row.queue, v_row.channel,
                                                      v_limit.max_size);
                ELSE
                    v_room := NULL;
                END IF;
            END IF;
            CONTINUE WHEN NOT v_locked;
            IF v_room IS NOT NULL AND v_room <= 0 THEN
                -- Finishing takes FOR UPDATE (SKIP LOCKED); a row held: next call.
                PERFORM 1 FROM hydra.message m WHERE m.id = v_row.id FOR UPDATE SKIP LOCKED;
                CONTINUE WHEN NOT FOUND;
                PERFORM hydra._finish_unrun(v_row.id, 'dropped: channel is full');
                RETURN NEXT hydra._event('MESSAGE_DROPPED', v_row.id, v_row.queue, v_row.channel,
                                         jsonb_build_object('max_size', v_limit.max_size));
                RETURN NEXT hydra._event('MESSAGE_FINALIZED', v_row.id, v_row.queue,
                                         v_row.channel, jsonb_build_object('success', false));
                CONTINUE;
            END IF;
            v_room := v_room - 1;
        END IF;
        PERFORM hydra._make_ready(v_row.id);
        PERFORM hydra._wake_workers(v_row.queue);
        RETURN NEXT hydra._event('MESSAGE_RELEASED', v_row.id, v_row.queue, v_row.channel);
    END LOOP;
END
$$;

-- Edges attached to a parent that was unfinished when the producer read it. Enqueue locks no
-- parent (a producer's open transaction must never make another tenant's settlement wait), so
-- a parent that finished while such an edge was still uncommitted did not see it and recorded
-- no outcome for it. Each edge is checked once committed: a parent now gone (succeeded) or
-- failed gets its outcome row (again, if need be) while the edge is unresolved; a parent still
-- unfinished is key-share locked with SKIP LOCKED -- got, its finish has not started and will
-- see the committed edge (the edge needs no more checks); busy (being settled right now), the
-- edge is checked again next call. The lock is this coordinator's, held until it commits: a
-- worker may wait for coordinate(), never for a producer.
CREATE OR REPLACE FUNCTION hydra._check_new_edges(p_batch integer)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
SET jit = off
AS $$
DECLARE
    v_children bigint[];
    v_parents  bigint[];
BEGIN
    -- Check rows with SKIP LOCKED (another coordinator has them), one probe per parent.
    SELECT coalesce(array_agg(c.child_id), '{}'), coalesce(array_agg(c.parent_id), '{}')
      INTO v_children, v_parents
      FROM (SELECT e.child_id, e.parent_id FROM hydra.edge_check e
             ORDER BY e.child_id, e.parent_id
             LIMIT p_batch
               FOR UPDATE SKIP LOCKED) c;
    IF v_children = '{}' THEN
        RETURN;
    END IF;
    WITH seen AS MATERIALIZED (
        SELECT u.c, u.p, s.state
          FROM unnest(v_children, v_parents) u(c, p)
          LEFT JOIN LATERAL (SELECT m.state FROM hydra.message m WHERE m.id = u.p LIMIT 1) s
            ON true
    ), held AS MATERIALIZED (
        SELECT m.id, m.state FROM hydra.message m
         WHERE m.id = ANY (ARRAY(SELECT s.p FROM seen s WHERE s.state <> 'failed'))
           FOR KEY SHARE SKIP LOCKED
    ), verdict AS MATERIALIZED (
        SELECT s.c, s.p,
               CASE WHEN s.state IS NULL THEN 'succeeded'
                    WHEN s.state = 'failed' OR h.state = 'failed' THEN 'failed'
                    WHEN h.id IS NULL THEN 'busy'
                    ELSE 'watched' END AS v
          FROM seen s
          LEFT JOIN LATERAL (SELECT h.id, h.state FROM held h WHERE h.id = s.p LIMIT 1) h
            ON true
    ), outcomes AS (
        INSERT INTO hydra.parent_outcome (parent_id, succeeded)
        SELECT DISTINCT v.p, v.v = 'succeeded'
          FROM verdict v
         WHERE v.v IN ('succeeded', 'failed')
           AND EXISTS (SELECT 1 FROM hydra.dependency d
                        WHERE d.child_id = v.c AND d.parent_id = v.p AND NOT d.resolved)
        ON CONFLICT (parent_id) DO NOTHING
    )
    DELETE FROM hydra.edge_check k
     WHERE (k.child_id, k.parent_id) IN (SELECT v.c, v.p FROM verdict v WHERE v.v <> 'busy');
END
$$;

-- Hands finished parents' outcomes down to their waiting children.
CREATE OR REPLACE FUNCTION hydra._resolve_dependencies(p_batch integer)
RETURNS SETOF hydra.event
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET enable_seqscan = off
SET jit = off
AS $$
DECLARE
    v_parents  bigint[];
    v_children bigint[];
    v_child    record;
    v_edge     record;
    v_failed   bigint[];
    v_n        integer;
BEGIN
    -- Outcome rows and children are taken with SKIP LOCKED; an edge whose child is busy stays
    -- unresolved and its outcome row stays for the next call.
    v_parents := ARRAY(SELECT o.parent_id FROM hydra.parent_outcome o
                        ORDER BY o.parent_id LIMIT p_batch FOR UPDATE SKIP LOCKED);
    IF v_parents = '{}' THEN
        RETURN;
    END IF;

    -- At most p_batch children per call, however many the parents have: the rest (and the
    -- outcome rows, kept while an edge is open) wait for the next call.
    v_children := ARRAY(SELECT DISTINCT d.child_id FROM hydra.dependency d
                         WHERE d.parent_id = ANY (v_parents) AND NOT d.resolved
                         ORDER BY d.child_id
                         LIMIT p_batch);
    FOR v_child IN
        SELECT m.id, m.queue, m.channel, m.state, m.cascade_failure, m.deps_left
          FROM hydra.message m
         WHERE m.id = ANY (v_children)
         ORDER BY m.id
           FOR NO KEY UPDATE SKIP LOCKED
    LOOP
        -- A child about to fail by cascade is finished under FOR UPDATE (SKIP LOCKED); if
        -- another coordinator holds it (checking a new edge), try again next call.
        IF v_child.state = 'pending' AND v_child.cascade_failure
           AND EXISTS (SELECT 1 FROM hydra.dependency d JOIN hydra.parent_outcome o
                          ON o.parent_id = d.parent_id
                        WHERE d.child_id = v_child.id AND NOT d.resolved
                          AND d.parent_id = ANY (v_parents) AND NOT o.succeeded) THEN
            PERFORM 1 FROM hydra.message m WHERE m.id = v_child.id FOR UPDATE SKIP LOCKED;
            CONTINUE WHEN NOT FOUND;
        END IF;
        v_n := 0;
        v_failed := '{}';
        FOR v_edge IN
            UPDATE hydra.dependency d
               SET resolved = true, parent_succeeded = o.succeeded
              FROM hydra.parent_outcome o
             WHERE d.child_id = v_child.id AND d.parent_id = o.parent_id
               AND o.parent_id = ANY (v_parents) AND NOT d.resolved
            RETURNING d.parent_id, o.succeeded
        LOOP
            v_n := v_n + 1;
            IF NOT v_edge.succeeded THEN
                v_failed := v_failed || v_edge.parent_id;
            END IF;
            RETURN NEXT hydra._event('MESSAGE_DEPENDENCY_RESOLVED', v_child.id, v_child.queue,
                                     v_child.channel,
                                     jsonb_build_object('parent_id', v_edge.parent_id,
                                                        'success', v_edge.succeeded));
        END LOOP;
        CONTINUE WHEN v_child.state <> 'pending';

        IF v_child.cascade_failure AND v_failed <> '{}' THEN
            UPDATE hydra.message m
               SET deps_left = greatest(m.deps_left - v_n, 0),
                   failed_parents = coalesce(m.failed_parents, '{}') || v_failed
             WHERE m.id = v_child.id;
            PERFORM hydra._finish_unrun(v_child.id, 'dependencies unmet');
            RETURN NEXT hydra._event('MESSAGE_DEPENDENCIES_UNMET', v_child.id, v_child.queue,
                                     v_child.channel, jsonb_build_object('failed_parents', v_failed));
            RETURN NEXT hydra._event('MESSAGE_FINALIZED', v_child.id, v_child.queue,
                                     v_child.channel, jsonb_build_object('success', false));
        ELSE
            -- The child's own delay counts from the moment its last parent resolved.
            UPDATE hydra.message m
               SET deps_left = greatest(m.deps_left - v_n, 0),
                   failed_parents = CASE WHEN v_failed = '{}' THEN m.failed_parents
                                         ELSE coalesce(m.failed_parents, '{}') || v_failed END,
                   available_at = CASE WHEN m.deps_left - v_n <= 0
                                       THEN now() + (m.available_at - m.enqueued_at)
                                       ELSE m.available_at END
             WHERE m.id = v_child.id;
        END IF;
    END LOOP;

    -- Edges whose child no longer exists resolve silently, once the parents' children have
    -- all been looked at (what is left open then is few); outcomes with no open edge left
    -- are done. (A scalar probe per edge rather than an anti-join the planner might hash
    -- over the whole message table.)
    IF cardinality(v_children) < p_batch THEN
        UPDATE hydra.dependency d SET resolved = true
         WHERE d.parent_id = ANY (v_parents) AND NOT d.resolved
           AND (SELECT m.id FROM hydra.message m WHERE m.id = d.child_id) IS NULL;
    END IF;
    DELETE FROM hydra.parent_outcome o
     WHERE o.parent_id = ANY (v_parents)
       AND NOT EXISTS (SELECT 1 FROM hydra.dependency d
                        WHERE d.parent_id = o.parent_id AND NOT d.resolved);
END
$$;

-- Channels with free slots and parked messages (after a raised cap, or a release that met a
-- busy row) get their parked messages back.
CREATE OR REPLACE FUNCTION hydra._repair_parked(p_batch integer)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET enable_seqscan = off
SET jit = off
AS $$
DECLARE
    v_limit hydra.channel_limit;
BEGIN
    -- The channels that have parked messages, one index probe each (a skip scan, in
    -- (queue, channel) order): the work grows with those channels, not with their backlogs
    -- nor with idle capped channels. Limit rows with SKIP LOCKED: a busy channel is being
    -- served by its own releases.
    FOR v_limit IN
        WITH RECURSIVE parked (queue, channel) AS (
            (SELECT m.queue, m.channel FROM hydra.message m
              WHERE m.state = 'parked'
              ORDER BY m.queue, m.channel LIMIT 1)
            UNION ALL
            SELECT n.queue, n.channel
              FROM parked p
             CROSS JOIN LATERAL (SELECT m.queue, m.channel FROM hydra.message m
                                  WHERE m.state = 'parked'
                                    AND (m.queue, m.channel) > (p.queue, p.channel)
                                  ORDER BY m.queue, m.channel LIMIT 1) n
        )
        SELECT l.*
          FROM parked p
         CROSS JOIN LATERAL (SELECT * FROM hydra.channel_limit x
                              WHERE x.queue = p.queue AND x.channel = p.channel
                                AND x.max_concurrency > x.in_flight
                                FOR NO KEY UPDATE SKIP LOCKED) l
         LIMIT p_batch
    LOOP
        UPDATE hydra.channel_limit l
           SET in_flight = l.in_flight + hydra._unpark(v_limit.queue, v_limit.channel,
                                                       v_limit.max_concurrency - v_limit.in_flight,
                                                       v_limit.epoch)
         WHERE l.queue = v_limit.queue AND l.channel = v_limit.channel;
    END LOOP;
END
$$;

-- Failed messages are kept as dead letters (and as outcomes for late children) until their
-- retention ends.
CREATE OR REPLACE FUNCTION hydra._purge_failed(p_batch integer, p_retention interval)
RETURNS SETOF hydra.event
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET enable_seqscan = off
SET jit = off
AS $$
BEGIN
    -- Deletes with SKIP LOCKED (waits for no one).
    RETURN QUERY
    WITH gone AS (
        DELETE FROM hydra.message m
         WHERE m.id = ANY (ARRAY(SELECT f.id FROM hydra.message f
                                  WHERE f.state = 'failed'
                                    AND f.finished_at < now() - p_retention
                                  ORDER BY f.finished_at
                                  LIMIT p_batch
                                    FOR UPDATE SKIP LOCKED))
        RETURNING m.id, m.queue, m.channel
    ), edges AS (
        DELETE FROM hydra.dependency d WHERE d.child_id IN (SELECT g.id FROM gone g)
    )
    SELECT (hydra._event('MESSAGE_DELETED', g.id, g.queue, g.channel)).* FROM gone g;
END
$$;

CREATE OR REPLACE FUNCTION hydra.coordinate(
    batch            integer  DEFAULT 1000,
    failed_retention interval DEFAULT '7 days'
)
RETURNS SETOF hydra.event
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_rounds integer := 0;
    v_found  bigint;
BEGIN
    -- One bounded pass over every kind of due work; returns the transitions it made.
    IF batch IS NULL OR batch < 1 OR batch > 100000 THEN
        PERFORM hydra._invalid('batch', 'must be between 1 and 100000');
    END IF;
    IF failed_retention IS NULL OR NOT failed_retention BETWEEN interval '0' AND interval '100 years'
    THEN
        PERFORM hydra._invalid('failed_retention', 'must be between 0 and 100 years');
    END IF;
    -- Within the bounds by its total, yet made of parts that overflow (months of a million
    -- years offset by days): the cut-off is computed once here, so _purge_failed cannot raise.
    BEGIN
        PERFORM now() - failed_retention;
    EXCEPTION WHEN datetime_field_overflow OR interval_field_overflow THEN
        PERFORM hydra._invalid('failed_retention', 'must be between 0 and 100 years');
    END;

    RETURN QUERY SELECT * FROM hydra._expire_leases(batch);
    RETURN QUERY SELECT * FROM hydra._unlock_due(batch);
    PERFORM hydra._check_new_edges(batch);
    -- Cascades travel one DAG level per round.
    LOOP
        v_rounds := v_rounds + 1;
        RETURN QUERY SELECT * FROM hydra._resolve_dependencies(batch);
        GET DIAGNOSTICS v_found = ROW_COUNT;
        EXIT WHEN v_found = 0 OR v_rounds >= 10;
    END LOOP;
    RETURN QUERY SELECT * FROM hydra._release_due(batch);
    PERFORM hydra._repair_parked(batch);
    RETURN QUERY SELECT * FROM hydra._fire_due_schedules(batch);
    RETURN QUERY SELECT * FROM hydra._purge_failed(batch, failed_retention);
    DELETE FROM hydra.waiting_worker w
     WHERE w.id IN (SELECT x.id FROM hydra.waiting_worker x
                     WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_stat_activity a
                                        WHERE a.pid = x.backend_pid)
                       FOR UPDATE SKIP LOCKED);
END
$$;

COMMENT ON FUNCTION hydra.coordinate(integer, interval) IS
'Does the time-driven work of the queue in bounded steps of at most batch items each: expires
leases (a failed attempt), unlocks messages whose back-off is over, resolves dependencies
(cascading failures), releases delayed messages (through max_size admission), fires due
schedules and deletes failed messages older than failed_retention. Safe to run from any number
of sessions at once (pg_cron included). Returns one row per transition (SPEC event names).
Bounds: batch 1 to 100000, failed_retention 0 to 100 years.';

-- Idle-worker bookkeeping for the driver's LISTEN/NOTIFY wake-ups.
CREATE OR REPLACE FUNCTION hydra.worker_idle(queues text[])
RETURNS void
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
    -- Queue names obey the rules of every other name (22023 naming queues).
    SELECT hydra._check_name('queues', q, true) FROM unnest(queues) q;
    INSERT INTO hydra.waiting_worker (queue, backend_pid)
    SELECT DISTINCT q, pg_backend_pid() FROM unnest(queues) q
     WHERE q IS NOT NULL
       -- A registration an open producer transaction has claimed does not count (it will
       -- most likely be gone); were that claim rolled back, the worker is registered twice.
       AND NOT EXISTS (SELECT 1 FROM hydra.waiting_worker w
                        WHERE w.queue = q AND w.backend_pid = pg_backend_pid()
                          FOR UPDATE SKIP LOCKED);
END;

COMMENT ON FUNCTION hydra.worker_idle(text[]) IS
'Registers this session as an idle worker LISTENing on channel hydra_enqueue for these queues:
enqueue sends NOTIFY only while some worker is registered, and the first enqueue that does
claims the registration (call again when idle again).';

CREATE OR REPLACE FUNCTION hydra.worker_busy()
RETURNS void
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
    DELETE FROM hydra.waiting_worker w
     WHERE w.id IN (SELECT x.id FROM hydra.waiting_worker x
                     WHERE x.backend_pid = pg_backend_pid() FOR UPDATE SKIP LOCKED);
END;

COMMENT ON FUNCTION hydra.worker_busy() IS
'Removes this session from the idle-worker list (see hydra.worker_idle).';
