-- Channel policies: max_concurrency (slots, enforced by dequeue) and max_size (admission,
-- enforced when a pending message is released). Policies are transactional and take effect
-- for every dequeue that starts after the change commits.
-- Locks: when the channel becomes capped, its ready rows first (waiting for dequeuers that
-- hold them), then the limit row; message rows after that only with SKIP LOCKED. This is
-- the global order (message rows, then limit rows). Run one policy change per transaction.

-- Moves parked messages of a channel back to ready: all of them (p_limit NULL, holding no
-- slot), or those among the channel's best p_limit waiting for a slot of epoch p_epoch, which
-- they take. Ready messages holding no such slot wait for one too: a parked message never
-- takes a free slot ahead of an older or more urgent ready one (issue 9, item 5), which
-- keeps the channel's order (priority, then FIFO); such a ready message gets its slot from
-- the dequeue that leases it.
CREATE OR REPLACE FUNCTION hydra._unpark(p_queue text, p_channel text, p_limit integer, p_epoch bigint)
RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
SET jit = off
AS $$
DECLARE
    v_count integer;
BEGIN
    -- Best parked first (priority, then fair order), skipping rows others hold.
    UPDATE hydra.message m SET state = 'ready', slot_epoch = p_epoch
     WHERE m.id = ANY (ARRAY(
               SELECT p.id FROM hydra.message p
                WHERE p.queue = p_queue AND p.channel = p_channel AND p.state = 'parked'
                  AND (p_limit IS NULL
                       OR p.id = ANY (ARRAY(
                              SELECT w.id FROM hydra.message w
                               WHERE w.queue = p_queue AND w.channel = p_channel
                                 AND w.state IN ('ready', 'parked')
                                 AND w.slot_epoch IS DISTINCT FROM p_epoch
                               ORDER BY w.prio DESC, w.vtime, w.id
                               LIMIT p_limit)))
                ORDER BY p.prio DESC, p.vtime, p.id
                LIMIT p_limit
                  FOR NO KEY UPDATE SKIP LOCKED));
    GET DIAGNOSTICS v_count = ROW_COUNT;
    IF v_count > 0 THEN
        PERFORM hydra._wake_workers(p_queue);
    END IF;
    RETURN v_count;
END
$$;

CREATE OR REPLACE FUNCTION hydra.channel_policy_set(
    channel         text,
    max_concurrency integer DEFAULT NULL,
    max_size        integer DEFAULT NULL,
    queue           text    DEFAULT 'default'
)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
SET jit = off
AS $$
#variable_conflict use_variable
DECLARE
    v_channel  text := coalesce(channel_policy_set.channel, '');
    v_queue    text := channel_policy_set.queue;
    v_old      hydra.channel_limit;
    v_epoch    bigint;
    v_inflight integer := 0;
    v_row      hydra.channel_limit;
