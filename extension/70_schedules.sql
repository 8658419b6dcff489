-- hydramq: cron schedules. Owns the rows of hydra.schedule (the table is in 00_schema.sql), the
-- hydra.schedules view, schedule_set / schedule_clear and _fire_due_schedules (called by
-- hydra.coordinate).
-- Invariant: next_fire_at is the oldest tick not yet handled. A tick is handled (its message
-- enqueued) by the transaction that moves next_fire_at past it while holding the row lock, so
-- each tick is enqueued exactly once however many coordinators run (lock order step 4: schedule
-- rows are taken with SKIP LOCKED, never waited for by a coordinator).

CREATE OR REPLACE VIEW hydra.schedules AS
SELECT s.queue, NULLIF(s.channel, '') AS channel, s.name, s.cron, s.tz,
       -- A stopped schedule ('infinity' in the table, so that it is never due) shows NULL:
       -- clients such as Python cannot load 'infinity'.
       NULLIF(s.next_fire_at, 'infinity') AS next_fire_at, s.last_fire_at, s.last_error,
       s.payload, s.priority, s.num_attempts, s.lock_secs, s.lock_secs_factor,
       s.max_processing_secs, s.created_at, s.updated_at
  FROM hydra.schedule s;

COMMENT ON VIEW hydra.schedules IS
    'Cron schedules with their next and last fire times (channel NULL = default channel;
next_fire_at NULL = stopped: no next fire time, see last_error).';

CREATE OR REPLACE FUNCTION hydra.schedule_set(
    name                text,
    cron                text,
    payload             jsonb,
    queue               text    DEFAULT 'default',
    channel             text    DEFAULT NULL,
    tz                  text    DEFAULT 'UTC',
    priority            integer DEFAULT NULL,
    num_attempts        integer DEFAULT 1,
    lock_secs           numeric DEFAULT 5,
    lock_secs_factor    numeric DEFAULT 2,
    max_processing_secs numeric DEFAULT 3600
)
RETURNS timestamptz
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    p_name    ALIAS FOR $1;
    p_cron    ALIAS FOR $2;
    p_payload ALIAS FOR $3;
    p_queue   ALIAS FOR $4;
    p_channel ALIAS FOR $5;
    v_tz      text;
    v_next    timestamptz;
BEGIN
    -- Contract: validates every argument before writing (22023 naming it), then upserts the
    -- row for (queue, channel, name), waiting for its lock if a coordinator is firing it.
    PERFORM hydra._check_name('name', p_name, false);
    PERFORM hydra._check_name('queue', p_queue, false);
    PERFORM hydra._check_message_options(ARRAY[p_payload], ARRAY[p_channel],
        ARRAY[schedule_set.priority], ARRAY[NULL::text], ARRAY[schedule_set.num_attempts],
        ARRAY[schedule_set.lock_secs], ARRAY[schedule_set.lock_secs_factor], ARRAY[0::numeric],
        ARRAY[true], ARRAY[schedule_set.max_processing_secs]);
    PERFORM hydra._check_payloads(p_queue, ARRAY[p_payload]);
    PERFORM hydra._cron_parse(p_cron, 'cron');
    v_tz := hydra._cron_tz_name(schedule_set.tz, 'tz');
    v_next := hydra.cron_next(p_cron, now(), v_tz);

    INSERT INTO hydra.schedule AS s (queue, channel, name, cron, tz, payload, priority,
        num_attempts, lock_secs, lock_secs_factor, max_processing_secs, next_fire_at)
    VALUES (p_queue, coalesce(p_channel, ''), p_name, p_cron, v_tz, p_payload,
        schedule_set.priority, schedule_set.num_attempts, schedule_set.lock_secs,
        schedule_set.lock_secs_factor, schedule_set.max_processing_secs, v_next)
    ON CONFLICT (queue, channel, name) DO UPDATE
       SET cron = EXCLUDED.cron, tz = EXCLUDED.tz, payload = EXCLUDED.payload,
           priority = EXCLUDED.priority, num_attempts = EXCLUDED.num_attempts,
           lock_secs = EXCLUDED.lock_secs, lock_secs_factor = EXCLUDED.lock_secs_factor,
           max_processing_secs = EXCLUDED.max_processing_secs,
           next_fire_at = EXCLUDED.next_fire_at, last_error = NULL, updated_at = now();
    RETURN v_next;
END
$$;

COMMENT ON FUNCTION hydra.schedule_set(text, text, jsonb, text, text, text, integer, integer,
                                       numeric, numeric, numeric) IS
'Creates or replaces the schedule "name" of (queue, channel): at each fire time of cron
(5 fields or a macro, evaluated on wall-clock time in IANA zone tz) hydra.coordinate enqueues
one message with this payload and these options. Returns the next fire time, recomputed from
now on every call. Raises 22023 naming the bad argument; nothing is written then.';

CREATE OR REPLACE FUNCTION hydra.schedule_clear(name text, queue text DEFAULT 'default',
                                     channel text DEFAULT NULL)
