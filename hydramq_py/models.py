"""Typed values the driver hands to users: leased messages and the results of SQL calls.

Each class mirrors one row type of the extension's public API (docs/design.md); the fields
keep the SQL column names so that the two read alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final
from uuid import UUID

#: ``hydra.enqueue`` result values.
ENQUEUED: Final = "enqueued"
DEDUPLICATED: Final = "deduplicated"
DROPPED: Final = "dropped"

#: ``hydra.fail`` outcome values.
OUTCOME_LOCKED: Final = "locked"
OUTCOME_FAILED: Final = "failed"
OUTCOME_STALE: Final = "stale"


@dataclass(frozen=True, slots=True)
class Message:
    """A message leased to this worker (one row of ``hydra.dequeue``).

    ``lease_token`` must be presented to complete, fail or heartbeat the message; once the
    lease expired and the message was re-delivered, the token is stale and those calls no
    longer act. ``failed_parents`` lists the parents that failed (only non-empty for a child
    enqueued with ``cascade_failure => false``). ``channel`` is ``None`` for the default channel.

    ``payload_error`` is set (and ``payload`` is None) when the stored JSON cannot be turned into
    Python values (nested deeper than Python's recursion limit, an integer over Python's digit
    limit): such a message must not reach a handler. The worker and ``Client.dequeue`` fail it
    without retry, with this text as its error, and go on with the rest of the batch.
    """

    id: int
    queue: str
    channel: str | None
    payload: Any
    priority: int | None
    name: str | None
    attempt: int
    num_attempts: int
    lease_token: UUID
    lease_expires_at: datetime
    enqueued_at: datetime
    failed_parents: tuple[int, ...] = ()
    payload_error: str | None = None

    @property
    def is_last_attempt(self) -> bool:
        """True when a failure of this attempt finishes the message."""
        return self.attempt >= self.num_attempts


@dataclass(frozen=True, slots=True)
class EnqueueResult:
    """What ``hydra.enqueue`` did: ``result`` is 'enqueued', 'deduplicated' or 'dropped'.

    For 'deduplicated', ``message_id`` is the id of the existing message of that name.
    """

    result: str
    message_id: int | None

    @property
    def enqueued(self) -> bool:
        return self.result == ENQUEUED

    @property
    def deduplicated(self) -> bool:
        return self.result == DEDUPLICATED

    @property
    def dropped(self) -> bool:
        return self.result == DROPPED


@dataclass(frozen=True, slots=True)
class FailResult:
    """What ``hydra.fail`` did: ``outcome`` is 'locked' (retries at ``available_at``),
    'failed' (finished) or 'stale' (the lease was no longer held; nothing changed)."""

    message_id: int
    outcome: str
    attempt: int | None
    available_at: datetime | None

    @property
    def will_retry(self) -> bool:
        return self.outcome == OUTCOME_LOCKED

    @property
    def finished(self) -> bool:
        return self.outcome == OUTCOME_FAILED

    @property
    def stale(self) -> bool:
        return self.outcome == OUTCOME_STALE


@dataclass(frozen=True, slots=True)
class MessageInfo:
    """A message as stored, for inspection (``Client.inspect``); states per docs/design.md.
    ``last_error`` is the error of its latest failed attempt (dead letters keep it).
    ``payload_error``: as for :class:`Message` (``payload`` is then None)."""

    id: int
    queue: str
    channel: str | None
    state: str
    payload: Any
    priority: int | None
    name: str | None
    attempt: int
    num_attempts: int
    lease_expires_at: datetime | None
    available_at: datetime | None
    enqueued_at: datetime
    last_error: str | None = None
    payload_error: str | None = None


@dataclass(slots=True)
class ChannelStatus:
    """Message counts of one (queue, channel) by state. ``channel`` None = default channel."""

    queue: str
    channel: str | None
    counts: dict[str, int] = field(default_factory=dict)

    def count(self, state: str) -> int:
        return self.counts.get(state, 0)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


@dataclass(frozen=True, slots=True)
class ChannelPolicy:
    """A channel's limits (row of ``hydra.channel_limit``); ``in_flight`` counts held slots."""

    queue: str
    channel: str | None
    max_concurrency: int | None
    max_size: int | None
    in_flight: int


@dataclass(frozen=True, slots=True)
class Schedule:
    """A cron schedule (row of the ``hydra.schedules`` view). ``next_fire_at`` is None for a
    schedule that stopped (no next fire time); ``last_error`` says why when there was an error."""

    queue: str
    channel: str | None
    name: str
    cron: str
    tz: str
    next_fire_at: datetime | None
    last_fire_at: datetime | None
    last_error: str | None = None  # why the last tick enqueued nothing
