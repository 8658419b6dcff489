-- Argument checks shared by the public functions. Each raises SQLSTATE 22023 with a message
-- that starts with the argument's name, before anything is written.

-- VOLATILE, not IMMUTABLE: the planner runs an immutable call whose arguments are constants
-- while it plans, so `PERFORM hydra._invalid('batch', '...')` raised wherever its statement was
-- planned, not only where it runs (plpgsql_check plans every statement of every function).
CREATE OR REPLACE FUNCTION hydra._invalid(p_argument text, p_rule text)
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    -- One place that formats every bad-input error.
    RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = p_argument || ': ' || p_rule;
END
$$;

-- What is wrong with a queue, channel or message name (non-empty, bounded, no control
-- characters), or NULL. A SQL-standard body: bound when the extension is created, so it needs
-- no search_path, and the planner inlines it into each caller's statement (one rule, no call).
-- Bound at creation, it names every operator and function with its schema: an object planted
-- in the schema the extension is created in (public, for an old pg_tle install) never binds.
CREATE OR REPLACE FUNCTION hydra._name_problem(p_value text)
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE WHEN p_value OPERATOR(pg_catalog.=) '' THEN 'must not be empty'
            WHEN pg_catalog.length(p_value) OPERATOR(pg_catalog.>) 255
                 THEN 'must be at most 255 characters'
            WHEN p_value OPERATOR(pg_catalog.~) '[[:cntrl:]]'
                 THEN 'must not contain control characters' END;

CREATE OR REPLACE FUNCTION hydra._check_name(p_argument text, p_value text, p_nullable boolean)
RETURNS void
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    -- Raises when the name breaks a rule of _name_problem, or is NULL where it may not be.
    IF p_value IS NULL AND NOT p_nullable THEN
        PERFORM hydra._invalid(p_argument, 'must not be NULL');
    END IF;
    IF hydra._name_problem(p_value) IS NOT NULL THEN
        PERFORM hydra._invalid(p_argument, hydra._name_problem(p_value));
    END IF;
END
$$;

-- The first rule a message's options break, in the order the API lists them, or NULL. Like
-- _name_problem: a SQL-standard body the planner inlines, so a batch checks every row in its
-- own statement, with every operator schema-qualified.
CREATE OR REPLACE FUNCTION hydra._message_problem(
    p_payload        jsonb,
    p_channel        text,
    p_priority       integer,
    p_name           text,
    p_num_attempts   integer,
    p_lock_secs      numeric,
    p_factor         numeric,
    p_delay          numeric,
    p_cascade        boolean,
    p_max_processing numeric
)
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN coalesce(
    CASE WHEN p_payload IS NULL THEN 'payload: must not be NULL' END,
    'channel: ' OPERATOR(pg_catalog.||) hydra._name_problem(p_channel),
    CASE WHEN p_priority OPERATOR(pg_catalog.=) -2147483648
         THEN 'priority: must be greater than -2147483648 (reserved for NULL)' END,
    'name: ' OPERATOR(pg_catalog.||) hydra._name_problem(p_name),
    CASE WHEN p_num_attempts IS NULL OR p_num_attempts OPERATOR(pg_catalog.<) 1
              THEN 'num_attempts: must be at least 1'
         -- Bounds (docs/design.md, "Bounds of numeric options"): seconds are 0 (where that
         -- means "at once") or 0.001 to ten years, the factor 1 to 100. NaN and the
         -- infinities fall outside every range (numeric sorts NaN above all numbers); 1e-400
         -- or 1e131071 would underflow or overflow the double precision of an interval.
         WHEN p_lock_secs IS NULL
              OR NOT (p_lock_secs OPERATOR(pg_catalog.=) 0
                      OR p_lock_secs OPERATOR(pg_catalog.>=) 0.001
                         AND p_lock_secs OPERATOR(pg_catalog.<=) 315360000)
              THEN 'lock_secs: must be 0 or between 0.001 and 315360000 (ten years)'
         WHEN p_factor IS NULL
              OR NOT (p_factor OPERATOR(pg_catalog.>=) 1 AND p_factor OPERATOR(pg_catalog.<=) 100)
              THEN 'lock_secs_factor: must be between 1 and 100'
         WHEN p_delay IS NULL
              OR NOT (p_delay OPERATOR(pg_catalog.=) 0
                      OR p_delay OPERATOR(pg_catalog.>=) 0.001
                         AND p_delay OPERATOR(pg_catalog.<=) 315360000)
              THEN 'delay_secs: must be 0 or between 0.001 and 315360000 (ten years)'
         WHEN p_cascade IS NULL THEN 'cascade_failure: must not be NULL'
         WHEN p_max_processing IS NULL
              OR NOT (p_max_processing OPERATOR(pg_catalog.>=) 0.001
                      AND p_max_processing OPERATOR(pg_catalog.<=) 315360000)
              THEN 'max_processing_secs: must be between 0.001 and 315360000 (ten years)' END);

