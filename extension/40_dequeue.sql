-- Dequeue: leases ready messages in the fair order (priority, then virtual time, then id).
-- Locks: ready message rows with FOR NO KEY UPDATE SKIP LOCKED (never waits on a message; does
-- not conflict with coordinate()'s FOR KEY SHARE on a parent), then, only for channels with a
-- concurrency cap, their hydra.channel_limit rows in (queue, channel) order.
-- States: ready -> processing; ready -> parked when the channel is at its cap.

-- A queue none of whose channels is capped: one ordered index scan and one update.
-- Leases ready rows the caller has locked, none of which needs a new concurrency slot;
-- returns them in the fair order.
CREATE OR REPLACE FUNCTION hydra._lease(p_ids bigint[])
RETURNS SETOF hydra.message
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
SET jit = off
AS $$
BEGIN
    -- ready -> processing with a fresh token and deadline.
    RETURN QUERY
    WITH leased AS (
        UPDATE hydra.message m
           SET state = 'processing',
               attempt = m.attempt + 1,
               lease_token = gen_random_uuid(),
               -- Clamped to the bounds: a row stored before them (1e-400) must not raise
               -- here, where it would fail every dequeue of the queue. Two comparisons.
               lease_expires_at = now() + make_interval(
                   secs => greatest(least(m.max_processing_secs, 315360000), 0.001)::float8)
         WHERE m.id = ANY (p_ids)
        RETURNING m.*
    )
    SELECT l.* FROM leased l ORDER BY l.prio DESC, l.vtime, l.id;
END
$$;

-- A queue none of whose channels is capped: one ordered index scan and one update.
CREATE OR REPLACE FUNCTION hydra._dequeue_uncapped(p_queue text, p_batch integer)
RETURNS SETOF hydra.message
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
SET jit = off
AS $$
BEGIN
    -- Leases up to p_batch ready messages of p_queue, returned in the fair order.
    RETURN QUERY
    SELECT * FROM hydra._lease(ARRAY(
        SELECT c.id FROM hydra.message c
         WHERE c.queue = p_queue AND c.state = 'ready'
         ORDER BY c.prio DESC, c.vtime, c.id
         LIMIT p_batch
           FOR NO KEY UPDATE SKIP LOCKED));
END
$$;

-- One turn of a capped dequeue over locked candidates (in fair order): candidates that hold
-- their slot or sit in an uncapped channel are admitted; the others take a free slot under
-- their channel's limit row (SKIP LOCKED: a busy channel is left alone) or are parked.
-- Leases at most p_left of them.
CREATE OR REPLACE FUNCTION hydra._admit_or_park(p_queue text, p_ids bigint[], p_channels text[],
                                     p_epochs bigint[], p_left integer)
RETURNS SETOF hydra.message
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
SET jit = off
AS $$
DECLARE
    v_lchan  text[];
    v_lfree  integer[];
    v_lepoch bigint[];
BEGIN
    -- Limit rows of the channels some candidate needs a slot in (one that holds no slot of
    -- the channel's current epoch): per distinct channel, one probe of its limit row.
    SELECT coalesce(array_agg(l.channel), '{}'),
           coalesce(array_agg(l.max_concurrency - l.in_flight), '{}'),
           coalesce(array_agg(l.epoch), '{}')
      INTO v_lchan, v_lfree, v_lepoch
      FROM (SELECT u.c, bool_or(u.e IS NULL) AS unheld, min(u.e) AS lo, max(u.e) AS hi
              FROM unnest(p_channels, p_epochs) u(c, e)
             GROUP BY u.c) g
     CROSS JOIN LATERAL (SELECT cl.channel, cl.max_concurrency, cl.in_flight, cl.epoch
                           FROM hydra.channel_limit cl
                          WHERE cl.queue = p_queue AND cl.channel = g.c
                            AND cl.max_concurrency IS NOT NULL
                            AND (g.unheld OR g.lo <> cl.epoch OR g.hi <> cl.epoch)
                            FOR NO KEY UPDATE SKIP LOCKED) l;

    RETURN QUERY
    WITH cand AS (
        -- Whether each candidate's channel has a cap (its limit row may be busy: then we did
        -- not get it above). One probe per candidate (LIMIT 1 keeps it a probe).
        SELECT u.id, u.channel, u.ord, k.epoch IS NOT NULL AS capped,
               coalesce(u.epoch = k.epoch, false) AS holds
          FROM unnest(p_ids, p_channels, p_epochs) WITH ORDINALITY u(id, channel, epoch, ord)
          LEFT JOIN LATERAL (SELECT cl.epoch FROM hydra.channel_limit cl
                              WHERE cl.queue = p_queue AND cl.channel = u.channel
                                AND cl.max_concurrency IS NOT NULL
                              LIMIT 1) k ON true
    ), lim AS (
        SELECT u.channel, u.free, u.epoch
          FROM unnest(v_lchan, v_lfree, v_lepoch) u(channel, free, epoch)
    ), judged AS (
        SELECT c.id, c.channel, c.ord, l.epoch,
               (l.channel IS NOT NULL AND NOT c.holds) AS takes_slot,
               CASE WHEN c.holds OR NOT c.capped THEN 'admit'
                    WHEN l.channel IS NULL THEN 'busy'
                    WHEN row_number() OVER (PARTITION BY c.channel, c.holds
                                            ORDER BY c.ord) <= l.free THEN 'admit'
                    ELSE 'park' END AS verdict
          FROM cand c
          LEFT JOIN lim l ON l.channel = c.channel
    ), taken AS (
        SELECT j.* FROM (SELECT j.*, row_number() OVER (ORDER BY j.ord) AS n
                           FROM judged j WHERE j.verdict = 'admit') j
         WHERE j.n <= p_left
    ), slots AS (
        UPDATE hydra.channel_limit cl
           SET in_flight = cl.in_flight + s.n
          FROM (SELECT t.channel, count(*)::integer AS n FROM taken t
                 WHERE t.takes_slot GROUP BY t.channel) s
         WHERE cl.queue = p_queue AND cl.channel = s.channel
    ), parked AS (
        UPDATE hydra.message m
           SET state = 'parked'
         WHERE m.id = ANY (ARRAY(SELECT j.id FROM judged j WHERE j.verdict = 'park'))
    ), leased AS (
        UPDATE hydra.message m
           SET state = 'processing',
               attempt = m.attempt + 1,
               slot_epoch = CASE WHEN t.takes_slot THEN t.epoch ELSE m.slot_epoch END,
               lease_token = gen_random_uuid(),
               lease_expires_at = now() + make_interval(   -- clamped: see _lease
                   secs => greatest(least(m.max_processing_secs, 315360000), 0.001)::float8)
          FROM taken t
         WHERE m.id = t.id
        RETURNING m.*
    )
    SELECT l.* FROM leased l ORDER BY l.prio DESC, l.vtime, l.id;
END
$$;

-- A queue with capped channels: admits up to each cap and parks the excess out of the ready
-- order (a slot release moves it back), so later dequeues never scan it again. A channel whose
-- limit row another session holds is skipped for this call, so a dequeue never waits for a
-- lock: it cannot take part in a deadlock. Each turn looks further down the ready order.
CREATE OR REPLACE FUNCTION hydra._dequeue_capped(p_queue text, p_batch integer)
RETURNS SETOF hydra.message
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
SET jit = off
AS $$
DECLARE
    v_left     integer := p_batch;
    v_fetch    integer := p_batch;
    v_turn     integer := 0;
    v_seen     bigint[] := '{}'::bigint[];
    v_ids      bigint[];
    v_channels text[];
    v_epochs   bigint[];
    v_got      integer;
BEGIN
    -- Locks: candidates and limit rows, both with SKIP LOCKED.
    LOOP
        v_turn := v_turn + 1;
        SELECT array_agg(c.id ORDER BY c.prio DESC, c.vtime, c.id),
               array_agg(c.channel ORDER BY c.prio DESC, c.vtime, c.id),
               array_agg(c.slot_epoch ORDER BY c.prio DESC, c.vtime, c.id)
          INTO v_ids, v_channels, v_epochs
          FROM (SELECT m.id, m.channel, m.slot_epoch, m.prio, m.vtime
                  FROM hydra.message m
                 WHERE m.queue = p_queue AND m.state = 'ready' AND m.id <> ALL (v_seen)
                 ORDER BY m.prio DESC, m.vtime, m.id
                 LIMIT v_fetch
                   FOR NO KEY UPDATE SKIP LOCKED) c;
        EXIT WHEN v_ids IS NULL;
        -- Rows looked at stay locked by us until commit: never pick them again.
        v_seen := v_seen || v_ids;

        -- The common case under load: every candidate already holds its slot (a release
        -- reserved it) or is in an uncapped channel: lease them all, no limit row touched.
        -- (One limit-row probe per candidate, LIMIT 1 keeping each a probe: never a scan
        -- of every capped channel of the queue.)
        IF NOT EXISTS (SELECT 1 FROM unnest(v_channels, v_epochs) u(c, e)
                         CROSS JOIN LATERAL (SELECT cl.epoch FROM hydra.channel_limit cl
                                              WHERE cl.queue = p_queue AND cl.channel = u.c
                                                AND cl.max_concurrency IS NOT NULL
                                              LIMIT 1) cl
                        WHERE u.e IS DISTINCT FROM cl.epoch) THEN
            RETURN QUERY SELECT * FROM hydra._lease(v_ids[1:v_left]);
        ELSE
            RETURN QUERY SELECT * FROM hydra._admit_or_park(p_queue, v_ids, v_channels,
                                                           v_epochs, v_left);
        END IF;
        GET DIAGNOSTICS v_got = ROW_COUNT;
        v_left := v_left - v_got;
        -- Stop when full, when the ready order ran dry, or after a bounded search.
        EXIT WHEN v_left <= 0 OR cardinality(v_ids) < v_fetch OR v_turn >= 6;
        v_fetch := least(v_fetch * 4, 1000);
    END LOOP;
END
$$;

CREATE OR REPLACE FUNCTION hydra.dequeue(
    queue  text    DEFAULT 'default',
    batch  integer DEFAULT 1,
    queues text[]  DEFAULT NULL
)
RETURNS SETOF hydra.leased_message
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
SET jit = off
AS $$
DECLARE
    v_queues text[] := coalesce(dequeue.queues, ARRAY[dequeue.queue]);
    v_left   integer := dequeue.batch;
    v_start  integer;
    v_n      integer;
    v_q      text;
    v_got    integer;
    v_capped boolean;
BEGIN
    -- Contract: see the file header. With several queues, each call starts at a random one
    -- so that no queue starves the others; within a queue the order is the fair order.
    IF v_left IS NULL OR v_left < 1 OR v_left > 10000 THEN
        PERFORM hydra._invalid('batch', 'must be between 1 and 10000');
    END IF;
    v_n := coalesce(array_length(v_queues, 1), 0);
    IF v_n = 0 THEN
        PERFORM hydra._invalid('queues', 'must name at least one queue');
    END IF;
    FOR v_i IN 1 .. v_n LOOP
        PERFORM hydra._check_name('queue', v_queues[v_i], false);
    END LOOP;

    v_start := CASE WHEN v_n = 1 THEN 0 ELSE floor(random() * v_n)::integer END;
    FOR v_i IN 0 .. v_n - 1 LOOP
        v_q := v_queues[(v_start + v_i) % v_n + 1];
        -- Only queues with a capped channel pay for the limit bookkeeping.
        v_capped := EXISTS (SELECT 1 FROM hydra.channel_limit l
                             WHERE l.queue = v_q AND l.max_concurrency IS NOT NULL);
        RETURN QUERY
            SELECT m.id, m.queue, NULLIF(m.channel, ''), m.payload, NULLIF(m.prio, -2147483648),
                   m.name, m.attempt, m.num_attempts, m.lease_token, m.lease_expires_at,
                   m.enqueued_at, coalesce(m.failed_parents, '{}')
              FROM (SELECT * FROM hydra._dequeue_capped(v_q, v_left) WHERE v_capped
                    UNION ALL
                    SELECT * FROM hydra._dequeue_uncapped(v_q, v_left) WHERE NOT v_capped) m;
        GET DIAGNOSTICS v_got = ROW_COUNT;
        v_left := v_left - v_got;
        EXIT WHEN v_left <= 0;
    END LOOP;
END
$$;

COMMENT ON FUNCTION hydra.dequeue(text, integer, text[]) IS
'Leases up to batch ready messages of queue (or of queues, when given) in the fair order:
higher priority first, then round robin across channels, then FIFO. Each row carries a
lease_token that hydra.complete / hydra.fail / hydra.heartbeat must present, and
lease_expires_at (now + max_processing_secs). Never waits on a lock held by another worker.';
