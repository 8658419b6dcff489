-- Enqueue: the only way messages enter. Insert-only: it never updates or locks an existing
-- row (SPEC §4); it waits only on the unique index when another open transaction enqueued the
-- same de-duplication name. Parents are read, never locked: an edge to an unfinished parent is
-- also written to hydra.edge_check, and coordinate() makes sure the parent's finish saw it.

-- Next virtual times for (channel, priority) pairs of a queue: after each channel's own tail,
-- never before the round the queue is serving now (the head of the ready order). Reads only;
-- two index probes per pair, in one statement whatever the number of pairs.
CREATE OR REPLACE FUNCTION hydra._next_vtimes(p_queue text, p_channels text[], p_prios integer[])
RETURNS TABLE (channel text, prio integer, base bigint)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
SET jit = off
SET enable_sort = off
AS $$
BEGIN
    -- tail: the channel's last ready or parked vtime; head: the smallest ready vtime. Scalar
    -- subqueries over materialized pairs: each probe is one index descent.
    RETURN QUERY
    WITH pairs AS MATERIALIZED (
        SELECT DISTINCT u.c, u.p FROM unnest(p_channels, p_prios) u(c, p)
    ), heads AS MATERIALIZED (
        -- One probe per priority, however many channels share it.
        SELECT d.p, (SELECT m.vtime FROM hydra.message m
                      WHERE m.queue = p_queue AND m.state = 'ready' AND m.prio = d.p
                      ORDER BY m.vtime, m.id LIMIT 1) AS v
          FROM (SELECT DISTINCT pairs.p FROM pairs) d
    ), tails AS MATERIALIZED (
        SELECT g.c, g.p, (SELECT m.vtime FROM hydra.message m
                           WHERE m.queue = p_queue AND m.channel = g.c AND m.prio = g.p
                             AND m.state IN ('ready', 'parked')
                           ORDER BY m.vtime DESC LIMIT 1) AS v
          FROM pairs g
    )
    SELECT t.c, t.p, greatest(coalesce(t.v + 1, 0), coalesce(h.v, 0))
      FROM tails t JOIN heads h ON h.p = t.p;
END
$$;

-- Admitted messages of a channel (ready, parked, processing, locked), counted up to p_limit:
-- what max_size compares with.
CREATE OR REPLACE FUNCTION hydra._admitted_count(p_queue text, p_channel text, p_limit integer)
RETURNS integer
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
SET jit = off
AS $$
DECLARE
    v_waiting integer;
    v_running integer;
BEGIN
    -- Two bounded index scans: waiting states, then processing.
    SELECT count(*) INTO v_waiting
      FROM (SELECT 1 FROM hydra.message m
             WHERE m.queue = p_queue AND m.channel = p_channel
               AND m.state IN ('ready', 'parked', 'locked')
             LIMIT p_limit) w;
    SELECT count(*) INTO v_running
      FROM (SELECT 1 FROM hydra.message m
             WHERE m.queue = p_queue AND m.channel = p_channel AND m.state = 'processing'
             LIMIT p_limit) r;
    RETURN v_waiting + v_running;
END
$$;

-- How many new messages of a capped channel may join the ready order now: NULL when the
-- channel has no cap. Reads only; the rest are parked at once (so dequeues never scan past
-- them) and a slot release un-parks them. Counting more than needed only parks more.
CREATE OR REPLACE FUNCTION hydra._capped_room(p_queue text, p_channel text)
RETURNS integer
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
SET jit = off
AS $$
DECLARE
    v_limit   hydra.channel_limit;
    v_waiting integer;
BEGIN
    -- Free slots minus the messages already waiting for them.
    SELECT * INTO v_limit FROM hydra.channel_limit l
     WHERE l.queue = p_queue AND l.channel = p_channel;
    IF v_limit.max_concurrency IS NULL THEN
        RETURN NULL;
    END IF;
    IF v_limit.max_concurrency <= v_limit.in_flight THEN
        RETURN 0;
    END IF;
    SELECT count(*) INTO v_waiting
      FROM (SELECT 1 FROM hydra.message m
             WHERE m.queue = p_queue AND m.channel = p_channel AND m.state IN ('ready', 'parked')
             LIMIT v_limit.max_concurrency - v_limit.in_flight) w;
    RETURN v_limit.max_concurrency - v_limit.in_flight - v_waiting;
END
$$;

-- Wakes idle workers of a queue, only when one is registered: NOTIFY serialises commits, so the
-- hot enqueue path must not pay for it while every worker is busy. Any role may LISTEN (or
-- NOTIFY) hydra_enqueue without a grant, so the payload names no queue: it is the backend pid
-- of the worker whose registration was claimed (pids are public in pg_stat_activity), or ''
-- (every idle worker re-checks) when none could be claimed. A NOTIFY is only a hint: a worker
-- it wakes dequeues, and a spurious one costs that worker one empty dequeue.
CREATE OR REPLACE FUNCTION hydra._wake_workers(p_queue text)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_pid integer;
BEGIN
    -- While a worker is registered idle: claim one registration (SKIP LOCKED: never waits)
    -- and notify. A registration another open transaction has claimed may never be
    -- committed, so finding only those still notifies.
    IF EXISTS (SELECT 1 FROM hydra.waiting_worker w WHERE w.queue = p_queue) THEN
        DELETE FROM hydra.waiting_worker w
         WHERE w.id = (SELECT x.id FROM hydra.waiting_worker x
                        WHERE x.queue = p_queue LIMIT 1 FOR UPDATE SKIP LOCKED)
        RETURNING w.backend_pid INTO v_pid;
        PERFORM pg_catalog.pg_notify('hydra_enqueue', coalesce(v_pid::text, ''));
    END IF;
