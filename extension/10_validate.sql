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
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_i integer;
BEGIN
    -- A message's options, in the order the API lists them.
    FOR v_i IN 1 .. coalesce(array_length(p_payloads, 1), 0) LOOP
        IF p_payloads[v_i] IS NULL THEN
            PERFORM hydra._invalid('payload', 'must not be NULL');
        END IF;
        IF p_channels[v_i] IS NOT NULL THEN
            PERFORM hydra._check_name('channel', p_channels[v_i], true);
        END IF;
        IF p_priorities[v_i] = -2147483648 THEN
            PERFORM hydra._invalid('priority', 'must be greater than -2147483648 (reserved for NULL)');
        END IF;
        IF p_names[v_i] IS NOT NULL THEN
            PERFORM hydra._check_name('name', p_names[v_i], true);
        END IF;
        IF p_num_attempts[v_i] IS NULL OR p_num_attempts[v_i] < 1 THEN
            PERFORM hydra._invalid('num_attempts', 'must be at least 1');
        END IF;
        IF p_lock_secs[v_i] IS NULL OR p_lock_secs[v_i] < 0 THEN
            PERFORM hydra._invalid('lock_secs', 'must be 0 or more');
        END IF;
        IF p_lock_secs_factor[v_i] IS NULL OR p_lock_secs_factor[v_i] < 1 THEN
            PERFORM hydra._invalid('lock_secs_factor', 'must be at least 1');
        END IF;
        IF p_delay_secs[v_i] IS NULL OR p_delay_secs[v_i] < 0 THEN
            PERFORM hydra._invalid('delay_secs', 'must be 0 or more');
        END IF;
        IF p_cascade_failure[v_i] IS NULL THEN
            PERFORM hydra._invalid('cascade_failure', 'must not be NULL');
        END IF;
        IF p_max_processing_secs[v_i] IS NULL OR p_max_processing_secs[v_i] <= 0 THEN
            PERFORM hydra._invalid('max_processing_secs', 'must be greater than 0');
        END IF;
        IF p_delay_secs[v_i] > 315360000 OR p_max_processing_secs[v_i] > 315360000
           OR p_lock_secs[v_i] > 315360000 THEN
            PERFORM hydra._invalid('delay_secs, lock_secs, max_processing_secs',
                                   'must be at most 315360000 (ten years)');
        END IF;
    END LOOP;
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