RETURNS boolean
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    p_name    ALIAS FOR $1;
    p_queue   ALIAS FOR $2;
    p_channel ALIAS FOR $3;
    v_count   bigint;
BEGIN
    -- Contract: deletes one schedule row (waiting for its lock if it is being fired).
    PERFORM hydra._check_name('name', p_name, false);
    PERFORM hydra._check_name('queue', p_queue, false);
    PERFORM hydra._check_name('channel', p_channel, true);
    DELETE FROM hydra.schedule s
     WHERE s.queue = p_queue AND s.channel = coalesce(p_channel, '') AND s.name = p_name;
    GET DIAGNOSTICS v_count = ROW_COUNT;
    RETURN v_count > 0;
END
$$;

COMMENT ON FUNCTION hydra.schedule_clear(text, text, text) IS
'Removes the schedule "name" of (queue, channel); true if there was one. Messages it already
enqueued are not touched.';

-- Fires the schedules due at p_now. Split from _fire_due_schedules so that tests can drive a
-- schedule through time (DST transitions, downtime) without waiting for the clock.
CREATE OR REPLACE FUNCTION hydra._fire_due_schedules_at(p_batch integer, p_now timestamptz)
RETURNS SETOF hydra.event
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_due     hydra.schedule;
    v_next    timestamptz;
    v_result  hydra.enqueue_result;
    v_state   text;
    v_message text;
BEGIN
    -- Contract: locks up to p_batch due schedule rows FOR UPDATE SKIP LOCKED, oldest tick
    -- first; for each enqueues one message (missed ticks coalesce into this one) and moves
    -- next_fire_at to the first tick after p_now. A failing schedule is logged (WARNING,
    -- last_error), its tick skipped, and the others go on.
    FOR v_due IN
        SELECT * FROM hydra.schedule s
         WHERE s.next_fire_at <= p_now
         ORDER BY s.next_fire_at
         LIMIT p_batch
           FOR UPDATE SKIP LOCKED
    LOOP
        v_next := NULL;
        v_result := NULL;
        v_message := NULL;
        BEGIN
            v_next := hydra.cron_next(v_due.cron, greatest(p_now, v_due.next_fire_at), v_due.tz);
            v_result := hydra.enqueue(
                payload             => v_due.payload,
                queue               => v_due.queue,
                channel             => NULLIF(v_due.channel, ''),
                priority            => v_due.priority,
                num_attempts        => v_due.num_attempts,
                lock_secs           => v_due.lock_secs,
                lock_secs_factor    => v_due.lock_secs_factor,
                max_processing_secs => v_due.max_processing_secs);
        EXCEPTION WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS v_state = RETURNED_SQLSTATE, v_message = MESSAGE_TEXT;
            v_message := v_state || ': ' || v_message;
            RAISE WARNING 'hydramq: schedule "%" (queue "%", channel "%") enqueued nothing for its tick at %: %',
                v_due.name, v_due.queue, NULLIF(v_due.channel, ''), v_due.next_fire_at, v_message;
        END;

        -- Without a next tick (its zone vanished from the tz database, or the next one is
        -- after year 9999: cron_next gives NULL) the schedule stops at 'infinity' (NULL in
        -- hydra.schedules) until schedule_set is called again.
        UPDATE hydra.schedule s
           SET next_fire_at = coalesce(v_next, 'infinity'),
               last_fire_at = v_due.next_fire_at,
               last_error   = v_message
         WHERE s.queue = v_due.queue AND s.channel = v_due.channel AND s.name = v_due.name;

        IF v_result.message_id IS NOT NULL THEN
            RETURN NEXT ROW(
                CASE v_result.result WHEN 'dropped' THEN 'MESSAGE_DROPPED' ELSE 'MESSAGE_ENQUEUED' END,
                v_result.message_id, v_due.queue, NULLIF(v_due.channel, ''),
                jsonb_build_object('schedule', v_due.name, 'fire_time', v_due.next_fire_at)
            )::hydra.event;
        END IF;
    END LOOP;
END
$$;

CREATE OR REPLACE FUNCTION hydra._fire_due_schedules(p_batch integer)
RETURNS SETOF hydra.event
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
    -- The schedules due now; hydra.coordinate calls this.
    SELECT * FROM hydra._fire_due_schedules_at(p_batch, pg_catalog.now());
$$;

REVOKE ALL ON TABLE hydra.schedule FROM PUBLIC;
REVOKE ALL ON TABLE hydra.schedules FROM PUBLIC;
REVOKE ALL ON FUNCTION hydra.schedule_set(text, text, jsonb, text, text, text, integer, integer,
                                          numeric, numeric, numeric) FROM PUBLIC;
REVOKE ALL ON FUNCTION hydra.schedule_clear(text, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION hydra._fire_due_schedules_at(integer, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION hydra._fire_due_schedules(integer) FROM PUBLIC;