END
$$;

-- The set-based core of enqueue and enqueue_many. Arrays are aligned (one element per
-- message, ord = position); depends_on is flattened into (p_dep_ords[i] -> p_dep_parents[i]).
CREATE OR REPLACE FUNCTION hydra._enqueue_rows(
    p_queue               text,
    p_payloads            jsonb[],
    p_channels            text[],
    p_priorities          integer[],
    p_names               text[],
    p_num_attempts        integer[],
    p_lock_secs           numeric[],
    p_lock_secs_factor    numeric[],
    p_delay_secs          numeric[],
    p_cascade_failure     boolean[],
    p_max_processing_secs numeric[],
    p_dep_ords            integer[],
    p_dep_parents         bigint[]
)
RETURNS SETOF hydra.enqueue_many_result
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
SET jit = off
SET enable_sort = on
AS $$
DECLARE
    v_count          integer := coalesce(array_length(p_payloads, 1), 0);
    v_ids            bigint[];
    v_parent_ids     bigint[] := '{}'::bigint[];
    v_parent_states  hydra.message_state[] := '{}'::hydra.message_state[];
    v_inserted       bigint[];
    v_dropped        bigint[];
    v_any_ready      boolean;
    v_missing        bigint;
    v_tries          integer := 0;
    v_pending_ords   integer[];
    v_dup_ords       integer[];
    v_dup_ids        bigint[];
