-- Coordination from a scheduler that starts a statement at most once a minute (pg_cron 1.4):
-- hydra.coordinate_loop runs hydra.coordinate() round after round, committing after each, until
-- the end of the period it started in. It holds no row lock and no snapshot between rounds, so
-- any number of loops, coordinators and workers run beside it (coordinate() uses SKIP LOCKED).

-- pgspot PS005 (no explicit search_path), accepted: the one routine of this extension without
-- a SET clause. PostgreSQL forbids COMMIT in a procedure that has a SET clause or is SECURITY
-- DEFINER, and without a COMMIT per round now() would stand still and nothing it did would be
-- visible until the end of the minute. So it runs as its caller, with the caller's
-- search_path, and is written to bind nothing through it: every function, operator and
-- non-keyword type is schema-qualified (pg_catalog., hydra., OPERATOR(pg_catalog.x));
-- what touches the queue is hydra.coordinate(), SECURITY DEFINER with a pinned search_path.
-- Its caller needs EXECUTE on both (hydra.grant_admin).
-- Contract: takes no lock itself; each round is one hydra.coordinate() call in its own
-- transaction (its lock order is coordinate()'s); a round that hits a transient error
-- (serialization failure, deadlock, lock not available) is rolled back, counted in
-- "retried" with a WARNING, and the next round goes on; any other error ends the call.
CREATE OR REPLACE PROCEDURE hydra.coordinate_loop(
    period                 interval          DEFAULT '1 minute',
    poll_secs              numeric           DEFAULT 0.5,
    batch                  integer           DEFAULT 1000,
    failed_retention       interval          DEFAULT '7 days',
    INOUT rounds           integer           DEFAULT NULL,
    INOUT transitions      pg_catalog.jsonb  DEFAULT NULL,
    INOUT retried          integer           DEFAULT NULL
)
LANGUAGE plpgsql
AS $$
DECLARE
    v_started  timestamp with time zone := pg_catalog.clock_timestamp();
    v_end      timestamp with time zone;
    v_timeout  interval := pg_catalog.current_setting('statement_timeout')::interval;
    v_events   bigint;
    v_counts   pg_catalog.jsonb;
    v_state    pg_catalog.text;
    v_message  pg_catalog.text;
BEGIN
    -- Rounds of coordinate() until the end of the current period, sleeping poll_secs between
    -- rounds that found less than a full batch of work.
    IF period IS NULL OR period OPERATOR(pg_catalog.<) interval '1 second'
       OR period OPERATOR(pg_catalog.>) interval '1 day' THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = 'period: must be between 1 second and 1 day';
    END IF;
    IF poll_secs IS NULL OR poll_secs OPERATOR(pg_catalog.<) 0
       OR poll_secs OPERATOR(pg_catalog.>) 60 THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = 'poll_secs: must be between 0 and 60';
    END IF;
    -- Periods are counted from a whole UTC day, as cron counts minutes and hours: a job run
    -- every minute (or */5 minutes, or hourly) ends just as its next run is due, and a run
    -- that pg_cron starts late (it queues a run while the previous one lasts) ends early.
    v_end := pg_catalog.date_bin(period, v_started,
                                 timestamp with time zone '2001-01-01 00:00:00+00')
             OPERATOR(pg_catalog.+) period;
    -- statement_timeout counts from the start of the CALL, whatever it commits: end a second
    -- before it would cancel the loop (and say so: due work then waits for the next run).
    IF v_timeout OPERATOR(pg_catalog.>) interval '0'
       AND v_started OPERATOR(pg_catalog.+) v_timeout OPERATOR(pg_catalog.-) interval '1 second'
           OPERATOR(pg_catalog.<) v_end THEN
        RAISE WARNING 'hydramq: coordinate_loop ends % s early, at %: statement_timeout is %',
            pg_catalog.round(pg_catalog.date_part('epoch', v_end OPERATOR(pg_catalog.-)
                v_started OPERATOR(pg_catalog.-) v_timeout)::numeric OPERATOR(pg_catalog.+) 1, 1),
            v_started OPERATOR(pg_catalog.+) v_timeout OPERATOR(pg_catalog.-) interval '1 second',
            v_timeout
            USING HINT = 'Set statement_timeout to 0 for the role that runs it: '
                         'ALTER ROLE ... SET statement_timeout = 0.';
        v_end := v_started OPERATOR(pg_catalog.+) v_timeout
                 OPERATOR(pg_catalog.-) interval '1 second';
    END IF;
    rounds := 0;
    transitions := '{}';
    retried := 0;

    LOOP
        rounds := rounds OPERATOR(pg_catalog.+) 1;
        v_events := 0;
        BEGIN
            SELECT COALESCE(pg_catalog.sum(c.n), 0)::bigint,
                   pg_catalog.jsonb_object_agg(c.event, c.n)
              INTO v_events, v_counts
              FROM (SELECT e.event, pg_catalog.count(*) AS n
                      FROM hydra.coordinate(batch, failed_retention) e
                     GROUP BY e.event) c;
        EXCEPTION WHEN serialization_failure OR deadlock_detected OR lock_not_available THEN
            GET STACKED DIAGNOSTICS v_state = RETURNED_SQLSTATE, v_message = MESSAGE_TEXT;
            retried := retried OPERATOR(pg_catalog.+) 1;
            v_counts := NULL;
            RAISE WARNING 'hydramq: coordinate_loop round % rolled back (%: %), retried next',
                rounds, v_state, v_message;
        END;
        COMMIT;

        IF v_counts IS NOT NULL THEN
            SELECT pg_catalog.jsonb_object_agg(t.key, t.n)
              INTO transitions
              FROM (SELECT a.key, pg_catalog.sum(a.n) AS n
                      FROM (SELECT j.key, j.value::bigint AS n
                              FROM pg_catalog.jsonb_each_text(transitions) j
                            UNION ALL
                            SELECT j.key, j.value::bigint
                              FROM pg_catalog.jsonb_each_text(v_counts) j) a
                     GROUP BY a.key) t;
        END IF;

        EXIT WHEN pg_catalog.clock_timestamp() OPERATOR(pg_catalog.>=) v_end;
        -- A full batch of some kind of work: more is probably due, go again at once.
        IF v_events OPERATOR(pg_catalog.<) batch THEN
            PERFORM pg_catalog.pg_sleep(LEAST(
                poll_secs,
                pg_catalog.date_part('epoch', v_end OPERATOR(pg_catalog.-)
                                              pg_catalog.clock_timestamp())::numeric));
            EXIT WHEN pg_catalog.clock_timestamp() OPERATOR(pg_catalog.>=) v_end;
        END IF;
    END LOOP;

    -- pg_cron records only a command tag: this line in the server log says what a run did.
    RAISE LOG 'hydramq: coordinate_loop: % rounds in % s, transitions %, retried rounds %',
        rounds,
        pg_catalog.round(pg_catalog.date_part('epoch', pg_catalog.clock_timestamp()
                                                OPERATOR(pg_catalog.-) v_started)::numeric, 1),
        transitions, retried;
END
$$;

COMMENT ON PROCEDURE hydra.coordinate_loop(interval, numeric, integer, interval, integer,
                                           pg_catalog.jsonb, integer) IS
'For pg_cron, whose shortest interval is a minute: CALL hydra.coordinate_loop() runs
hydra.coordinate(batch, failed_retention) round after round, committing after each and sleeping
poll_secs between rounds that found less than a full batch, until the end of the period it
started in (periods count from midnight UTC: the default 1 minute ends at the next whole
minute, just as a "* * * * *" job runs again). Due work is thus handled within about poll_secs.
Must be called on its own, outside a transaction block. Returns rounds, transitions (a count
per event name) and retried (rounds rolled back by a transient error and tried again); the
server log gets the same as one LOG line. Needs hydra.grant_admin.';