-- Checks the options every message carries; the arrays are aligned, one element per message.
CREATE OR REPLACE FUNCTION hydra._check_message_options(
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
    -- The first message's problem, in message order.
    SELECT x.problem INTO v_problem
      FROM (SELECT hydra._message_problem(o.payload, o.channel, o.priority, o.name,
                       o.num_attempts, o.lock_secs, o.factor, o.delay, o.cascade,
                       o.max_processing) AS problem, o.ord
              FROM unnest(p_payloads, p_channels, p_priorities, p_names, p_num_attempts,
                          p_lock_secs, p_lock_secs_factor, p_delay_secs, p_cascade_failure,
                          p_max_processing_secs)
                   WITH ORDINALITY AS o(payload, channel, priority, name, num_attempts,
                                        lock_secs, factor, delay, cascade, max_processing, ord)
           ) x
     WHERE x.problem IS NOT NULL
     ORDER BY x.ord
     LIMIT 1;
    IF v_problem IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = v_problem;
    END IF;
END
$$;

-- Payload size (issue 9, item 6): the size of the jsonb value (pg_column_size; a value read
-- compressed from a table -- a schedule's, or INSERT ... SELECT from a table -- is measured
-- uncompressed) is at most the queue's max_payload_bytes (hydra.queue; default 1048576, 1 MiB).
-- Every enqueue path calls this only for a payload above 1024 bytes (the smallest limit
-- hydra.queue_set accepts) or a compressed one, so the common small message pays no settings
-- lookup and a larger one one probe of hydra.queue.
CREATE OR REPLACE FUNCTION hydra._payload_problem(p_queue text, p_payload jsonb)
RETURNS text
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_size  integer := CASE WHEN pg_catalog.pg_column_compression(p_payload) IS NULL
                            THEN pg_catalog.pg_column_size(p_payload)
                            ELSE pg_catalog.pg_column_size(p_payload::text::jsonb) END;
    v_limit integer;
BEGIN
    -- NULL when the payload fits its queue's limit; else the message of the 22023 to raise.
    SELECT q.max_payload_bytes INTO v_limit FROM hydra.queue q WHERE q.name = p_queue;
    v_limit := coalesce(v_limit, 1048576);
    IF v_size > v_limit THEN
        RETURN format('payload: must be at most %s bytes in queue %s (max_payload_bytes); '
                      'this one has %s', v_limit, pg_catalog.quote_literal(p_queue), v_size);
    END IF;
    RETURN NULL;
END
$$;

-- Raises 22023 for the first payload (in array order) that is too large for p_queue.
CREATE OR REPLACE FUNCTION hydra._check_payloads(p_queue text, p_payloads jsonb[])
RETURNS void
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_problem text;
BEGIN
    -- Only payloads above 1024 bytes, or compressed, can break a limit (_payload_problem).
    SELECT x.problem INTO v_problem
      FROM (SELECT hydra._payload_problem(p_queue, u.p) AS problem, u.o
              FROM unnest(p_payloads) WITH ORDINALITY u(p, o)
             WHERE pg_catalog.pg_column_size(u.p) > 1024
                OR pg_catalog.pg_column_compression(u.p) IS NOT NULL) x
     WHERE x.problem IS NOT NULL
     ORDER BY x.o
     LIMIT 1;
    IF v_problem IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = v_problem;
    END IF;
END
$$;

-- Seconds to wait after the k-th failed attempt: lock_secs * factor^(k-1), capped at ten years.
-- Total: it never raises, whatever the row holds. Rows stored before 0.2.0's bounds may carry
-- lock_secs 1e-400 or a factor of 1e131071, NaN or Infinity; the base is clamped to [0, ten
-- years] and rounded to whole milliseconds, the factor clamped to [1, 100], and the growth is
-- compared with the cap in log space before any power is taken (so neither numeric nor
-- double precision can overflow or underflow).
CREATE OR REPLACE FUNCTION hydra._backoff(p_lock_secs numeric, p_factor numeric, p_attempt integer)
RETURNS interval
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
RETURN (SELECT make_interval(secs => CASE
                   WHEN b.secs = 0 THEN 0
                   WHEN b.k * ln(b.factor) >= ln(315360000 / b.secs) THEN 315360000
                   ELSE least(b.secs * power(b.factor, b.k), 315360000) END)
          FROM (SELECT round(least(greatest(coalesce(p_lock_secs, 0), 0), 315360000),
                             3)::double precision AS secs,
                       least(greatest(coalesce(p_factor, 1), 1), 100)::double precision
                           AS factor,
                       (greatest(coalesce(p_attempt, 1), 1) - 1)::double precision AS k) b);
