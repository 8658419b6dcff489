-- Read-only views for operators and the CLI's status command.

CREATE OR REPLACE VIEW hydra.channel_status AS
SELECT m.queue,
       NULLIF(m.channel, '') AS channel,
       count(*) FILTER (WHERE m.state = 'pending')    AS pending,
       count(*) FILTER (WHERE m.state = 'ready')      AS ready,
       count(*) FILTER (WHERE m.state = 'parked')     AS parked,
       count(*) FILTER (WHERE m.state = 'processing') AS processing,
       count(*) FILTER (WHERE m.state = 'locked')     AS locked,
       count(*) FILTER (WHERE m.state = 'failed')     AS failed
  FROM hydra.message m
 GROUP BY m.queue, m.channel;

COMMENT ON VIEW hydra.channel_status IS
'Messages per queue and channel by state (parked = ready but held back by max_concurrency).';
