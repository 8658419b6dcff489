-- hydramq: cron expressions evaluated in SQL.
-- Owns hydra.cron_validate, hydra.cron_next and the hydra._cron_* helpers. Everything here is
-- pure: no table is read or written, results depend on the arguments and the tz database only.
-- Dialect, DST rules and the differences from croniter are documented in docs/cron.md.

-- One value of a field: a number or (month, day-of-week) a three-letter name, range-checked.
CREATE OR REPLACE FUNCTION hydra._cron_value(p_token text, p_field text, p_lo int, p_hi int, p_arg text)
RETURNS int
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_value int;
BEGIN
    -- Numbers are capped at four digits before the cast so that no input overflows int.
    IF p_token ~ '^[0-9]{1,4}$' THEN
        v_value := p_token::int;
    ELSIF p_field = 'month' THEN
        v_value := array_position(ARRAY['jan', 'feb', 'mar', 'apr', 'may', 'jun',
                                        'jul', 'aug', 'sep', 'oct', 'nov', 'dec'], lower(p_token));
    ELSIF p_field = 'day-of-week' THEN
        v_value := array_position(ARRAY['sun', 'mon', 'tue', 'wed', 'thu', 'fri', 'sat'],
                                  lower(p_token)) - 1;
    END IF;
    IF v_value IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = format(
            '%s: %s field "%s" is not a number%s', p_arg, p_field, p_token,
            CASE p_field WHEN 'month' THEN ' or month name (JAN-DEC)'
                         WHEN 'day-of-week' THEN ' or weekday name (SUN-SAT)' ELSE '' END);
    END IF;
    IF v_value NOT BETWEEN p_lo AND p_hi THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = format(
            '%s: %s field "%s" out of range %s-%s', p_arg, p_field, p_token, p_lo, p_hi);
    END IF;
    RETURN v_value;
END;
$$;

-- One field (a comma list of *, values, ranges and steps) as the sorted set of its values.
CREATE OR REPLACE FUNCTION hydra._cron_field(p_text text, p_field text, p_lo int, p_hi int, p_arg text)
RETURNS int[]
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_is_dow boolean := p_field = 'day-of-week';
    v_span   int := p_hi - p_lo + 1;        -- length of the field's cycle
    v_item   text;
    v_parts  text[];
    v_from   int;
    v_to     int;
    v_step   int;
    v_values int[] := '{}'::int[];
BEGIN
    -- Grammar per item: ( "*" | value [ "-" value ] ) [ "/" step ]. Day-of-week also accepts 7
    -- (Sunday); a range whose end is below its start wraps around the cycle (FRI-MON, 22-2).
    FOREACH v_item IN ARRAY string_to_array(p_text, ',') LOOP
        v_parts := regexp_match(v_item, '^(?:(\*)|([A-Za-z0-9]+)(?:-([A-Za-z0-9]+))?)(?:/([0-9]+))?$');
        IF v_parts IS NULL THEN
            RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = format(
                '%s: %s field "%s" is not valid (expected *, a value, a range a-b, '
                'or a step */n, a-b/n, a/n)', p_arg, p_field, coalesce(nullif(v_item, ''), p_text));
        END IF;
        IF v_parts[4] IS NOT NULL THEN
            IF length(v_parts[4]) > 4 OR v_parts[4]::int NOT BETWEEN 1 AND v_span THEN
                RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = format(
                    '%s: %s field "%s": step must be between 1 and %s', p_arg, p_field, v_item, v_span);
            END IF;
            v_step := v_parts[4]::int;
        ELSE
            v_step := 1;
        END IF;

        IF v_parts[1] IS NOT NULL THEN                       -- *  or  */n
            v_from := p_lo;
            v_to := p_hi;
        ELSE
            v_from := hydra._cron_value(v_parts[2], p_field, p_lo, p_hi + v_is_dow::int, p_arg);
            IF v_parts[3] IS NOT NULL THEN                   -- a-b  or  a-b/n
                v_to := hydra._cron_value(v_parts[3], p_field, p_lo, p_hi + v_is_dow::int, p_arg);
                IF v_is_dow AND v_from = 7 THEN              -- 7-x: Sunday starts the range
                    v_from := 0;
                    v_to := v_to % 7;
                END IF;
            ELSE                                             -- a  or  a/n (= a-max/n)
                IF v_is_dow THEN
                    v_from := v_from % 7;
                END IF;
                v_to := CASE WHEN v_parts[4] IS NULL THEN v_from ELSE p_hi END;
            END IF;
        END IF;

        IF v_from > v_to THEN
            v_to := v_to + v_span;                           -- wrap around the cycle
        END IF;
        FOR v_value IN v_from .. v_to BY v_step LOOP
            v_values := v_values || (p_lo + (v_value - p_lo) % v_span);
        END LOOP;
    END LOOP;

    RETURN ARRAY(SELECT DISTINCT v FROM unnest(v_values) AS v ORDER BY v);
