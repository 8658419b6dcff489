-- hydramq 0.1.0 -> 0.2.0: the changes to objects that hold data (extension/00_schema.sql).
-- Runs first in sql/hydramq--0.1.0--0.2.0.sql; the code files (10_ and up) follow it, and
-- recreate every function, view, comment and grant (see docs/releasing.md).
-- Rules: new columns go last (as in 00_schema.sql); a function whose signature or result type
-- changes is dropped here first; data is converted here, in this transaction.

-- Issue 9, item 4: enqueue no longer locks parents; new edges wait in hydra.edge_check until
-- coordinate() has checked them. 0.1.0's edges were attached under its parent locks: none
-- needs a check.
CREATE TABLE hydra.edge_check (
    child_id  bigint NOT NULL,
    parent_id bigint NOT NULL,
    CONSTRAINT edge_check_pkey PRIMARY KEY (child_id, parent_id)
);
SELECT pg_catalog.pg_extension_config_dump('hydra.edge_check', '');

-- Issue 9, item 6: queue settings, starting with the payload size limit.
CREATE TABLE hydra.queue (
    name              text COLLATE "C" NOT NULL,
    max_payload_bytes integer,                     -- NULL: the default, 1048576 (1 MiB)
    updated_at        timestamptz NOT NULL DEFAULT pg_catalog.now(),
    CONSTRAINT queue_pkey PRIMARY KEY (name)
);

COMMENT ON TABLE hydra.queue IS
    'Queues with settings; a queue without a row uses the defaults. Use hydra.queue_set.';

SELECT pg_catalog.pg_extension_config_dump('hydra.queue', '');

-- Issue 9, item 6: de-duplication names are scoped to (queue, channel), no longer shared by
-- every producer of a queue. 0.1.0's names were unique per queue, so per channel too.
DROP INDEX hydra.message_dedup_idx;
CREATE UNIQUE INDEX message_dedup_idx ON hydra.message (queue, channel, name)
    WHERE name IS NOT NULL AND attempt = 0 AND state IN ('pending', 'ready', 'parked');