BEGIN
    -- Validates everything, then inserts all rows in one statement; returns one row per message.
    PERFORM hydra._check_name('queue', p_queue, false);
    PERFORM hydra._check_message_options(p_payloads, p_channels, p_priorities, p_names,
        p_num_attempts, p_lock_secs, p_lock_secs_factor, p_delay_secs, p_cascade_failure,
        p_max_processing_secs);
    PERFORM hydra._check_payloads(p_queue, p_payloads);
    IF v_count = 0 THEN
        RETURN;
    END IF;

    IF coalesce(array_length(p_dep_parents, 1), 0) > 0 THEN
        IF array_position(p_dep_parents, NULL) IS NOT NULL THEN
            PERFORM hydra._invalid('depends_on', 'must not contain NULL');
        END IF;
        IF EXISTS (SELECT 1 FROM unnest(p_dep_ords, p_dep_parents) d(o, p)
                    GROUP BY d.o, d.p HAVING count(*) > 1) THEN
            PERFORM hydra._invalid('depends_on', 'must not contain the same id twice');
        END IF;
        -- Parents are read without a lock (issue 9, item 4: a producer's open transaction
        -- must never make another tenant's settlement wait); a parent that finishes while
        -- this edge is uncommitted is caught by coordinate() through hydra.edge_check. A
        -- missing id that the sequence issued has finished successfully and been deleted.
        -- Set operations (joins), never "= ANY" of one big array per element of another: a
        -- call with many messages sharing many parents stays linear in its edges.
        SELECT coalesce(array_agg(m.id), '{}'), coalesce(array_agg(m.state), '{}')
          INTO v_parent_ids, v_parent_states
          FROM hydra.message m
         WHERE m.id = ANY (ARRAY(SELECT DISTINCT d.p FROM unnest(p_dep_parents) d(p)));
        SELECT min(d.p) INTO v_missing
          FROM (SELECT DISTINCT u.p FROM unnest(p_dep_parents) u(p)) d
          LEFT JOIN unnest(v_parent_ids) f(id) ON f.id = d.p
         WHERE f.id IS NULL
           AND (d.p <= 0 OR d.p > (SELECT CASE WHEN s.is_called THEN s.last_value
                                                ELSE s.last_value - 1 END
                                      FROM hydra.message_id_seq s));
        IF v_missing IS NOT NULL THEN
            RAISE EXCEPTION USING ERRCODE = '22023',
                MESSAGE = format('depends_on: unknown message id %s', v_missing);
        END IF;
    END IF;

    v_ids := ARRAY(SELECT pg_catalog.nextval('hydra.message_id_seq')
                     FROM generate_series(1, v_count));
    v_pending_ords := ARRAY(SELECT generate_series(1, v_count));

    LOOP
        v_tries := v_tries + 1;
        WITH input AS (
            SELECT o.ord::integer AS ord, v_ids[o.ord] AS id, o.payload,
                   coalesce(o.channel, '') AS channel,
                   coalesce(o.priority, -2147483648) AS prio, o.name, o.num_attempts,
                   o.lock_secs, o.factor, o.delay, o.cascade, o.max_processing
              FROM unnest(p_payloads, p_channels, p_priorities, p_names, p_num_attempts,
                          p_lock_secs, p_lock_secs_factor, p_delay_secs, p_cascade_failure,
                          p_max_processing_secs)
                   WITH ORDINALITY AS o(payload, channel, priority, name, num_attempts,
                                        lock_secs, factor, delay, cascade, max_processing, ord)
              JOIN unnest(v_pending_ords) p(ord) ON p.ord = o.ord
        ), deps AS (
            SELECT d.ord,
                   count(*) FILTER (WHERE ps.state IS NOT NULL AND ps.state <> 'failed')
                       AS unresolved,
                   array_agg(d.parent ORDER BY d.parent) FILTER (WHERE ps.state = 'failed')
                       AS failed
              FROM unnest(p_dep_ords, p_dep_parents) AS d(ord, parent)
              LEFT JOIN unnest(v_parent_ids, v_parent_states) AS ps(id, state)
                ON ps.id = d.parent
             GROUP BY d.ord
        ), limits AS (
            SELECT l.channel, l.max_size, hydra._capped_room(p_queue, l.channel) AS room,
                   CASE WHEN l.max_size IS NOT NULL
                        THEN hydra._admitted_count(p_queue, l.channel, l.max_size) END AS live
              FROM hydra.channel_limit l
             WHERE l.queue = p_queue
               -- An array, so that the limit rows are probed by key whatever the estimates.
               AND l.channel = ANY (ARRAY(SELECT DISTINCT i.channel FROM input i))
        ), judged AS (
            SELECT i.*, d.failed, s.room,
                   coalesce(d.unresolved, 0) AS unresolved,
                   CASE WHEN i.cascade AND d.failed IS NOT NULL THEN 'unmet'
                        WHEN s.live >= s.max_size THEN 'dropped'
                        WHEN coalesce(d.unresolved, 0) > 0 OR i.delay > 0
                             OR s.max_size IS NOT NULL THEN 'pending'
                        ELSE 'ready' END AS verdict
              FROM input i
              LEFT JOIN deps d ON d.ord = i.ord
              LEFT JOIN limits s ON s.channel = i.channel
        ), decided AS (
            -- A capped channel's messages beyond its room wait parked.
            SELECT j.*,
                   CASE WHEN j.verdict = 'ready' AND j.room IS NOT NULL
                             AND row_number() OVER (PARTITION BY j.channel, j.verdict
                                                    ORDER BY j.ord) > j.room
                        THEN 'parked' ELSE j.verdict END AS fate
              FROM judged j
        ), bases AS (
            SELECT v.channel, v.prio, v.base
              FROM (SELECT array_agg(g.channel) AS cs, array_agg(g.prio) AS ps
                      FROM (SELECT DISTINCT x.channel, x.prio FROM decided x
                             WHERE x.fate IN ('ready', 'parked')) g) pairs,
                   hydra._next_vtimes(p_queue, pairs.cs, pairs.ps) v
        ), ins AS (
            INSERT INTO hydra.message AS m (id, queue, channel, state, prio, vtime,
                num_attempts, deps_left, cascade_failure, lock_secs, lock_secs_factor,
                max_processing_secs, available_at, finished_at, name, last_error,
                failed_parents, payload)
            SELECT x.id, p_queue, x.channel,
                   (CASE x.fate WHEN 'unmet' THEN 'failed' WHEN 'dropped' THEN 'failed'
                                ELSE x.fate END)::hydra.message_state,
                   x.prio,
                   CASE WHEN x.fate IN ('ready', 'parked')
                        THEN b.base + row_number() OVER (PARTITION BY x.channel, x.prio,
                                                         x.fate IN ('ready', 'parked')
                                                         ORDER BY x.ord) - 1
                        ELSE 0 END,
                   x.num_attempts, x.unresolved, x.cascade, x.lock_secs, x.factor,
                   x.max_processing,
                   CASE WHEN x.fate = 'pending'
                        THEN now() + make_interval(secs => x.delay::double precision) END,
                   CASE WHEN x.fate IN ('unmet', 'dropped') THEN now() END,
                   x.name,
                   CASE x.fate WHEN 'unmet' THEN 'dependencies unmet'
                               WHEN 'dropped' THEN 'dropped: channel is full' END,
                   x.failed, x.payload
              FROM decided x
              LEFT JOIN bases b ON b.channel = x.channel AND b.prio = x.prio
             ORDER BY x.ord
            -- flows:begin
            ON CONFLICT (queue, channel, name)
               WHERE name IS NOT NULL AND attempt = 0 AND state IN ('pending', 'ready', 'parked')
               DO NOTHING
            -- flows:end
            RETURNING m.id, m.state, m.last_error
        )
        SELECT coalesce(array_agg(ins.id), '{}'),
               coalesce(array_agg(ins.id) FILTER (WHERE ins.last_error LIKE 'dropped%'), '{}'),
               coalesce(bool_or(ins.state = 'ready'), false)
          INTO v_inserted, v_dropped, v_any_ready
          FROM ins;

        IF v_inserted <> '{}' AND coalesce(array_length(p_dep_parents, 1), 0) > 0 THEN
            WITH edges AS (
                INSERT INTO hydra.dependency (child_id, parent_id, resolved, parent_succeeded)
                SELECT v_ids[d.ord], d.parent, ps.state IS NULL OR ps.state = 'failed',
                       CASE WHEN ps.state IS NULL THEN true
                            WHEN ps.state = 'failed' THEN false END
                  FROM unnest(p_dep_ords, p_dep_parents) AS d(ord, parent)
                  JOIN unnest(v_inserted) AS i(id) ON i.id = v_ids[d.ord]
                  LEFT JOIN unnest(v_parent_ids, v_parent_states) AS ps(id, state)
                    ON ps.id = d.parent
                RETURNING child_id, parent_id, resolved
            )
            INSERT INTO hydra.edge_check (child_id, parent_id)
            SELECT e.child_id, e.parent_id FROM edges e WHERE NOT e.resolved;
        END IF;
        IF v_any_ready THEN
            PERFORM hydra._wake_workers(p_queue);
        END IF;

        RETURN QUERY
            SELECT o.ord, CASE WHEN x.id IS NULL THEN 'enqueued' ELSE 'dropped' END, i.id
              FROM unnest(v_pending_ords) o(ord)
              JOIN unnest(v_inserted) i(id) ON i.id = v_ids[o.ord]
              LEFT JOIN unnest(v_dropped) x(id) ON x.id = i.id
             ORDER BY o.ord;

        -- Rows that met a de-duplication name report the existing message; if that one was
        -- dequeued meanwhile (it no longer blocks the name), they are inserted on the next turn.
        -- One look per name, in one snapshot (each row gets exactly one answer), each a probe
        -- of the name's index entry: never a read of every named message of the queue.
        v_pending_ords := ARRAY(SELECT o.ord FROM unnest(v_pending_ords) o(ord)
                                  LEFT JOIN unnest(v_inserted) i(id) ON i.id = v_ids[o.ord]
                                 WHERE i.id IS NULL);
        EXIT WHEN v_pending_ords = '{}';
        SELECT coalesce(array_agg(o.ord) FILTER (WHERE e.id IS NOT NULL), '{}'),
               coalesce(array_agg(e.id) FILTER (WHERE e.id IS NOT NULL), '{}'),
               coalesce(array_agg(o.ord) FILTER (WHERE e.id IS NULL), '{}')
          INTO v_dup_ords, v_dup_ids, v_pending_ords
          FROM unnest(v_pending_ords) o(ord)
          LEFT JOIN LATERAL (SELECT x.id FROM hydra.message x
                              WHERE x.queue = p_queue
                                AND x.channel = coalesce(p_channels[o.ord], '')
                                AND x.name = p_names[o.ord]
                                AND x.attempt = 0 AND x.state IN ('pending', 'ready', 'parked')
                              LIMIT 1) e ON true;
        RETURN QUERY
            SELECT d.ord, 'deduplicated'::text, d.id FROM unnest(v_dup_ords, v_dup_ids) d(ord, id);
        EXIT WHEN v_pending_ords = '{}';
        IF v_tries >= 5 THEN
            RAISE EXCEPTION USING ERRCODE = '40001',
                MESSAGE = 'enqueue: de-duplication name kept changing hands; retry';
        END IF;
    END LOOP;
END
$$;

CREATE OR REPLACE FUNCTION hydra.enqueue(
    payload             jsonb,
    queue               text     DEFAULT 'default',
    channel             text     DEFAULT NULL,
    priority            integer  DEFAULT NULL,
    name                text     DEFAULT NULL,
    num_attempts        integer  DEFAULT 1,
    lock_secs           numeric  DEFAULT 5,
    lock_secs_factor    numeric  DEFAULT 2,
    delay_secs          numeric  DEFAULT 0,
    depends_on          bigint[] DEFAULT NULL,
    cascade_failure     boolean  DEFAULT true,
    max_processing_secs numeric  DEFAULT 3600
)
RETURNS hydra.enqueue_result
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
SET jit = off
SET enable_sort = off
AS $$
#variable_conflict use_column
DECLARE
    v_row     hydra.enqueue_many_result;
    v_problem text;
    v_id      bigint;
    v_wake    boolean;
BEGIN
    -- Contract: inserts one message row (and its edges) or none; see _enqueue_rows for locks.
    -- (Few and simple statements here: PL/pgSQL prepares each expression again in every
    -- transaction, and most enqueues are a transaction of their own.)
    v_problem := coalesce(
        CASE WHEN enqueue.queue IS NULL THEN 'queue: must not be NULL'
             ELSE 'queue: ' || hydra._name_problem(enqueue.queue) END,
        hydra._message_problem(enqueue.payload, enqueue.channel, enqueue.priority,
            enqueue.name, enqueue.num_attempts, enqueue.lock_secs, enqueue.lock_secs_factor,
            enqueue.delay_secs, enqueue.cascade_failure, enqueue.max_processing_secs),
        -- The queue's payload limit: looked up only above 1024 bytes (_payload_problem).
        CASE WHEN pg_column_size(enqueue.payload) > 1024
                  OR pg_column_compression(enqueue.payload) IS NOT NULL
             THEN hydra._payload_problem(enqueue.queue, enqueue.payload) END);
    IF v_problem IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = v_problem;
    END IF;

    -- Fast path, the common case: no parents, no name, a channel without a policy. One
    -- statement (one snapshot, one executor start): it inserts nothing when the channel has a
    -- policy, and that case takes the general path below.
    IF (depends_on IS NULL OR cardinality(depends_on) = 0)
       -- flows:begin
       AND enqueue.name IS NULL
       -- flows:end
    THEN
        -- Ready now: the probes of _next_vtimes, inline (a nested call costs as much as the
        -- insert) and with one saving: a ready tail is at or after the head of the ready
        -- order, so only a channel with nothing ready waiting (or a parked leftover of a
        -- cleared cap) reads the head, to join the round being served.
        INSERT INTO hydra.message AS m (queue, channel, state, prio, vtime, num_attempts,
            cascade_failure, lock_secs, lock_secs_factor, max_processing_secs,
            available_at, payload)
        SELECT enqueue.queue, k.channel,
               CASE WHEN enqueue.delay_secs = 0 THEN 'ready'::hydra.message_state
                    ELSE 'pending' END, k.prio,
               CASE WHEN enqueue.delay_secs > 0 THEN 0
                    WHEN t.state = 'ready' THEN t.vtime + 1
                    ELSE greatest(coalesce(t.vtime + 1, 0),
                                  coalesce((SELECT h.vtime FROM hydra.message h
                                             WHERE h.queue = enqueue.queue AND h.state = 'ready'
                                               AND h.prio = k.prio
                                             ORDER BY h.vtime, h.id LIMIT 1), 0)) END,
               enqueue.num_attempts, enqueue.cascade_failure, enqueue.lock_secs,
               enqueue.lock_secs_factor, enqueue.max_processing_secs,
               CASE WHEN enqueue.delay_secs > 0
                    THEN now() + make_interval(secs => enqueue.delay_secs::float8) END,
               enqueue.payload
          FROM (SELECT coalesce(enqueue.channel, '') AS channel,
                       coalesce(enqueue.priority, -2147483648) AS prio) k
          LEFT JOIN LATERAL (SELECT x.vtime, x.state FROM hydra.message x
                              WHERE x.queue = enqueue.queue AND x.channel = k.channel
                                AND x.prio = k.prio AND x.state IN ('ready', 'parked')
                              ORDER BY x.vtime DESC LIMIT 1) t ON enqueue.delay_secs = 0
         WHERE NOT EXISTS (SELECT 1 FROM hydra.channel_limit l
                            WHERE l.queue = enqueue.queue AND l.channel = k.channel)
        RETURNING m.id,
                  m.state = 'ready' AND EXISTS (SELECT 1 FROM hydra.waiting_worker w
                                                 WHERE w.queue = m.queue)
             INTO v_id, v_wake;
        IF v_id IS NOT NULL THEN
            IF v_wake THEN
                PERFORM hydra._wake_workers(enqueue.queue);
            END IF;
            RETURN ROW('enqueued', v_id)::hydra.enqueue_result;
        END IF;
    END IF;

    SELECT r.* INTO v_row
      FROM hydra._enqueue_rows(enqueue.queue, ARRAY[enqueue.payload], ARRAY[enqueue.channel],
               ARRAY[enqueue.priority], ARRAY[enqueue.name], ARRAY[enqueue.num_attempts],
               ARRAY[enqueue.lock_secs], ARRAY[enqueue.lock_secs_factor],
               ARRAY[enqueue.delay_secs], ARRAY[enqueue.cascade_failure],
               ARRAY[enqueue.max_processing_secs],
               array_fill(1, ARRAY[coalesce(array_length(enqueue.depends_on, 1), 0)]),
               coalesce(enqueue.depends_on, '{}')) r;
    RETURN ROW(v_row.result, v_row.message_id)::hydra.enqueue_result;
END
$$;

COMMENT ON FUNCTION hydra.enqueue(jsonb, text, text, integer, text, integer, numeric, numeric,
                                  numeric, bigint[], boolean, numeric) IS
'Stores one message inside the caller''s transaction. Returns (result, message_id): result is
''enqueued'', ''deduplicated'' (a never-dequeued message with this name exists in the same queue
and channel; its id is returned) or ''dropped'' (the channel is at max_size). Bounds: num_attempts >= 1;
lock_secs and delay_secs 0 or 0.001 to 315360000 (ten years); max_processing_secs 0.001 to
315360000; lock_secs_factor 1 to 100; priority > -2147483648. Raises 22023 naming the argument
on bad input; nothing is written then.';

-- The JSON elements of an enqueue_many call that the plain batch path cannot take: anything
-- malformed (left to the precise checks of enqueue_many) and any key beyond the plain options
-- (a name or parents take the general path). The caller has checked that p_messages is an
-- array. One pass of plain operators: a jsonpath doing the same costs three times as much.
CREATE OR REPLACE FUNCTION hydra._needs_general_path(p_messages jsonb)
RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
RETURN (SELECT coalesce(bool_or(
            CASE WHEN pg_catalog.jsonb_typeof(e) <> 'object' OR NOT e ? 'payload' THEN true
                 ELSE e - '{payload,channel,priority,num_attempts,lock_secs,lock_secs_factor,'
                          'delay_secs,max_processing_secs,cascade_failure}'::text[] <> '{}'
                   OR pg_catalog.jsonb_typeof(e -> 'channel') NOT IN ('string', 'null')
                   OR pg_catalog.jsonb_typeof(e -> 'cascade_failure') NOT IN ('boolean', 'null')
                   OR pg_catalog.jsonb_typeof(e -> 'priority') NOT IN ('number', 'null')
                   OR pg_catalog.jsonb_typeof(e -> 'num_attempts') NOT IN ('number', 'null')
                   OR pg_catalog.jsonb_typeof(e -> 'lock_secs') NOT IN ('number', 'null')
                   OR pg_catalog.jsonb_typeof(e -> 'lock_secs_factor') NOT IN ('number', 'null')
                   OR pg_catalog.jsonb_typeof(e -> 'delay_secs') NOT IN ('number', 'null')
                   OR pg_catalog.jsonb_typeof(e -> 'max_processing_secs')
                      NOT IN ('number', 'null')
                 END), false)
          FROM pg_catalog.jsonb_array_elements(p_messages) e);

-- enqueue_many for the common batch: no names, no parents, a queue without channel policies.
-- One statement: unpack, check, place every message after its channel's tail (_next_vtimes:
-- one probe per distinct channel and priority, one head probe per priority) and insert.
-- Returns NULL when an element needs the general path after all (an integer option written
-- as 1.0), so that the caller's precise checks report it.
CREATE OR REPLACE FUNCTION hydra._enqueue_plain_batch(
    p_queue          text,
    p_messages       jsonb,
    p_channel        text,
    p_priority       integer,
    p_num_attempts   integer,
    p_lock_secs      numeric,
    p_factor         numeric,
    p_delay          numeric,
    p_cascade        boolean,
    p_max_processing numeric
)
RETURNS bigint[]
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
SET jit = off
SET enable_sort = off
AS $$
DECLARE
    v_ids       bigint[];
    v_any_ready boolean;
    v_problem   text;
    v_general   boolean;