END;
$$;

-- Lookup table [p_lo:p_hi] giving, for each i, the smallest value of p_values >= i (or NULL).
CREATE OR REPLACE FUNCTION hydra._cron_next_table(p_values int[], p_lo int, p_hi int)
RETURNS int[]
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_table int[] := array_fill(NULL::int, ARRAY[p_hi - p_lo + 1], ARRAY[p_lo]);
    v_next  int;
BEGIN
    -- Filled from the top so that each slot inherits the nearest allowed value above it.
    FOR v_i IN REVERSE p_hi .. p_lo LOOP
        IF v_i = ANY (p_values) THEN
            v_next := v_i;
        END IF;
        v_table[v_i] := v_next;
    END LOOP;
    RETURN v_table;
END;
$$;

-- Parses and validates an expression; p_arg is the argument name used in error messages.
-- pgspot unparsed (accepted): its PL/pgSQL parser knows no catalog and rejects the assignments
-- to fields of v_spec; nothing in here binds through the caller's search_path (it pins its own),
-- and plpgsql_check reads this body in full.
CREATE OR REPLACE FUNCTION hydra._cron_parse(p_expr text, p_arg text DEFAULT 'expr')
RETURNS hydra._cron_spec
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_text   text := btrim(p_expr, E' \t\r\n');
    v_fields text[];
    v_mins   int[];
    v_hours  int[];
    v_doms   int[];
    v_months int[];
    v_dows   int[];
    v_ahead  int[] := array_fill(0, ARRAY[7], ARRAY[0]);
    v_spec   hydra._cron_spec;
