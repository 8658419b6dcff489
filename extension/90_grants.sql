-- Privileges. Nothing is granted to PUBLIC; the public API runs as SECURITY DEFINER with a
-- pinned search_path, so a role needs only EXECUTE on the functions of its job:
-- producer (enqueue, read schedules), worker (dequeue and settle), admin (everything else).
-- The extension creates no roles: grant_* helpers grant to roles the DBA made.

DO $$
DECLARE
    v_fn regprocedure;
BEGIN
    -- Functions are executable by PUBLIC by default: take that back from every one of ours
    -- (ROUTINE: procedures too -- ON FUNCTION refuses a procedure).
    FOR v_fn IN
        SELECT p.oid::regprocedure FROM pg_catalog.pg_proc p
         WHERE p.pronamespace = 'hydra'::regnamespace
    LOOP
        EXECUTE format('REVOKE ALL ON ROUTINE %s FROM PUBLIC', v_fn);
    END LOOP;
END
$$;

ALTER FUNCTION hydra.enqueue(jsonb, text, text, integer, text, integer, numeric, numeric,
                             numeric, bigint[], boolean, numeric) SECURITY DEFINER;
ALTER FUNCTION hydra.enqueue_many(jsonb, text, text, integer, text, integer, numeric, numeric,
                                  numeric, bigint[], boolean, numeric) SECURITY DEFINER;
ALTER FUNCTION hydra.dequeue(text, integer, text[]) SECURITY DEFINER;
ALTER FUNCTION hydra.complete(bigint, uuid) SECURITY DEFINER;
ALTER FUNCTION hydra.complete_many(bigint[], uuid[]) SECURITY DEFINER;
ALTER FUNCTION hydra.fail(bigint, uuid, text, boolean) SECURITY DEFINER;
ALTER FUNCTION hydra.fail_many(bigint[], uuid[], text[], boolean, boolean[]) SECURITY DEFINER;
ALTER FUNCTION hydra.heartbeat(bigint, uuid, numeric) SECURITY DEFINER;
ALTER FUNCTION hydra.worker_idle(text[]) SECURITY DEFINER;
ALTER FUNCTION hydra.worker_busy() SECURITY DEFINER;
ALTER FUNCTION hydra.channel_policy_set(text, integer, integer, text) SECURITY DEFINER;
ALTER FUNCTION hydra.channel_policy_clear(text, text) SECURITY DEFINER;
ALTER FUNCTION hydra.queue_set(text, integer) SECURITY DEFINER;
ALTER FUNCTION hydra.queue_clear(text) SECURITY DEFINER;
ALTER FUNCTION hydra.coordinate(integer, interval) SECURITY DEFINER;

-- The functions and views each job may use, in one place. Objects another file has not
-- created are left out (to_regprocedure), so this list may name every planned one.
CREATE OR REPLACE FUNCTION hydra._job_objects(p_job text)
RETURNS TABLE (kind text, object text)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
    SELECT j.kind, j.object
      FROM (VALUES
        ('producer', 'function', 'hydra.enqueue(jsonb,text,text,integer,text,integer,numeric,numeric,numeric,bigint[],boolean,numeric)'),
        ('producer', 'function', 'hydra.enqueue_many(jsonb,text,text,integer,text,integer,numeric,numeric,numeric,bigint[],boolean,numeric)'),
        ('producer', 'function', 'hydra.cron_next(text,timestamp with time zone,text)'),
        ('producer', 'function', 'hydra.cron_validate(text)'),
        ('producer', 'view', 'hydra.schedules'),
        ('worker', 'function', 'hydra.dequeue(text,integer,text[])'),
        ('worker', 'function', 'hydra.complete(bigint,uuid)'),
        ('worker', 'function', 'hydra.complete_many(bigint[],uuid[])'),
        ('worker', 'function', 'hydra.fail(bigint,uuid,text,boolean)'),
        ('worker', 'function', 'hydra.fail_many(bigint[],uuid[],text[],boolean,boolean[])'),
        ('worker', 'function', 'hydra.heartbeat(bigint,uuid,numeric)'),
        ('worker', 'function', 'hydra.worker_idle(text[])'),
        ('worker', 'function', 'hydra.worker_busy()'),
        ('admin', 'function', 'hydra.channel_policy_set(text,integer,integer,text)'),
        ('admin', 'function', 'hydra.channel_policy_clear(text,text)'),
        ('admin', 'function', 'hydra.queue_set(text,integer)'),
        ('admin', 'function', 'hydra.queue_clear(text)'),
        ('admin', 'view', 'hydra.queues'),
        ('admin', 'function', 'hydra.coordinate(integer,interval)'),
        ('admin', 'function', 'hydra.coordinate_loop(interval,numeric,integer,interval,integer,jsonb,integer)'),
        ('admin', 'function', 'hydra.schedule_set(text,text,jsonb,text,text,text,integer,integer,numeric,numeric,numeric)'),
        ('admin', 'function', 'hydra.schedule_clear(text,text,text)'),
        ('admin', 'view', 'hydra.schedules'),
        ('admin', 'view', 'hydra.channel_policies'),
        ('admin', 'view', 'hydra.channel_status')
      ) AS j(job, kind, object)
     WHERE j.job = p_job
       AND CASE j.kind WHEN 'function' THEN to_regprocedure(j.object) IS NOT NULL
                       ELSE to_regclass(j.object) IS NOT NULL END;