BEGIN
    -- Sets the whole policy of one channel (NULL = unlimited for that limit).
    PERFORM hydra._check_name('queue', v_queue, false);
    PERFORM hydra._check_name('channel', channel_policy_set.channel, true);
    IF max_concurrency < 0 THEN
        PERFORM hydra._invalid('max_concurrency', 'must be 0 or more (0 pauses the channel)');
    END IF;
    IF max_size < 0 THEN
        PERFORM hydra._invalid('max_size', 'must be 0 or more');
    END IF;

    -- A channel becoming capped: dequeues that started before this commits did not see the
    -- cap. Wait for those holding its ready rows first, before taking the limit row (a
    -- session holding a limit row never waits for a message row: that is the lock order).
    SELECT * INTO v_old FROM hydra.channel_limit l
     WHERE l.queue = v_queue AND l.channel = v_channel;
    IF max_concurrency IS NOT NULL AND v_old.max_concurrency IS NULL THEN
        PERFORM 1 FROM hydra.message m
         WHERE m.queue = v_queue AND m.channel = v_channel AND m.state = 'ready'
         ORDER BY m.id FOR UPDATE;
    END IF;

    -- Then the limit row: policy changes of one channel run one after the other, and a
    -- concurrent clear cannot make the decision below stale.
    SELECT * INTO v_old FROM hydra.channel_limit l
     WHERE l.queue = v_queue AND l.channel = v_channel
       FOR NO KEY UPDATE;
    v_epoch := v_old.epoch;

    IF max_concurrency IS NOT NULL AND v_old.max_concurrency IS NULL THEN
        -- The channel becomes capped, under a new slot epoch: give slots to what is
        -- processing. Rows being settled right now are skipped: they are leaving, and their
        -- stale epoch keeps them from giving back a slot they never took.
        v_epoch := pg_catalog.nextval('hydra.slot_epoch_seq');
        WITH marked AS (
            UPDATE hydra.message m SET slot_epoch = v_epoch
             WHERE m.id = ANY (ARRAY(
                       SELECT p.id FROM hydra.message p
                        WHERE p.queue = v_queue AND p.channel = v_channel
                          AND p.state = 'processing'
                          FOR NO KEY UPDATE SKIP LOCKED))
            RETURNING 1
        )
        SELECT count(*) INTO v_inflight FROM marked;
    END IF;

    -- in_flight and epoch are only written when counted above; otherwise the row keeps the
    -- values dequeues and releases maintain.
    INSERT INTO hydra.channel_limit AS l
           (queue, channel, max_concurrency, max_size, in_flight, epoch)
    VALUES (v_queue, v_channel, max_concurrency, max_size, v_inflight,
            coalesce(v_epoch, pg_catalog.nextval('hydra.slot_epoch_seq')))
    ON CONFLICT ON CONSTRAINT channel_limit_pkey DO UPDATE
       SET max_concurrency = EXCLUDED.max_concurrency,
           max_size = EXCLUDED.max_size,
           in_flight = CASE WHEN l.max_concurrency IS NULL THEN EXCLUDED.in_flight
                            ELSE l.in_flight END,
           epoch = CASE WHEN l.max_concurrency IS NULL THEN EXCLUDED.epoch ELSE l.epoch END
    RETURNING l.* INTO v_row;

    IF max_concurrency IS NULL THEN
        PERFORM hydra._unpark(v_queue, v_channel, NULL, NULL);
    ELSIF max_concurrency < v_row.in_flight THEN
        -- A lowered cap: ready messages holding slots compete for the new ones again.
        WITH released AS (
            UPDATE hydra.message m SET slot_epoch = NULL
             WHERE m.id = ANY (ARRAY(
                       SELECT r.id FROM hydra.message r
                        WHERE r.queue = v_queue AND r.channel = v_channel
                          AND r.state = 'ready' AND r.slot_epoch = v_row.epoch
                          FOR NO KEY UPDATE SKIP LOCKED))
            RETURNING 1
        )
        UPDATE hydra.channel_limit l
           SET in_flight = greatest(l.in_flight - (SELECT count(*) FROM released), 0)
         WHERE l.queue = v_queue AND l.channel = v_channel;
    ELSIF max_concurrency > v_row.in_flight THEN
        -- A raised cap: hand the new slots to parked messages at once.
        UPDATE hydra.channel_limit l
           SET in_flight = l.in_flight
               + hydra._unpark(v_queue, v_channel, max_concurrency - v_row.in_flight,
                               v_row.epoch)
         WHERE l.queue = v_queue AND l.channel = v_channel;
    END IF;
END
$$;

COMMENT ON FUNCTION hydra.channel_policy_set(text, integer, integer, text) IS
'Sets the policy of a channel (NULL channel = the queue''s default channel): max_concurrency =
at most n of its messages processing at once across all workers (0 pauses the channel);
max_size = at most n admitted messages (ready + processing + locked); a message that would
exceed it is dropped. NULL means unlimited. Replaces any previous policy of the channel.';

CREATE OR REPLACE FUNCTION hydra.channel_policy_clear(channel text, queue text DEFAULT 'default')
RETURNS boolean
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
SET jit = off
AS $$
#variable_conflict use_variable
DECLARE
    v_channel text := coalesce(channel_policy_clear.channel, '');
    v_queue   text := channel_policy_clear.queue;
BEGIN
    -- Removes the policy (unlimited again) and releases every parked message.
    PERFORM hydra._check_name('queue', v_queue, false);
    PERFORM hydra._check_name('channel', channel_policy_clear.channel, true);
    DELETE FROM hydra.channel_limit l WHERE l.queue = v_queue AND l.channel = v_channel;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    PERFORM hydra._unpark(v_queue, v_channel, NULL, NULL);
    RETURN true;
END
$$;

COMMENT ON FUNCTION hydra.channel_policy_clear(text, text) IS
'Removes the policy of a channel: it is unlimited again. Returns false if it had none.';

CREATE OR REPLACE VIEW hydra.channel_policies AS
SELECT l.queue, NULLIF(l.channel, '') AS channel, l.max_concurrency, l.max_size, l.in_flight
  FROM hydra.channel_limit l;