BEGIN
    -- Macros expand to their five-field form; anything else must have exactly five fields.
    IF p_expr IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = format('%s: must not be null', p_arg);
    END IF;
    IF left(v_text, 1) = '@' THEN
        v_text := CASE lower(v_text)
            WHEN '@yearly'   THEN '0 0 1 1 *'
            WHEN '@annually' THEN '0 0 1 1 *'
            WHEN '@monthly'  THEN '0 0 1 * *'
            WHEN '@weekly'   THEN '0 0 * * 0'
            WHEN '@daily'    THEN '0 0 * * *'
            WHEN '@midnight' THEN '0 0 * * *'
            WHEN '@hourly'   THEN '0 * * * *'
        END;
        IF v_text IS NULL THEN
            RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = format(
                '%s: unknown macro "%s" (expected @yearly, @annually, @monthly, @weekly, @daily, '
                '@midnight or @hourly)', p_arg, btrim(p_expr));
        END IF;
    END IF;
    v_fields := regexp_split_to_array(v_text, '[ \t\r\n]+');
    IF v_text = '' OR cardinality(v_fields) <> 5 THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = format(
            '%s: expected 5 fields (minute hour day-of-month month day-of-week) or a macro '
            'such as @daily, got %s', p_arg, CASE WHEN v_text = '' THEN 0 ELSE cardinality(v_fields) END);
    END IF;

    v_mins   := hydra._cron_field(v_fields[1], 'minute', 0, 59, p_arg);
    v_hours  := hydra._cron_field(v_fields[2], 'hour', 0, 23, p_arg);
    v_doms   := hydra._cron_field(v_fields[3], 'day-of-month', 1, 31, p_arg);
    v_months := hydra._cron_field(v_fields[4], 'month', 1, 12, p_arg);
    v_dows   := hydra._cron_field(v_fields[5], 'day-of-week', 0, 6, p_arg);

    v_spec.minute_next := hydra._cron_next_table(v_mins, 0, 59);
    v_spec.hour_next  := hydra._cron_next_table(v_hours, 0, 23);
    v_spec.dom_next   := hydra._cron_next_table(v_doms, 1, 31);
    v_spec.month_next := hydra._cron_next_table(v_months, 1, 12);
    FOR v_day IN 0 .. 6 LOOP
        v_ahead[v_day] := (SELECT min(k) FROM generate_series(0, 6) AS k
                           WHERE (v_day + k) % 7 = ANY (v_dows));
    END LOOP;
    v_spec.dow_ahead  := v_ahead;
    v_spec.dom_any    := cardinality(v_doms) = 31;
    v_spec.dow_any    := cardinality(v_dows) = 7;
    v_spec.hour_any   := cardinality(v_hours) = 24;

    -- With day-of-week unrestricted only day-of-month decides: refuse dates no month has
    -- (0 0 30 2 *). February counts 29 days: leap days are valid, they fire every 4-8 years.
    IF v_spec.dow_any AND NOT v_spec.dom_any AND NOT EXISTS (
        SELECT FROM unnest(v_months) AS m, unnest(v_doms) AS d
        WHERE d <= (ARRAY[31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31])[m])
    THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = format(
            '%s: day-of-month field "%s" never occurs in month field "%s"',
            p_arg, v_fields[3], v_fields[4]);
    END IF;
    RETURN v_spec;
END;
$$;

-- First wall-clock minute >= p_from (minute-aligned) that the expression names, looking no
-- further than the end of p_last_year; NULL when there is none. Pure calendar arithmetic.
CREATE OR REPLACE FUNCTION hydra._cron_match_from(p_spec hydra._cron_spec, p_from timestamp, p_last_year int)
RETURNS timestamp
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_minutes int[] := p_spec.minute_next;
    v_hours   int[] := p_spec.hour_next;
    v_doms    int[] := p_spec.dom_next;
    v_months  int[] := p_spec.month_next;
    v_ahead   int[] := p_spec.dow_ahead;
    v_year    int := extract(year FROM p_from);
    v_month   int := extract(month FROM p_from);
    v_day     int := extract(day FROM p_from);
    v_hour    int := extract(hour FROM p_from);
    v_minute  int := extract(minute FROM p_from);
    v_last    int;       -- days in the current month
    v_by_dom  int;
    v_by_dow  int;
    v_next    int;
