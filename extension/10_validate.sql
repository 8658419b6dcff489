-- Argument checks shared by the public functions. Each raises SQLSTATE 22023 with a message
-- that starts with the argument's name, before anything is written.

CREATE FUNCTION hydra._invalid(p_argument text, p_rule text)
RETURNS void
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    -- One place that formats every bad-input error.
    RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = p_argument || ': ' || p_rule;
END
$$;

CREATE FUNCTION hydra._check_name(p_argument text, p_value text, p_nullable boolean)
RETURNS void
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    -- Queue, channel and message names: non-empty, bounded, no control characters.
    IF p_value IS NULL THEN
        IF NOT p_nullable THEN
            PERFORM hydra._invalid(p_argument, 'must not be NULL');
        END IF;
        RETURN;
    END IF;
    IF p_value = '' THEN
        PERFORM hydra._invalid(p_argument, 'must not be empty');
    END IF;
    IF length(p_value) > 255 THEN
        PERFORM hydra._invalid(p_argument, 'must be at most 255 characters');
    END IF;
    IF p_value ~ '[[:cntrl:]]' THEN
        PERFORM hydra._invalid(p_argument, 'must not contain control characters');
    END IF;
END
$$;

-- Checks the options every message carries; the arrays are aligned, one element per message.
-- One set-based statement (a loop of calls costs more than the insert it guards).
CREATE FUNCTION hydra._check_message_options(
    p_payloads            jsonb[],
    p_channels            text[],
    p_priorities          integer[],
    p_names               text[],
    p_num_attempts        integer[],
    p_lock_secs           numeric[],
    p_lock_secs_factor    numeric[],
    p_delay_secs          numeric[],
    p_cascade_failure     boolean[],
    p_max_processing_secs numeric[]
)
RETURNS void
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    v_problem text;
BEGIN
    -- The first rule broken, in the order the API lists the options.
    SELECT x.problem INTO v_problem
      FROM (SELECT CASE
                   WHEN o.payload IS NULL THEN 'payload: must not be NULL'
                   WHEN o.channel = '' THEN 'channel: must not be empty'
                   WHEN length(o.channel) > 255 THEN 'channel: must be at most 255 characters'
                   WHEN o.channel ~ '[[:cntrl:]]' THEN 'channel: must not contain control characters'
                   WHEN o.priority = -2147483648
                        THEN 'priority: must be greater than -2147483648 (reserved for NULL)'
                   WHEN o.name = '' THEN 'name: must not be empty'
                   WHEN length(o.name) > 255 THEN 'name: must be at most 255 characters'
                   WHEN o.name ~ '[[:cntrl:]]' THEN 'name: must not contain control characters'
                   WHEN o.num_attempts IS NULL OR o.num_attempts < 1
                        THEN 'num_attempts: must be at least 1'
                   WHEN o.lock_secs IS NULL OR o.lock_secs < 0 THEN 'lock_secs: must be 0 or more'
                   WHEN o.factor IS NULL OR o.factor < 1 THEN 'lock_secs_factor: must be at least 1'
                   WHEN o.delay IS NULL OR o.delay < 0 THEN 'delay_secs: must be 0 or more'
                   WHEN o.cascade IS NULL THEN 'cascade_failure: must not be NULL'
                   WHEN o.max_processing IS NULL OR o.max_processing <= 0
                        THEN 'max_processing_secs: must be greater than 0'
                   WHEN o.delay > 315360000 OR o.max_processing > 315360000 OR o.lock_secs > 315360000
                        THEN 'delay_secs, lock_secs, max_processing_secs: must be at most 315360000 '
                             '(ten years)'
                 END AS problem
              FROM unnest(p_payloads, p_channels, p_priorities, p_names, p_num_attempts,
                          p_lock_secs, p_lock_secs_factor, p_delay_secs, p_cascade_failure,
                          p_max_processing_secs)
                 AS o(payload, channel, priority, name, num_attempts, lock_secs, factor, delay,
                      cascade, max_processing)) x
     WHERE x.problem IS NOT NULL
     LIMIT 1;
    IF v_problem IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = v_problem;
    END IF;
END
$$;

-- Seconds to wait after the k-th failed attempt: lock_secs * factor^(k-1), capped at ten years.
CREATE FUNCTION hydra._backoff(p_lock_secs numeric, p_factor numeric, p_attempt integer)
RETURNS interval
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
RETURN make_interval(secs => least(
    315360000::numeric,
    p_lock_secs * power(p_factor, least(greatest(p_attempt - 1, 0), 200)::numeric)
)::double precision);