END;

CREATE OR REPLACE FUNCTION hydra._grant_job(p_role regrole, p_job text)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_obj record;
BEGIN
    -- Object names come from the fixed list above; the role is quoted by regrole's output.
    EXECUTE format('GRANT USAGE ON SCHEMA hydra TO %s', p_role);
    FOR v_obj IN SELECT * FROM hydra._job_objects(p_job) LOOP
        IF v_obj.kind = 'function' THEN
            EXECUTE format('GRANT EXECUTE ON ROUTINE %s TO %s',  -- procedures too
                           to_regprocedure(v_obj.object), p_role);
        ELSE
            EXECUTE format('GRANT SELECT ON %s TO %s', to_regclass(v_obj.object), p_role);
        END IF;
    END LOOP;
END
$$;

CREATE OR REPLACE FUNCTION hydra.grant_producer(role regrole)
RETURNS void
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
    SELECT hydra._grant_job(role, 'producer');
END;

CREATE OR REPLACE FUNCTION hydra.grant_worker(role regrole)
RETURNS void
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
    SELECT hydra._grant_job(role, 'worker');
END;

CREATE OR REPLACE FUNCTION hydra.grant_admin(role regrole)
RETURNS void
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
    SELECT hydra._grant_job(role, 'producer');
    SELECT hydra._grant_job(role, 'worker');
    SELECT hydra._grant_job(role, 'admin');
END;

-- An upgrade gives the roles that already hold a job the objects the job gained since (a fresh
-- install has no such role). A role holds a job when it may run the job's marker function;
-- an upgrade step that replaces a marker's signature must keep its grantees.
DO $$
DECLARE
    v_grant record;
BEGIN
    FOR v_grant IN
        SELECT DISTINCT j.job, a.grantee::regrole AS grantee
          FROM (VALUES ('producer', 'hydra.enqueue_many(jsonb,text,text,integer,text,integer,numeric,numeric,numeric,bigint[],boolean,numeric)'),
                       ('worker', 'hydra.dequeue(text,integer,text[])'),
                       ('admin', 'hydra.coordinate(integer,interval)')) AS j(job, marker)
          JOIN pg_catalog.pg_proc p ON p.oid = pg_catalog.to_regprocedure(j.marker)
         CROSS JOIN LATERAL pg_catalog.aclexplode(p.proacl) a
         WHERE a.privilege_type = 'EXECUTE'
           AND a.grantee <> 0                -- PUBLIC never holds a job
           AND a.grantee <> p.proowner
    LOOP
        PERFORM hydra._grant_job(v_grant.grantee, v_grant.job);
    END LOOP;
END
$$;

COMMENT ON FUNCTION hydra.grant_producer(regrole) IS
'Lets a role enqueue (hydra.enqueue, hydra.enqueue_many) and read schedules.';
COMMENT ON FUNCTION hydra.grant_worker(regrole) IS
'Lets a role dequeue, complete, fail and heartbeat messages.';
COMMENT ON FUNCTION hydra.grant_admin(regrole) IS
'Lets a role do everything: policies, schedules, coordination, status views, plus producer
and worker rights.';

REVOKE ALL ON FUNCTION hydra._job_objects(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION hydra._grant_job(regrole, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION hydra.grant_producer(regrole) FROM PUBLIC;
REVOKE ALL ON FUNCTION hydra.grant_worker(regrole) FROM PUBLIC;
REVOKE ALL ON FUNCTION hydra.grant_admin(regrole) FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA hydra FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA hydra FROM PUBLIC;