BEGIN
    -- Each step either accepts the current unit or jumps to the start of the next candidate one
    -- (out-of-range subscripts such as hour 24 read as NULL, which means "carry").
    LOOP
        IF v_year > p_last_year THEN
            RETURN NULL;
        END IF;

        v_next := v_months[v_month];
        IF v_next IS NULL THEN
            v_year := v_year + 1; v_month := 1; v_day := 1; v_hour := 0; v_minute := 0;
            CONTINUE;
        ELSIF v_next > v_month THEN
            v_month := v_next; v_day := 1; v_hour := 0; v_minute := 0;
        END IF;

        v_last := CASE WHEN v_month = 2 THEN 28 + (v_year % 4 = 0 AND (v_year % 100 <> 0 OR v_year % 400 = 0))::int
                       WHEN v_month IN (4, 6, 9, 11) THEN 30 ELSE 31 END;
        IF v_day <= v_last THEN
            v_by_dom := nullif(least(v_doms[v_day], v_last + 1), v_last + 1);
            v_by_dow := nullif(least(v_day + v_ahead[extract(dow FROM make_date(v_year, v_month, v_day))::int],
                                     v_last + 1), v_last + 1);
            -- Classic cron: when both day fields are restricted, either one may match.
            v_next := CASE WHEN p_spec.dom_any THEN v_by_dow
                           WHEN p_spec.dow_any THEN v_by_dom
                           ELSE least(v_by_dom, v_by_dow) END;
        ELSE
            v_next := NULL;
        END IF;
        IF v_next IS NULL THEN
            v_month := v_month + 1; v_day := 1; v_hour := 0; v_minute := 0;
            CONTINUE;
        ELSIF v_next > v_day THEN
            v_day := v_next; v_hour := 0; v_minute := 0;
        END IF;

        v_next := v_hours[v_hour];
        IF v_next IS NULL THEN
            v_day := v_day + 1; v_hour := 0; v_minute := 0;
            CONTINUE;
        ELSIF v_next > v_hour THEN
            v_hour := v_next; v_minute := 0;
        END IF;

        v_next := v_minutes[v_minute];
        IF v_next IS NULL THEN
            v_hour := v_hour + 1; v_minute := 0;
            CONTINUE;
        END IF;
        RETURN make_timestamp(v_year, v_month, v_day, v_hour, v_next, 0);
    END LOOP;
END;
$$;

-- Canonical name of time zone p_tz (e.g. 'america/new_york' -> 'America/New_York'), or 22023
-- naming p_arg. Only tz database names are accepted: PostgreSQL would also take POSIX specs
-- ('UTC+3' is three hours WEST of UTC) and numeric offsets, which are refused here as traps.
CREATE OR REPLACE FUNCTION hydra._cron_tz_name(p_tz text, p_arg text DEFAULT 'tz')
RETURNS text
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
SET TimeZone = 'UTC'
AS $$
BEGIN
    -- set_config is undone when this function returns (it has its own SET TimeZone clause).
    IF p_tz IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = format('%s: must not be null', p_arg);
    END IF;
    IF p_tz !~ '^[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9_+-]+)*$'
       OR (p_tz ~ '^[A-Za-z]+[+-]?[0-9]' AND p_tz !~* '^(EST5EDT|CST6CDT|MST7MDT|PST8PDT|GMT[+-]?0)$')
    THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = format('%s: unknown time zone "%s"', p_arg, p_tz);
    END IF;
    BEGIN
        PERFORM set_config('TimeZone', p_tz, true);
    EXCEPTION WHEN invalid_parameter_value THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = format('%s: unknown time zone "%s"', p_arg, p_tz);
    END;
    RETURN current_setting('TimeZone');
END;
$$;

-- First instant (whole second) in (p_lo, p_hi] whose UTC offset is that of p_hi: the moment the
-- clock jumps, when exactly one transition lies between the two. Session TimeZone = the zone.
CREATE OR REPLACE FUNCTION hydra._cron_transition(p_lo timestamptz, p_hi timestamptz)
RETURNS timestamptz
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_lo     bigint := floor(extract(epoch FROM p_lo));
    v_hi     bigint := ceil(extract(epoch FROM p_hi));
    v_offset interval := p_hi::timestamp - (p_hi AT TIME ZONE 'UTC');
    v_mid    bigint;
    v_at     timestamptz;
BEGIN
    -- Binary search on epoch seconds: about 12 probes for an hour, 17 for a day.
    WHILE v_hi - v_lo > 1 LOOP
        v_mid := (v_lo + v_hi) / 2;
        v_at := to_timestamp(v_mid);
        IF v_at::timestamp - (v_at AT TIME ZONE 'UTC') = v_offset THEN
            v_hi := v_mid;
        ELSE
            v_lo := v_mid;
        END IF;
    END LOOP;
    RETURN to_timestamp(v_hi);
END;
$$;

