"""Every SQL statement the driver sends, one named constant per ``hydra`` function.

The driver never decides queue behaviour: each statement here calls one function of the
extension's public API (docs/design.md) and selects its result columns explicitly, so that
columns the extension adds later do not shift what the parsers in :mod:`hydramq.calls` read.

Functions with many optional named arguments (``enqueue``, ``enqueue_many``, ``schedule_set``)
are rendered by :func:`named_call` from a fixed table of argument names and their SQL types:
only the options a caller passes are sent, so the extension's own defaults stay the only
defaults, and every value is cast to the declared type (``float`` → ``numeric``, ``list[int]``
→ ``bigint[]``) so that function resolution never depends on how psycopg typed a value.
Values always travel as query parameters; names are never taken from user input.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache
from typing import Final

# -- option tables -------------------------------------------------------------------------

#: Named options of ``hydra.enqueue`` after ``payload``, with their SQL types.
ENQUEUE_OPTION_TYPES: Final[dict[str, str]] = {
    "queue": "text",
    "channel": "text",
    "priority": "integer",
    "name": "text",
    "num_attempts": "integer",
    "lock_secs": "numeric",
    "lock_secs_factor": "numeric",
    "delay_secs": "numeric",
    "depends_on": "bigint[]",
    "cascade_failure": "boolean",
    "max_processing_secs": "numeric",
}

#: Named options of ``hydra.schedule_set`` after ``name, cron, payload``.
SCHEDULE_OPTION_TYPES: Final[dict[str, str]] = {
    "queue": "text",
    "channel": "text",
    "tz": "text",
    "priority": "integer",
    "num_attempts": "integer",
    "lock_secs": "numeric",
    "lock_secs_factor": "numeric",
    "max_processing_secs": "numeric",
}


@lru_cache(maxsize=256)
def named_call(
    select: str, function: str, leading: tuple[tuple[str, str], ...], options: tuple[str, ...]
) -> str:
    """Render ``SELECT <select> FROM <function>(<leading>, opt => %(opt)s::type, ...)``.

    ``leading`` holds ``(parameter, sql_type)`` pairs passed positionally; ``options`` the
    names of the named arguments to pass, each of which must be a key of the function's option
    table. Cached per distinct set of options, so the text is stable and psycopg can prepare it.
    """
    table = _OPTION_TABLES[function]
    parts = [f"%({param})s::{sql_type}" for param, sql_type in leading]
    for opt in options:
        sql_type = table.get(opt)
        if sql_type is None:
            raise TypeError(f"{function}() got an unexpected option {opt!r}")
        parts.append(f"{opt} => %({opt})s::{sql_type}")
    return f"SELECT {select} FROM {function}({', '.join(parts)})"


def option_names(options: Iterable[str]) -> tuple[str, ...]:
    """Canonical (sorted) option tuple, so that equal option sets share one cached text."""
    return tuple(sorted(options))


# -- producer ------------------------------------------------------------------------------

ENQUEUE: Final = "hydra.enqueue"
ENQUEUE_SELECT: Final = "result, message_id"
ENQUEUE_MANY: Final = "hydra.enqueue_many"
ENQUEUE_MANY_SELECT: Final = "ord, result, message_id"

# -- worker --------------------------------------------------------------------------------

#: The payload comes as JSON text, decoded per message by the driver (calls.decode_payload):
#: psycopg's jsonb loader would fail the whole fetch on one payload Python cannot decode.
_LEASED_COLUMNS: Final = (
    "id, queue, channel, payload::text, priority, name, attempt, num_attempts, lease_token,"
    " lease_expires_at, enqueued_at, failed_parents"
)

DEQUEUE: Final = (
    f"SELECT {_LEASED_COLUMNS}"
    " FROM hydra.dequeue(queues => %(queues)s::text[], batch => %(batch)s::integer)"
)

#: Same as DEQUEUE plus the lease length measured on the server's clock (seconds), so that
#: the worker times heartbeats without trusting the client's clock.
DEQUEUE_FOR_WORKER: Final = (
    f"SELECT {_LEASED_COLUMNS},"
    " extract(epoch FROM lease_expires_at - pg_catalog.now())::float8 AS lease_secs"
    " FROM hydra.dequeue(queues => %(queues)s::text[], batch => %(batch)s::integer)"
)

COMPLETE: Final = "SELECT hydra.complete(%(message_id)s::bigint, %(lease_token)s::uuid)"

COMPLETE_MANY: Final = (
    "SELECT id FROM hydra.complete_many(%(message_ids)s::bigint[], %(lease_tokens)s::uuid[]) AS id"
)

_FAIL_COLUMNS: Final = "message_id, outcome, attempt, available_at"

FAIL: Final = (
    f"SELECT {_FAIL_COLUMNS} FROM hydra.fail(%(message_id)s::bigint, %(lease_token)s::uuid,"
    " error => %(error)s::text, retry => %(retry)s::boolean)"
)

FAIL_MANY: Final = (
    f"SELECT {_FAIL_COLUMNS} FROM hydra.fail_many(%(message_ids)s::bigint[],"
    " %(lease_tokens)s::uuid[], errors => %(errors)s::text[], retry => %(retry)s::boolean)"
)

#: New lease deadline (NULL when the lease is no longer held) and its distance from the
#: server's now() in seconds.
HEARTBEAT: Final = (
    "SELECT h, extract(epoch FROM h - pg_catalog.now())::float8"
    " FROM hydra.heartbeat(%(message_id)s::bigint, %(lease_token)s::uuid,"
    " extend_secs => %(extend_secs)s::numeric) AS h"
)

WORKER_IDLE: Final = "SELECT hydra.worker_idle(%(queues)s::text[])"
WORKER_BUSY: Final = "SELECT hydra.worker_busy()"

#: The channel ``hydra.enqueue`` NOTIFYs (payload: queue name) while an idle worker waits.
NOTIFY_CHANNEL: Final = "hydra_enqueue"
LISTEN: Final = "LISTEN hydra_enqueue"

# -- admin ---------------------------------------------------------------------------------

CHANNEL_POLICY_SET: Final = (
    "SELECT hydra.channel_policy_set(%(channel)s::text,"
    " max_concurrency => %(max_concurrency)s::integer, max_size => %(max_size)s::integer,"
    " queue => %(queue)s::text)"
)

CHANNEL_POLICY_CLEAR: Final = (
    "SELECT hydra.channel_policy_clear(%(channel)s::text, queue => %(queue)s::text)"
)

SCHEDULE_SET: Final = "hydra.schedule_set"
SCHEDULE_SET_SELECT: Final = "*"

_OPTION_TABLES: Final[dict[str, dict[str, str]]] = {
    ENQUEUE: ENQUEUE_OPTION_TYPES,
    ENQUEUE_MANY: ENQUEUE_OPTION_TYPES,
    SCHEDULE_SET: SCHEDULE_OPTION_TYPES,
}

SCHEDULE_CLEAR: Final = (
    "SELECT hydra.schedule_clear(%(name)s::text, queue => %(queue)s::text,"
    " channel => %(channel)s::text)"
)

SCHEDULE_LIST: Final = (
    "SELECT queue, channel, name, cron, tz, next_fire_at, last_fire_at, last_error"
    " FROM hydra.schedules"
    " WHERE %(queue)s::text IS NULL OR queue = %(queue)s::text"
    " ORDER BY queue, channel NULLS FIRST, name"
)

CRON_NEXT: Final = "SELECT hydra.cron_next(%(expr)s::text, %(after)s::timestamptz, %(tz)s::text)"

COORDINATE: Final = (
    "SELECT event, message_id, queue, channel, detail FROM hydra.coordinate(%(batch)s::integer)"
)

# -- inspection ----------------------------------------------------------------------------
# Read-only views for operators (``hydramq status``, ``Client.inspect``). They read
# hydra.message's columns (docs/design.md; channel '' is the default channel) and decide nothing.

INSPECT_MESSAGE: Final = (
    "SELECT id, queue, NULLIF(channel, ''), state, payload::text, NULLIF(prio, -2147483648), name,"
    " attempt, num_attempts, lease_expires_at, available_at, enqueued_at, last_error"
    " FROM hydra.message WHERE id = %(message_id)s::bigint"
)

QUEUE_STATUS: Final = (
    "SELECT queue, channel, pending, ready, parked, processing, locked, failed"
    " FROM hydra.channel_status"
    " WHERE %(queue)s::text IS NULL OR queue = %(queue)s::text"
    " ORDER BY queue, channel NULLS FIRST"
)

CHANNEL_POLICIES: Final = (
    "SELECT queue, channel, max_concurrency, max_size, in_flight FROM hydra.channel_policies"
    " WHERE %(queue)s::text IS NULL OR queue = %(queue)s::text"
    " ORDER BY queue, channel"
)

EXTENSION_VERSION: Final = (
    "SELECT extversion FROM pg_catalog.pg_extension WHERE extname = 'hydramq'"
)
