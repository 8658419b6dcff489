-- Queue settings (SPEC §15: queues are objects with settings). hydra.queue holds the queues
-- that have any; a queue never set up works with the defaults, and needs no row. Settings the
-- hot paths need are read only when they can matter (max_payload_bytes: for a payload above
-- 1024 bytes, the smallest limit allowed; see hydra._payload_problem).
-- Locks: the queue's settings row only (upsert / delete).

CREATE OR REPLACE FUNCTION hydra.queue_set(queue text, max_payload_bytes integer DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    -- Replaces every setting of the queue (NULL = the default), in one upsert.
    PERFORM hydra._check_name('queue', queue_set.queue, false);
    IF queue_set.max_payload_bytes NOT BETWEEN 1024 AND 268435455 THEN
        PERFORM hydra._invalid('max_payload_bytes',
            'must be between 1024 and 268435455 (NULL: the default, 1048576)');
    END IF;
    INSERT INTO hydra.queue AS q (name, max_payload_bytes)
    VALUES (queue_set.queue, queue_set.max_payload_bytes)
    ON CONFLICT ON CONSTRAINT queue_pkey DO UPDATE
       SET max_payload_bytes = EXCLUDED.max_payload_bytes, updated_at = pg_catalog.now();
END
$$;

COMMENT ON FUNCTION hydra.queue_set(text, integer) IS
'Sets the settings of a queue (a queue needs none: without them it uses the defaults).
max_payload_bytes: the largest payload enqueue accepts (pg_column_size of the jsonb value),
1024 to 268435455; NULL = the default, 1048576 (1 MiB). A larger payload is refused with
22023 by hydra.enqueue, hydra.enqueue_many and hydra.schedule_set (and a schedule whose
payload no longer fits skips its ticks, with last_error). Messages already stored are kept.';

CREATE OR REPLACE FUNCTION hydra.queue_clear(queue text)
RETURNS boolean
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    -- Back to every default: the settings row goes.
    PERFORM hydra._check_name('queue', queue_clear.queue, false);
    DELETE FROM hydra.queue q WHERE q.name = queue_clear.queue;
    RETURN FOUND;
END
$$;

COMMENT ON FUNCTION hydra.queue_clear(text) IS
'Removes the settings of a queue: it uses the defaults again. Returns false if it had none.';

CREATE OR REPLACE VIEW hydra.queues AS
SELECT q.name AS queue, coalesce(q.max_payload_bytes, 1048576) AS max_payload_bytes,
       q.updated_at
  FROM hydra.queue q;

COMMENT ON VIEW hydra.queues IS
'Queues with settings, each with its effective values (defaults filled in).';