-- The instants whose wall-clock time (session TimeZone) is p_wall: one (first_at), two in a
-- fall-back overlap (first_at < second_at), or none in a spring-forward gap (in_gap; first_at
-- is then the end of the gap, the first instant after the skipped wall-clock times).
CREATE OR REPLACE FUNCTION hydra._cron_instants(p_wall timestamp,
                                     OUT first_at timestamptz, OUT second_at timestamptz,
                                     OUT in_gap boolean)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_at     timestamptz := p_wall::timestamptz;   -- PostgreSQL picks the later of two instants,
                                                   -- and for a gap the offset from before it
    v_offset interval := v_at::timestamp - (v_at AT TIME ZONE 'UTC');
    v_other  interval;
    v_alt    timestamptz;
BEGIN
    -- Offsets a day either side reveal a nearby transition; 25 hours covers every DST rule
    -- and whole-day jumps such as Samoa's in 2011.
    in_gap := v_at::timestamp <> p_wall;
    IF in_gap THEN
        first_at := hydra._cron_transition((p_wall - v_offset) AT TIME ZONE 'UTC', v_at);
        RETURN;
    END IF;
    first_at := v_at;
    FOREACH v_other IN ARRAY ARRAY[
            (v_at - interval '25 hours')::timestamp - ((v_at - interval '25 hours') AT TIME ZONE 'UTC'),
            (v_at + interval '25 hours')::timestamp - ((v_at + interval '25 hours') AT TIME ZONE 'UTC')]
    LOOP
        CONTINUE WHEN v_other = v_offset;
        v_alt := (p_wall - v_other) AT TIME ZONE 'UTC';
        IF v_alt::timestamp = p_wall THEN
            first_at := least(v_at, v_alt);
            second_at := greatest(v_at, v_alt);
        END IF;
    END LOOP;
END;
$$;

-- Next fire time strictly after p_after, for a parsed expression, in the session TimeZone
-- (callers set it). The DST rules implemented here are specified in docs/cron.md:
--   * hours restricted (a time of day): each named wall-clock time fires once; one skipped by a
--     spring-forward gap fires at the end of the gap, one repeated by a fall-back fires the
--     first time only;
--   * all 24 hours allowed (follows the clock): fires at every instant whose wall-clock time
--     matches; skipped times do not exist, repeated times fire on both passes.
CREATE OR REPLACE FUNCTION hydra._cron_next(p_spec hydra._cron_spec, p_after timestamptz)
RETURNS timestamptz
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_local  timestamp := p_after::timestamp;
    v_limit  int := extract(year FROM v_local)::int + 8;   -- leap days recur within 8 years
    v_wall   timestamp := date_trunc('minute', v_local) + interval '1 minute';
    v_first  timestamptz;
    v_second timestamptz;
    v_gap    boolean;
    v_best   timestamptz;
BEGIN
    -- Walk the matching wall-clock times after p_after's and map each to its instants.
    LOOP
        v_wall := hydra._cron_match_from(p_spec, v_wall, v_limit);
        IF v_wall IS NULL THEN
            RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = format(
                'expr: never fires in the 8 years after %s', p_after);
        END IF;
        SELECT i.first_at, i.second_at, i.in_gap INTO v_first, v_second, v_gap
        FROM hydra._cron_instants(v_wall) AS i;
        IF v_gap THEN
            EXIT WHEN NOT p_spec.hour_any AND v_first > p_after;
            -- Every wall time up to the end of the gap is skipped as well.
            v_wall := date_trunc('minute', v_first::timestamp - interval '1 microsecond') + interval '1 minute';
            CONTINUE;
        END IF;
        EXIT WHEN v_first > p_after;
        IF p_spec.hour_any AND v_second > p_after THEN
            v_first := v_second;
            EXIT;
        END IF;
        v_wall := v_wall + interval '1 minute';
    END LOOP;
    v_best := v_first;

    -- A clock-following expression also fires on the second pass of wall times that p_after
    -- has already passed, when p_after lies in the first pass of a fall-back overlap.
    IF p_spec.hour_any THEN
        SELECT i.first_at, i.second_at INTO v_first, v_second FROM hydra._cron_instants(v_local) AS i;
        IF v_second > p_after THEN
            v_wall := hydra._cron_transition(p_after, v_second)::timestamp;   -- second pass starts
            v_wall := hydra._cron_match_from(
                p_spec, date_trunc('minute', v_wall - interval '1 microsecond') + interval '1 minute', v_limit);
            IF v_wall <= v_local THEN
                SELECT i.second_at INTO v_second FROM hydra._cron_instants(v_wall) AS i;
                v_best := least(v_best, v_second);
            END IF;
        END IF;
    END IF;
    RETURN v_best;
