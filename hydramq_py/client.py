"""The client API: one typed method per ``hydra`` function, sync and async.

:class:`Client` wraps a ``psycopg.Connection``, :class:`AsyncClient` a
``psycopg.AsyncConnection`` (either may come from a ``psycopg_pool`` pool). Both run every
call inside the caller's current transaction and never commit or roll back: a message exists
if and only if the caller's transaction commits. With an autocommit connection each call is
its own transaction.

Both classes are thin: each method builds a :class:`hydramq.calls.Call` (statement,
parameters, parser) and hands it to one executor, so the two APIs share every line of logic
and return identical results. Rows are always read as tuples, whatever ``row_factory`` the
caller's connection uses.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar
from uuid import UUID

import psycopg
from psycopg.rows import tuple_row

from . import calls
from .calls import Call, EnqueueOptions, MessageSpec, ScheduleOptions
from .events import Event
from .models import (
    ChannelPolicy,
    ChannelStatus,
    EnqueueResult,
    FailResult,
    Message,
    MessageInfo,
    Schedule,
)

if TYPE_CHECKING:  # typing.Unpack is 3.11+; typing_extensions ships with psycopg
    from typing_extensions import Unpack

log = logging.getLogger("hydramq.client")

T = TypeVar("T")


def run(conn: psycopg.Connection[Any], call: Call[T]) -> T:
    """Execute ``call`` on a sync connection, in its current transaction."""
    with conn.cursor(row_factory=tuple_row) as cur:
        cur.execute(call.query, call.params)
        rows = cur.fetchall() if cur.description is not None else []
    return call.parse(rows)


async def arun(conn: psycopg.AsyncConnection[Any], call: Call[T]) -> T:
    """Execute ``call`` on an async connection, in its current transaction."""
    async with conn.cursor(row_factory=tuple_row) as cur:
        await cur.execute(call.query, call.params)
        rows = await cur.fetchall() if cur.description is not None else []
    return call.parse(rows)


def _queues(queue: str | Sequence[str]) -> list[str]:
    return [queue] if isinstance(queue, str) else list(queue)


def _decoded(messages: list[Message]) -> list[Message]:
    """The messages whose payload decoded; logs the others (failed by the caller)."""
    for m in messages:
        if m.payload_error is not None:
            log.warning("message %s failed without retry: %s", m.id, m.payload_error)
    return [m for m in messages if m.payload_error is None]


class Client:
    """Sync API over one ``psycopg.Connection`` (runs in the caller's transaction).

    Example::

        with psycopg.connect(dsn) as conn:
            Client(conn).enqueue({"to": "a@b.c"}, channel="tenant-42")
        # committed on leaving the block
    """

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn

    def _run(self, call: Call[T]) -> T:
        return run(self.conn, call)

    # producer
    def enqueue(self, payload: Any, **options: Unpack[EnqueueOptions]) -> EnqueueResult:
        """``hydra.enqueue``: store one message; see :class:`EnqueueOptions`."""
        return self._run(calls.enqueue(payload, options))

    def enqueue_many(
        self,
        messages: Iterable[MessageSpec | Mapping[str, Any]],
        **defaults: Unpack[EnqueueOptions],
    ) -> list[EnqueueResult]:
        """``hydra.enqueue_many``: one result per message, in input order."""
        return self._run(calls.enqueue_many(messages, defaults))

    # admin
    def channel_policy_set(
        self,
        channel: str,
        *,
        max_concurrency: int | None = None,
        max_size: int | None = None,
        queue: str = "default",
    ) -> None:
        self._run(calls.channel_policy_set(channel, max_concurrency, max_size, queue))

    def channel_policy_clear(self, channel: str, *, queue: str = "default") -> bool:
        """Removes the channel's policy; False if it had none."""
        return self._run(calls.channel_policy_clear(channel, queue))

    def channel_policies(self, queue: str | None = None) -> list[ChannelPolicy]:
        return self._run(calls.channel_policies(queue))

    def schedule_set(
        self, name: str, cron: str, payload: Any, **options: Unpack[ScheduleOptions]
    ) -> datetime:
        """``hydra.schedule_set``: upsert; returns the next fire time."""
        return self._run(calls.schedule_set(name, cron, payload, options))

    def schedule_clear(
        self, name: str, *, queue: str = "default", channel: str | None = None
    ) -> bool:
        return self._run(calls.schedule_clear(name, queue, channel))

    def schedule_list(self, queue: str | None = None) -> list[Schedule]:
        return self._run(calls.schedule_list(queue))

    def cron_next(self, expr: str, after: datetime, tz: str = "UTC") -> datetime | None:
        return self._run(calls.cron_next(expr, after, tz))

    def coordinate(self, batch: int = 1000) -> list[Event]:
        """``hydra.coordinate``: one bounded batch of due work, as typed events."""
        return self._run(calls.coordinate(batch))

    # inspection
    def inspect(self, message_id: int) -> MessageInfo | None:
        return self._run(calls.inspect_message(message_id))

    def queue_status(self, queue: str | None = None) -> list[ChannelStatus]:
        return self._run(calls.queue_status(queue))

    # worker
    def dequeue(self, queue: str | Sequence[str] = "default", batch: int = 1) -> list[Message]:
        """``hydra.dequeue``. A message whose payload cannot be decoded (see
        :attr:`Message.payload_error`) is failed without retry, in the same transaction, and
        left out of the result."""
        messages = self._run(calls.dequeue(_queues(queue), batch))
        undecodable = calls.fail_undecodable(messages)
        if undecodable is None:
            return messages
        self._run(undecodable)
        return _decoded(messages)

    def complete(self, message_id: int, lease_token: UUID) -> bool:
        return self._run(calls.complete(message_id, lease_token))

    def complete_many(self, message_ids: Sequence[int], lease_tokens: Sequence[UUID]) -> list[int]:
        return self._run(calls.complete_many(message_ids, lease_tokens))

    def fail(
        self, message_id: int, lease_token: UUID, *, error: str | None = None, retry: bool = True
    ) -> FailResult:
        return self._run(calls.fail(message_id, lease_token, error, retry))

    def fail_many(
        self,
        message_ids: Sequence[int],
        lease_tokens: Sequence[UUID],
        *,
        errors: Sequence[str | None] | None = None,
        retry: bool = True,
    ) -> list[FailResult]:
        return self._run(calls.fail_many(message_ids, lease_tokens, errors, retry))

    def heartbeat(
        self, message_id: int, lease_token: UUID, *, extend_secs: float | None = None
    ) -> datetime | None:
        hb = self._run(calls.heartbeat(message_id, lease_token, extend_secs))
        return None if hb is None else hb[0]


class AsyncClient:
    """Async API over one ``psycopg.AsyncConnection``; same methods as :class:`Client`."""

    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self.conn = conn

    async def _run(self, call: Call[T]) -> T:
        return await arun(self.conn, call)

    # producer
    async def enqueue(self, payload: Any, **options: Unpack[EnqueueOptions]) -> EnqueueResult:
        return await self._run(calls.enqueue(payload, options))

    async def enqueue_many(
        self,
        messages: Iterable[MessageSpec | Mapping[str, Any]],
        **defaults: Unpack[EnqueueOptions],
    ) -> list[EnqueueResult]:
        return await self._run(calls.enqueue_many(messages, defaults))

    # admin
    async def channel_policy_set(
        self,
        channel: str,
        *,
        max_concurrency: int | None = None,
        max_size: int | None = None,
        queue: str = "default",
    ) -> None:
        await self._run(calls.channel_policy_set(channel, max_concurrency, max_size, queue))

    async def channel_policy_clear(self, channel: str, *, queue: str = "default") -> bool:
        return await self._run(calls.channel_policy_clear(channel, queue))

    async def channel_policies(self, queue: str | None = None) -> list[ChannelPolicy]:
        return await self._run(calls.channel_policies(queue))

    async def schedule_set(
        self, name: str, cron: str, payload: Any, **options: Unpack[ScheduleOptions]
    ) -> datetime:
        return await self._run(calls.schedule_set(name, cron, payload, options))

    async def schedule_clear(
        self, name: str, *, queue: str = "default", channel: str | None = None
    ) -> bool:
        return await self._run(calls.schedule_clear(name, queue, channel))

    async def schedule_list(self, queue: str | None = None) -> list[Schedule]:
        return await self._run(calls.schedule_list(queue))

    async def cron_next(self, expr: str, after: datetime, tz: str = "UTC") -> datetime | None:
        return await self._run(calls.cron_next(expr, after, tz))

    async def coordinate(self, batch: int = 1000) -> list[Event]:
        return await self._run(calls.coordinate(batch))

    # inspection
    async def inspect(self, message_id: int) -> MessageInfo | None:
        return await self._run(calls.inspect_message(message_id))

    async def queue_status(self, queue: str | None = None) -> list[ChannelStatus]:
        return await self._run(calls.queue_status(queue))

    # worker
    async def dequeue(
        self, queue: str | Sequence[str] = "default", batch: int = 1
    ) -> list[Message]:
        """As :meth:`Client.dequeue`."""
        messages = await self._run(calls.dequeue(_queues(queue), batch))
        undecodable = calls.fail_undecodable(messages)
        if undecodable is None:
            return messages
        await self._run(undecodable)
        return _decoded(messages)

    async def complete(self, message_id: int, lease_token: UUID) -> bool:
        return await self._run(calls.complete(message_id, lease_token))

    async def complete_many(
        self, message_ids: Sequence[int], lease_tokens: Sequence[UUID]
    ) -> list[int]:
        return await self._run(calls.complete_many(message_ids, lease_tokens))

    async def fail(
        self, message_id: int, lease_token: UUID, *, error: str | None = None, retry: bool = True
    ) -> FailResult:
        return await self._run(calls.fail(message_id, lease_token, error, retry))

    async def fail_many(
        self,
        message_ids: Sequence[int],
        lease_tokens: Sequence[UUID],
        *,
        errors: Sequence[str | None] | None = None,
        retry: bool = True,
    ) -> list[FailResult]:
        return await self._run(calls.fail_many(message_ids, lease_tokens, errors, retry))

    async def heartbeat(
        self, message_id: int, lease_token: UUID, *, extend_secs: float | None = None
    ) -> datetime | None:
        hb = await self._run(calls.heartbeat(message_id, lease_token, extend_secs))
        return None if hb is None else hb[0]
