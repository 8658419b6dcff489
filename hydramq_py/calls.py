"""One builder per ``hydra`` function: the statement, its parameters and its result parser.

A :class:`Call` is plain data; the sync and async executors in :mod:`hydramq.client` run it
on a connection and feed the rows to ``parse``. This is the only place where Python values
become SQL parameters and rows become typed results, so the sync and async APIs cannot drift.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Final, Generic, TypedDict, TypeVar
from uuid import UUID

from psycopg.types.json import Jsonb

from . import sql
from .events import Event, event_from_row
from .models import (
    ChannelPolicy,
    ChannelStatus,
    EnqueueResult,
    FailResult,
    Message,
    MessageInfo,
    Schedule,
)

T = TypeVar("T")
Row = tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    """A statement with its parameters and the function that turns its rows into ``T``."""

    query: str
    params: Mapping[str, Any]
    parse: Callable[[list[Row]], T]


class EnqueueOptions(TypedDict, total=False):
    """Named options of ``hydra.enqueue`` (SPEC §4). Omitted options take the extension's
    defaults; ``None`` means omitted."""

    queue: str
    channel: str | None
    priority: int | None
    name: str | None
    num_attempts: int
    lock_secs: float
    lock_secs_factor: float
    delay_secs: float
    depends_on: Sequence[int] | None
    cascade_failure: bool
    max_processing_secs: float


class ScheduleOptions(TypedDict, total=False):
    """Named options of ``hydra.schedule_set`` after ``name, cron, payload``."""

    queue: str
    channel: str | None
    tz: str
    priority: int | None
    num_attempts: int
    lock_secs: float
    lock_secs_factor: float
    max_processing_secs: float


class MessageSpec(TypedDict, total=False):
    """One message of ``enqueue_many``: ``payload`` plus any per-message option."""

    payload: Any
    channel: str | None
    priority: int | None
    name: str | None
    num_attempts: int
    lock_secs: float
    lock_secs_factor: float
    delay_secs: float
    depends_on: Sequence[int] | None
    cascade_failure: bool
    max_processing_secs: float


def _present(options: Mapping[str, Any]) -> dict[str, Any]:
    """Drop options given as None (= use the extension's default)."""
    out: dict[str, Any] = {}
    for key, value in options.items():
        if value is None:
            continue
        if key == "depends_on":
            value = [int(v) for v in value]
        out[key] = value
    return out


# -- parsers -------------------------------------------------------------------------------


def _none(rows: list[Row]) -> None:
    return None


def _scalar(rows: list[Row]) -> Any:
    return rows[0][0] if rows else None


def _bool(rows: list[Row]) -> bool:
    return bool(_scalar(rows))


def _enqueue_result(rows: list[Row]) -> EnqueueResult:
    result, message_id = rows[0]
    return EnqueueResult(result, message_id)


def _enqueue_results(rows: list[Row]) -> list[EnqueueResult]:
    return [EnqueueResult(result, mid) for _ord, result, mid in sorted(rows, key=lambda r: r[0])]


#: Start of the error stored for a message whose payload the driver cannot decode.
UNDECODABLE: Final = "payload could not be decoded"


def decode_payload(text: str | None) -> tuple[Any, str | None]:
    """A payload fetched as JSON text → ``(value, None)``, or ``(None, error)`` when Python
    cannot hold it. PostgreSQL accepts JSON that ``json`` cannot load (arrays nested ~10,000
    deep raise RecursionError from ~1,000; integers over Python's 4,300-digit limit raise
    ValueError): decoding each payload here, instead of in psycopg's jsonb loader, keeps one
    such message from failing the fetch of its whole batch."""
    if text is None:
        return None, None
    try:
        return json.loads(text), None
    except (RecursionError, ValueError, MemoryError) as exc:
        return None, f"{UNDECODABLE}: {type(exc).__name__}: {exc}"


def message_from_row(row: Sequence[Any]) -> Message:
    """A ``hydra.leased_message`` row (columns in sql._LEASED_COLUMNS order; payload as JSON
    text) → Message, with ``payload_error`` set when the payload cannot be decoded."""
    (
        mid,
        queue,
        channel,
        payload,
        priority,
        name,
        attempt,
        num_attempts,
        token,
        expires,
        enqueued,
        failed_parents,
    ) = row[:12]
    payload, payload_error = decode_payload(payload)
    return Message(
        id=mid,
        queue=queue,
        channel=channel,
        payload=payload,
        priority=priority,
        name=name,
        attempt=attempt,
        num_attempts=num_attempts,
        lease_token=token,
        lease_expires_at=expires,
        enqueued_at=enqueued,
        failed_parents=tuple(failed_parents or ()),
        payload_error=payload_error,
    )


def _messages(rows: list[Row]) -> list[Message]:
    return [message_from_row(r) for r in rows]


def _leased(rows: list[Row]) -> list[tuple[Message, float]]:
    return [(message_from_row(r), float(r[12] or 0.0)) for r in rows]


def _ids(rows: list[Row]) -> list[int]:
    return [r[0] for r in rows]


def _fail_result(row: Row) -> FailResult:
    message_id, outcome, attempt, available_at = row
    return FailResult(message_id, outcome, attempt, available_at)


def _fail_results(rows: list[Row]) -> list[FailResult]:
    return [_fail_result(r) for r in rows]


def _heartbeat(rows: list[Row]) -> tuple[datetime, float] | None:
    if not rows or rows[0][0] is None:
        return None
    return rows[0][0], float(rows[0][1])


def _events(rows: list[Row]) -> list[Event]:
    return [event_from_row(*r) for r in rows]


def _message_info(rows: list[Row]) -> MessageInfo | None:
    if not rows:
        return None
    info = MessageInfo(*rows[0])
    payload, payload_error = decode_payload(info.payload)
    return replace(info, payload=payload, payload_error=payload_error)


_STATUS_STATES = ("pending", "ready", "parked", "processing", "locked", "failed")


def _status(rows: list[Row]) -> list[ChannelStatus]:
    return [
        ChannelStatus(
            r[0], r[1], {s: int(n) for s, n in zip(_STATUS_STATES, r[2:], strict=True) if n}
        )
        for r in rows
    ]


def _policies(rows: list[Row]) -> list[ChannelPolicy]:
    return [ChannelPolicy(*r) for r in rows]


def _schedules(rows: list[Row]) -> list[Schedule]:
    return [Schedule(*r) for r in rows]


# -- builders ------------------------------------------------------------------------------


def enqueue(payload: Any, options: Mapping[str, Any]) -> Call[EnqueueResult]:
    opts = _present(options)
    query = sql.named_call(
        sql.ENQUEUE_SELECT, sql.ENQUEUE, (("payload", "jsonb"),), sql.option_names(opts)
    )
    return Call(query, {"payload": Jsonb(payload), **opts}, _enqueue_result)


def enqueue_many(
    messages: Iterable[Mapping[str, Any]], defaults: Mapping[str, Any]
) -> Call[list[EnqueueResult]]:
    items: list[dict[str, Any]] = []
    for i, m in enumerate(messages, 1):
        if "payload" not in m:
            raise ValueError(f"messages: item {i} has no 'payload'")
        items.append(
            {"payload": m["payload"], **_present({k: v for k, v in m.items() if k != "payload"})}
        )
    opts = _present(defaults)
    query = sql.named_call(
        sql.ENQUEUE_MANY_SELECT,
        sql.ENQUEUE_MANY,
        (("messages", "jsonb"),),
        sql.option_names(opts),
    )
    return Call(query, {"messages": Jsonb(items), **opts}, _enqueue_results)


def dequeue(queues: Sequence[str], batch: int) -> Call[list[Message]]:
    return Call(sql.DEQUEUE, {"queues": list(queues), "batch": batch}, _messages)


def fail_undecodable(messages: Sequence[Message]) -> Call[list[FailResult]] | None:
    """Fail, without retry, the messages whose payload could not be decoded (their
    ``payload_error`` becomes the stored error); None when every payload decoded."""
    bad = [m for m in messages if m.payload_error is not None]
    if not bad:
        return None
    return fail_many(
        [m.id for m in bad], [m.lease_token for m in bad], [m.payload_error for m in bad], False
    )


def dequeue_for_worker(queues: Sequence[str], batch: int) -> Call[list[tuple[Message, float]]]:
    """Like :func:`dequeue`, each message with its lease length in seconds (server clock)."""
    return Call(sql.DEQUEUE_FOR_WORKER, {"queues": list(queues), "batch": batch}, _leased)


def complete(message_id: int, lease_token: UUID) -> Call[bool]:
    return Call(sql.COMPLETE, {"message_id": message_id, "lease_token": lease_token}, _bool)


def complete_many(message_ids: Sequence[int], lease_tokens: Sequence[UUID]) -> Call[list[int]]:
    return Call(
        sql.COMPLETE_MANY,
        {"message_ids": list(message_ids), "lease_tokens": list(lease_tokens)},
        _ids,
    )


def fail(message_id: int, lease_token: UUID, error: str | None, retry: bool) -> Call[FailResult]:
    return Call(
        sql.FAIL,
        {"message_id": message_id, "lease_token": lease_token, "error": error, "retry": retry},
        lambda rows: _fail_result(rows[0]),
    )


def fail_many(
    message_ids: Sequence[int],
    lease_tokens: Sequence[UUID],
    errors: Sequence[str | None] | None,
    retry: bool,
) -> Call[list[FailResult]]:
    return Call(
        sql.FAIL_MANY,
        {
            "message_ids": list(message_ids),
            "lease_tokens": list(lease_tokens),
            "errors": None if errors is None else list(errors),
            "retry": retry,
        },
        _fail_results,
    )


def heartbeat(
    message_id: int, lease_token: UUID, extend_secs: float | None
) -> Call[tuple[datetime, float] | None]:
    """New lease deadline and its distance in seconds, or None when the lease is lost."""
    return Call(
        sql.HEARTBEAT,
        {"message_id": message_id, "lease_token": lease_token, "extend_secs": extend_secs},
        _heartbeat,
    )


def worker_idle(queues: Sequence[str]) -> Call[None]:
    return Call(sql.WORKER_IDLE, {"queues": list(queues)}, _none)


def worker_busy() -> Call[None]:
    return Call(sql.WORKER_BUSY, {}, _none)


def channel_policy_set(
    channel: str, max_concurrency: int | None, max_size: int | None, queue: str
) -> Call[None]:
    return Call(
        sql.CHANNEL_POLICY_SET,
        {
            "channel": channel,
            "max_concurrency": max_concurrency,
            "max_size": max_size,
            "queue": queue,
        },
        _none,
    )


def channel_policy_clear(channel: str, queue: str) -> Call[bool]:
    return Call(sql.CHANNEL_POLICY_CLEAR, {"channel": channel, "queue": queue}, _bool)


def schedule_set(name: str, cron: str, payload: Any, options: Mapping[str, Any]) -> Call[datetime]:
    opts = _present(options)
    query = sql.named_call(
        sql.SCHEDULE_SET_SELECT,
        sql.SCHEDULE_SET,
        (("name", "text"), ("cron", "text"), ("payload", "jsonb")),
        sql.option_names(opts),
    )
    return Call(query, {"name": name, "cron": cron, "payload": Jsonb(payload), **opts}, _scalar)


def schedule_clear(name: str, queue: str, channel: str | None) -> Call[bool]:
    return Call(sql.SCHEDULE_CLEAR, {"name": name, "queue": queue, "channel": channel}, _bool)


def schedule_list(queue: str | None) -> Call[list[Schedule]]:
    return Call(sql.SCHEDULE_LIST, {"queue": queue}, _schedules)


def cron_next(expr: str, after: datetime, tz: str) -> Call[datetime | None]:
    return Call(sql.CRON_NEXT, {"expr": expr, "after": after, "tz": tz}, _scalar)


def coordinate(batch: int) -> Call[list[Event]]:
    return Call(sql.COORDINATE, {"batch": batch}, _events)


def inspect_message(message_id: int) -> Call[MessageInfo | None]:
    return Call(sql.INSPECT_MESSAGE, {"message_id": message_id}, _message_info)


def queue_status(queue: str | None) -> Call[list[ChannelStatus]]:
    return Call(sql.QUEUE_STATUS, {"queue": queue}, _status)


def channel_policies(queue: str | None) -> Call[list[ChannelPolicy]]:
    return Call(sql.CHANNEL_POLICIES, {"queue": queue}, _policies)