END;
$$;

-- The two public functions run as the extension owner (SECURITY DEFINER) so that a role
-- granted EXECUTE on them needs nothing on the hydra._cron_* helpers; they read no table.
CREATE OR REPLACE FUNCTION hydra.cron_validate(expr text)
RETURNS void
LANGUAGE plpgsql IMMUTABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    p_expr ALIAS FOR $1;
BEGIN
    -- Raises 22023 naming the bad field; returns nothing for a valid expression.
    PERFORM hydra._cron_parse(p_expr);
END;
$$;

CREATE OR REPLACE FUNCTION hydra.cron_next(expr text, after timestamptz, tz text DEFAULT 'UTC')
RETURNS timestamptz
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET TimeZone = 'UTC'
AS $$
DECLARE
    p_expr  ALIAS FOR $1;
    p_after ALIAS FOR $2;
    p_tz    ALIAS FOR $3;
    v_spec  hydra._cron_spec := hydra._cron_parse(p_expr);
    v_zone  text := hydra._cron_tz_name(p_tz);
    v_next  timestamptz;
BEGIN
    -- Evaluates in zone p_tz; the SET TimeZone clause restores the caller's zone on return.
    -- Both ends of the range stay loadable by clients in every zone (Python's datetime ends
    -- with year 9999): a fire time after 9999-12-30 00:00 UTC is NULL, "no next time", and a
    -- schedule that meets it stops.
    IF p_after IS NULL OR NOT p_after BETWEEN '0001-01-02 00:00+00' AND '9999-12-30 00:00+00' THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = 'after: must be a finite timestamp between years 1 and 9999';
    END IF;
    PERFORM set_config('TimeZone', v_zone, true);
    v_next := hydra._cron_next(v_spec, p_after);
    RETURN CASE WHEN v_next <= '9999-12-30 00:00+00' THEN v_next END;
END;
$$;

COMMENT ON FUNCTION hydra.cron_validate(text) IS
'Checks a cron expression (5 fields or a macro such as @daily) and raises SQLSTATE 22023 naming '
'the bad field, or when the expression can never fire (0 0 31 2 *). Returns nothing when valid.';

COMMENT ON FUNCTION hydra.cron_next(text, timestamptz, text) IS
'First fire time of cron expression expr strictly after "after", evaluated on wall-clock time '
'in IANA time zone tz (default UTC). DST: a time of day skipped by a spring-forward gap fires '
'at the end of the gap, one repeated by a fall-back fires once; expressions whose hour field '
'is * follow the clock. "after" must lie between 0001-01-02 and 9999-12-30 00:00 UTC; a fire '
'time after 9999-12-30 00:00 UTC is returned as NULL (none). See docs/cron.md.';

REVOKE ALL ON FUNCTION hydra._cron_value(text, text, int, int, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION hydra._cron_field(text, text, int, int, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION hydra._cron_next_table(int[], int, int) FROM PUBLIC;
REVOKE ALL ON FUNCTION hydra._cron_parse(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION hydra._cron_match_from(hydra._cron_spec, timestamp, int) FROM PUBLIC;
REVOKE ALL ON FUNCTION hydra._cron_tz_name(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION hydra._cron_transition(timestamptz, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION hydra._cron_instants(timestamp) FROM PUBLIC;
REVOKE ALL ON FUNCTION hydra._cron_next(hydra._cron_spec, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION hydra.cron_validate(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION hydra.cron_next(text, timestamptz, text) FROM PUBLIC;