BEGIN
    -- Contract: inserts every message or none, ids in element order.
    WITH raw AS MATERIALIZED (
        SELECT r.ord::integer AS ord, pg_catalog.nextval('hydra.message_id_seq') AS id,
               r.payload,
               CASE WHEN p_channel IS NULL OR p_messages -> (r.ord::integer - 1) ? 'channel'
                    THEN r.channel ELSE p_channel END AS channel,
               CASE WHEN p_priority IS NULL OR p_messages -> (r.ord::integer - 1) ? 'priority'
                    THEN r.priority ELSE p_priority::text END AS priority,
               coalesce(r.num_attempts, p_num_attempts::text) AS num_attempts,
               coalesce(r.lock_secs, p_lock_secs) AS lock_secs,
               coalesce(r.lock_secs_factor, p_factor) AS factor,
               coalesce(r.delay_secs, p_delay) AS delay,
               coalesce(r.cascade_failure, p_cascade) AS cascade,
               coalesce(r.max_processing_secs, p_max_processing) AS max_processing
          FROM ROWS FROM (jsonb_to_recordset(p_messages) AS (payload jsonb, channel text,
                   priority text, num_attempts text, lock_secs numeric,
                   lock_secs_factor numeric, delay_secs numeric, cascade_failure boolean,
                   max_processing_secs numeric)) WITH ORDINALITY
               AS r(payload, channel, priority, num_attempts, lock_secs, lock_secs_factor,
                    delay_secs, cascade_failure, max_processing_secs, ord)
    ), typed AS MATERIALIZED (
        SELECT w.ord, w.id, w.payload, w.channel, w.lock_secs, w.factor, w.delay, w.cascade,
               w.max_processing, w.priority::integer AS priority,
               w.num_attempts::integer AS num_attempts,
               coalesce(w.channel, '') AS c,
               coalesce(w.priority::integer, -2147483648) AS p,
               w.delay = 0 AS ready
          FROM raw w
         WHERE NOT EXISTS (SELECT 1 FROM raw x
                            -- Nine digits always fit an integer; anything else (1.0, or
                            -- 99999999999) is named by the general path's checks.
                            WHERE x.priority !~ '^-?[0-9]{1,9}$'
                               OR x.num_attempts !~ '^-?[0-9]{1,9}$')
    ), checked AS MATERIALIZED (
        SELECT k.*, coalesce(hydra._message_problem(k.payload, k.channel, k.priority, NULL,
                                 k.num_attempts, k.lock_secs, k.factor, k.delay, k.cascade,
                                 k.max_processing),
                             -- The payload limit, looked up only above 1024 bytes.
                             CASE WHEN pg_column_size(k.payload) > 1024
                                       OR pg_column_compression(k.payload) IS NOT NULL
                                  THEN hydra._payload_problem(p_queue, k.payload) END)
                   AS problem
          FROM typed k
    ), bases AS (
        SELECT v.channel, v.prio, v.base
          FROM (SELECT array_agg(g.c) AS cs, array_agg(g.p) AS ps
                  FROM (SELECT DISTINCT k.c, k.p FROM checked k WHERE k.ready) g) pairs,
               hydra._next_vtimes(p_queue, pairs.cs, pairs.ps) v
    ), ins AS (
        INSERT INTO hydra.message (id, queue, channel, state, prio, vtime, num_attempts,
            cascade_failure, lock_secs, lock_secs_factor, max_processing_secs, available_at,
            payload)
        SELECT k.id, p_queue, k.c,
               CASE WHEN k.ready THEN 'ready'::hydra.message_state ELSE 'pending' END, k.p,
               CASE WHEN k.ready
                    THEN b.base
                         + row_number() OVER (PARTITION BY k.ready, k.c, k.p ORDER BY k.ord) - 1
                    ELSE 0 END,
               k.num_attempts, k.cascade, k.lock_secs, k.factor, k.max_processing,
               CASE WHEN NOT k.ready
                    THEN now() + make_interval(secs => k.delay::double precision) END,
               k.payload
          FROM checked k
          LEFT JOIN bases b ON b.channel = k.c AND b.prio = k.p
         WHERE NOT EXISTS (SELECT 1 FROM checked x WHERE x.problem IS NOT NULL)
    )
    SELECT array_agg(k.id ORDER BY k.ord), bool_or(k.ready),
           (array_agg(k.problem ORDER BY k.ord) FILTER (WHERE k.problem IS NOT NULL))[1],
           count(*) = 0
      INTO v_ids, v_any_ready, v_problem, v_general
      FROM checked k;
    IF v_problem IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = v_problem;
    END IF;
    IF v_general AND jsonb_array_length(p_messages) > 0 THEN
        RETURN NULL;
    END IF;
    IF v_any_ready THEN
        PERFORM hydra._wake_workers(p_queue);
    END IF;
    RETURN coalesce(v_ids, '{}');
END
$$;

CREATE OR REPLACE FUNCTION hydra.enqueue_many(
    messages            jsonb,
    queue               text     DEFAULT 'default',
    channel             text     DEFAULT NULL,
    priority            integer  DEFAULT NULL,
    name                text     DEFAULT NULL,
    num_attempts        integer  DEFAULT 1,
    lock_secs           numeric  DEFAULT 5,
    lock_secs_factor    numeric  DEFAULT 2,
    delay_secs          numeric  DEFAULT 0,
    depends_on          bigint[] DEFAULT NULL,
    cascade_failure     boolean  DEFAULT true,
    max_processing_secs numeric  DEFAULT 3600
)
RETURNS SETOF hydra.enqueue_many_result
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
SET jit = off
AS $$
DECLARE
    v_bad        text;
    v_payloads   jsonb[];
    v_channels   text[];
    v_priorities integer[];
    v_names      text[];
    v_attempts   integer[];
    v_lock       numeric[];
    v_factor     numeric[];
    v_delay      numeric[];
    v_cascade    boolean[];
    v_maxproc    numeric[];
    v_dep_ords   integer[];
    v_dep_ids    bigint[];
    v_plain_ids  bigint[];
BEGIN
    -- A plain batch takes _enqueue_plain_batch. Otherwise: unpacks the JSON array in one pass
    -- (a key present in an element overrides the call's default), after checking every key
    -- and the JSON type of its value, for the general path.
    IF messages IS NULL OR jsonb_typeof(messages) <> 'array' THEN
        PERFORM hydra._invalid('messages', 'must be a JSON array of objects');
    END IF;
    IF enqueue_many.name IS NULL
       AND (enqueue_many.depends_on IS NULL OR cardinality(enqueue_many.depends_on) = 0)
       AND NOT hydra._needs_general_path(messages)
       AND NOT EXISTS (SELECT 1 FROM hydra.channel_limit l WHERE l.queue = enqueue_many.queue)
    THEN
        PERFORM hydra._check_name('queue', enqueue_many.queue, false);
        v_plain_ids := hydra._enqueue_plain_batch(enqueue_many.queue, messages,
            enqueue_many.channel, enqueue_many.priority, enqueue_many.num_attempts,
            enqueue_many.lock_secs, enqueue_many.lock_secs_factor, enqueue_many.delay_secs,
            enqueue_many.cascade_failure, enqueue_many.max_processing_secs);
        IF v_plain_ids IS NOT NULL THEN
            RETURN QUERY SELECT o.ord::integer, 'enqueued'::text, o.id
                           FROM unnest(v_plain_ids) WITH ORDINALITY o(id, ord);
            RETURN;
        END IF;
    END IF;
    SELECT format('messages[%s]: %s', e.ord,
                  CASE WHEN jsonb_typeof(e.elem) <> 'object' THEN 'must be an object'
                       ELSE 'has no "payload" key' END)
      INTO v_bad
      FROM jsonb_array_elements(messages) WITH ORDINALITY e(elem, ord)
     WHERE jsonb_typeof(e.elem) <> 'object' OR NOT e.elem ? 'payload'
     LIMIT 1;
    IF v_bad IS NULL THEN
        -- An integer must also fit its type (an int4; an id a bigint): never a cast error.
        SELECT format('messages[%s].%s: %s', e.ord, k.key,
                      CASE WHEN t.kind IS NULL THEN 'unknown key'
                           WHEN t.kind = 'an integer' AND jsonb_typeof(k.value) = 'number'
                                AND k.value::text ~ '^-?[0-9]+$'
                                THEN 'must be between -2147483648 and 2147483647'
                           ELSE 'must be ' || t.kind END)
          INTO v_bad
          FROM jsonb_array_elements(messages) WITH ORDINALITY e(elem, ord),
               jsonb_each(e.elem) k(key, value)
          LEFT JOIN (VALUES ('payload', 'any JSON'), ('channel', 'a string'),
                            ('name', 'a string'), ('priority', 'an integer'),
                            ('num_attempts', 'an integer'), ('lock_secs', 'a number'),
                            ('lock_secs_factor', 'a number'), ('delay_secs', 'a number'),
                            ('max_processing_secs', 'a number'),
                            ('cascade_failure', 'a boolean'),
                            ('depends_on', 'an array of integers')) t(key, kind)
            ON t.key = k.key
         WHERE t.kind IS NULL
            OR jsonb_typeof(k.value) <> 'null' AND CASE t.kind
                 WHEN 'a string' THEN jsonb_typeof(k.value) <> 'string'
                 WHEN 'an integer' THEN CASE WHEN jsonb_typeof(k.value) <> 'number'
                                                  OR k.value::text !~ '^-?[0-9]{1,10}$'
                                             THEN true
                                             ELSE k.value::text::bigint
                                                  NOT BETWEEN -2147483648 AND 2147483647 END
                 WHEN 'a number' THEN jsonb_typeof(k.value) <> 'number'
                 WHEN 'a boolean' THEN jsonb_typeof(k.value) <> 'boolean'
                 WHEN 'an array of integers'
                      THEN jsonb_typeof(k.value) <> 'array'
                           OR EXISTS (SELECT 1 FROM jsonb_array_elements(k.value) d
                                       WHERE CASE WHEN jsonb_typeof(d) <> 'number'
                                                    OR d::text !~ '^-?[0-9]{1,19}$' THEN true
                                                  ELSE d::text::numeric NOT BETWEEN
                                                       -9223372036854775808
                                                       AND 9223372036854775807 END)
                 ELSE false END
         LIMIT 1;
    END IF;
    IF v_bad IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = v_bad;
    END IF;

    SELECT array_agg(x.payload ORDER BY e.ord),
           array_agg(CASE WHEN e.elem ? 'channel' THEN x.channel ELSE enqueue_many.channel END
                     ORDER BY e.ord),
           array_agg(CASE WHEN e.elem ? 'priority' THEN x.priority ELSE enqueue_many.priority END
                     ORDER BY e.ord),
           array_agg(CASE WHEN e.elem ? 'name' THEN x.name ELSE enqueue_many.name END
                     ORDER BY e.ord),
           array_agg(coalesce(x.num_attempts, enqueue_many.num_attempts) ORDER BY e.ord),
           array_agg(coalesce(x.lock_secs, enqueue_many.lock_secs) ORDER BY e.ord),
           array_agg(coalesce(x.lock_secs_factor, enqueue_many.lock_secs_factor) ORDER BY e.ord),
           array_agg(coalesce(x.delay_secs, enqueue_many.delay_secs) ORDER BY e.ord),
           array_agg(coalesce(x.cascade_failure, enqueue_many.cascade_failure) ORDER BY e.ord),
           array_agg(coalesce(x.max_processing_secs, enqueue_many.max_processing_secs)
                     ORDER BY e.ord)
      INTO v_payloads, v_channels, v_priorities, v_names, v_attempts, v_lock, v_factor,
           v_delay, v_cascade, v_maxproc
      FROM jsonb_array_elements(messages) WITH ORDINALITY e(elem, ord),
           jsonb_to_record(e.elem) AS x(payload jsonb, channel text, priority integer,
               name text, num_attempts integer, lock_secs numeric, lock_secs_factor numeric,
               delay_secs numeric, cascade_failure boolean, max_processing_secs numeric);

    -- Parents, flattened into (position, parent id) pairs.
    SELECT coalesce(array_agg(e.ord::integer ORDER BY e.ord, d.parent), '{}'),
           coalesce(array_agg(d.parent ORDER BY e.ord, d.parent), '{}')
      INTO v_dep_ords, v_dep_ids
      FROM jsonb_array_elements(messages) WITH ORDINALITY e(elem, ord),
           unnest(CASE WHEN e.elem ? 'depends_on'
                       THEN ARRAY(SELECT j::bigint
                                    FROM jsonb_array_elements_text(
                                             CASE jsonb_typeof(e.elem -> 'depends_on')
                                                  WHEN 'array' THEN e.elem -> 'depends_on'
                                                  ELSE '[]' END) j)
                       ELSE enqueue_many.depends_on END) AS d(parent);

    RETURN QUERY
    SELECT r.*
      FROM hydra._enqueue_rows(enqueue_many.queue, v_payloads, v_channels, v_priorities,
               v_names, v_attempts, v_lock, v_factor, v_delay, v_cascade, v_maxproc,
               v_dep_ords, v_dep_ids) r
     ORDER BY r.ord;
END
$$;

COMMENT ON FUNCTION hydra.enqueue_many(jsonb, text, text, integer, text, integer, numeric,
                                       numeric, numeric, bigint[], boolean, numeric) IS
'Stores many messages in one call. messages is a JSON array of objects with "payload" and any
of the options of hydra.enqueue ("channel", "priority", "name", "num_attempts", "lock_secs",
"lock_secs_factor", "delay_secs", "depends_on", "cascade_failure", "max_processing_secs"); a
key present overrides the default given to this call (bounds as for hydra.enqueue; integers
must fit their type, depends_on ids a bigint). Returns (ord, result, message_id) per element,
ord being its 1-based position.';
