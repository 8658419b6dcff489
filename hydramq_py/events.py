"""Typed lifecycle events (SPEC §3) and the dispatcher that hands them to subscribers.

Events are built from rows that SQL functions returned: the worker maps its own dequeue /
complete / fail results, the coordinator maps the rows of ``hydra.coordinate()`` (whose
``event`` column already carries the public name). Nothing here decides what happened; the
mapping only names it.

Contract: the daemons call :meth:`EventDispatcher.dispatch` only after the transaction that
produced the rows committed, and in the order the rows describe. A subscriber that raises is
logged and skipped; it never stops a daemon and never affects the queue.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar, Final, TypeVar

from .models import OUTCOME_FAILED, OUTCOME_LOCKED, FailResult, Message

log = logging.getLogger("hydramq.events")

MESSAGE_ENQUEUED: Final = "MESSAGE_ENQUEUED"
MESSAGE_RELEASED: Final = "MESSAGE_RELEASED"
MESSAGE_DROPPED: Final = "MESSAGE_DROPPED"
MESSAGE_DEQUEUED: Final = "MESSAGE_DEQUEUED"
MESSAGE_PROCESSED_SUCCESS: Final = "MESSAGE_PROCESSED_SUCCESS"
MESSAGE_PROCESSED_FAIL: Final = "MESSAGE_PROCESSED_FAIL"
MESSAGE_LOCKED: Final = "MESSAGE_LOCKED"
MESSAGE_UNLOCKED: Final = "MESSAGE_UNLOCKED"
MESSAGE_FINALIZED: Final = "MESSAGE_FINALIZED"
MESSAGE_DELETED: Final = "MESSAGE_DELETED"
MESSAGE_DEPENDENCY_RESOLVED: Final = "MESSAGE_DEPENDENCY_RESOLVED"
MESSAGE_DEPENDENCIES_UNMET: Final = "MESSAGE_DEPENDENCIES_UNMET"
MESSAGE_ATTEMPTS_EXHAUSTED: Final = "MESSAGE_ATTEMPTS_EXHAUSTED"


def _parse_time(value: Any) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            return None
    return None


@dataclass(frozen=True, slots=True)
class Event:
    """One lifecycle event of one message. ``name`` is the SPEC §3 event name.

    ``detail`` carries what the SQL function reported besides the message's identity (for
    example ``success`` for MESSAGE_FINALIZED); subclasses expose the documented keys as typed
    properties.
    """

    name: ClassVar[str] = ""

    message_id: int
    queue: str
    channel: str | None
    detail: Mapping[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict (for logs and event sinks)."""
        return {
            "event": self.name,
            "message_id": self.message_id,
            "queue": self.queue,
            "channel": self.channel,
            "detail": dict(self.detail),
        }


class MessageEnqueued(Event):
    """A schedule fired and enqueued a message (``detail.schedule`` names the schedule)."""

    __slots__ = ()
    name = MESSAGE_ENQUEUED

    @property
    def schedule(self) -> str | None:
        value = self.detail.get("schedule")
        return None if value is None else str(value)


class MessageReleased(Event):
    """pending → ready: its delay is over and all its parents resolved."""

    __slots__ = ()
    name = MESSAGE_RELEASED


class MessageDropped(Event):
    """The message was rejected because its channel is at ``max_size``."""

    __slots__ = ()
    name = MESSAGE_DROPPED


class MessageDequeued(Event):
    """ready → processing: leased to a worker (``detail.attempt``, ``detail.lease_expires_at``)."""

    __slots__ = ()
    name = MESSAGE_DEQUEUED

    @property
    def attempt(self) -> int | None:
        value = self.detail.get("attempt")
        return None if value is None else int(value)


class MessageProcessedSuccess(Event):
    """The handler succeeded and the completion committed."""

    __slots__ = ()
    name = MESSAGE_PROCESSED_SUCCESS


class MessageProcessedFail(Event):
    """The handler failed (raised); ``detail.error`` holds its repr, ``detail.retry`` whether a
    retry was allowed."""

    __slots__ = ()
    name = MESSAGE_PROCESSED_FAIL

    @property
    def error(self) -> str | None:
        value = self.detail.get("error")
        return None if value is None else str(value)


class MessageLocked(Event):
    """processing → locked: the attempt failed, attempts remain; ready again at
    ``available_at``."""

    __slots__ = ()
    name = MESSAGE_LOCKED

    @property
    def available_at(self) -> datetime | None:
        return _parse_time(self.detail.get("available_at"))

    @property
    def attempt(self) -> int | None:
        value = self.detail.get("attempt")
        return None if value is None else int(value)


class MessageUnlocked(Event):
    """locked → ready: the back-off is over."""

    __slots__ = ()
    name = MESSAGE_UNLOCKED


class MessageFinalized(Event):
    """The message finished: ``success`` tells done from failed."""

    __slots__ = ()
    name = MESSAGE_FINALIZED

    @property
    def success(self) -> bool:
        return bool(self.detail.get("success", False))


class MessageDeleted(Event):
    """The message's row was removed."""

    __slots__ = ()
    name = MESSAGE_DELETED


class MessageDependencyResolved(Event):
    """One parent (``parent_id``) of this message resolved, with ``success``."""

    __slots__ = ()
    name = MESSAGE_DEPENDENCY_RESOLVED

    @property
    def parent_id(self) -> int | None:
        value = self.detail.get("parent_id")
        return None if value is None else int(value)

    @property
    def success(self) -> bool:
        return bool(self.detail.get("success", False))


class MessageDependenciesUnmet(Event):
    """A parent failed and cascade is on: the message will not run."""

    __slots__ = ()
    name = MESSAGE_DEPENDENCIES_UNMET


class MessageAttemptsExhausted(Event):
    """The message failed and no attempts remain."""

    __slots__ = ()
    name = MESSAGE_ATTEMPTS_EXHAUSTED


class UnknownEvent(Event):
    """An event name this driver version does not know (``detail.event`` holds it)."""

    __slots__ = ()
    name = "UNKNOWN"


#: Every SPEC §3 event name → its class.
EVENT_TYPES: Final[dict[str, type[Event]]] = {
    cls.name: cls
    for cls in (
        MessageEnqueued,
        MessageReleased,
        MessageDropped,
        MessageDequeued,
        MessageProcessedSuccess,
        MessageProcessedFail,
        MessageLocked,
        MessageUnlocked,
        MessageFinalized,
        MessageDeleted,
        MessageDependencyResolved,
        MessageDependenciesUnmet,
        MessageAttemptsExhausted,
    )
}


def event_from_row(
    event: str, message_id: int, queue: str, channel: str | None, detail: Mapping[str, Any] | None
) -> Event:
    """Turn one ``hydra.coordinate()`` row into its typed event."""
    cls = EVENT_TYPES.get(event)
    if cls is None:
        log.warning("unknown event %r from hydra.coordinate() for message %s", event, message_id)
        return UnknownEvent(message_id, queue, channel, {**(detail or {}), "event": event})
    return cls(message_id, queue, channel, dict(detail or {}))


# -- mapping of worker results -------------------------------------------------------------


def dequeued_events(messages: Iterable[Message]) -> list[Event]:
    """``hydra.dequeue`` rows → MESSAGE_DEQUEUED each."""
    return [
        MessageDequeued(
            m.id,
            m.queue,
            m.channel,
            {"attempt": m.attempt, "lease_expires_at": m.lease_expires_at.isoformat()},
        )
        for m in messages
    ]


def completed_events(messages: Iterable[Message]) -> list[Event]:
    """Messages whose id ``hydra.complete_many`` returned → PROCESSED_SUCCESS, FINALIZED
    (success) and DELETED (a message that succeeds is deleted at once)."""
    out: list[Event] = []
    for m in messages:
        out.append(MessageProcessedSuccess(m.id, m.queue, m.channel, {"attempt": m.attempt}))
        out.append(MessageFinalized(m.id, m.queue, m.channel, {"success": True}))
        out.append(MessageDeleted(m.id, m.queue, m.channel))
    return out


def failed_events(
    message: Message, result: FailResult, *, error: str | None, retry: bool
) -> list[Event]:
    """One ``hydra.fail_many`` row → PROCESSED_FAIL, then LOCKED (outcome 'locked') or, for
    'failed', ATTEMPTS_EXHAUSTED (only when a retry was allowed, i.e. attempts ran out) and
    FINALIZED (failure). A 'stale' outcome changed nothing and yields no event."""
    if result.outcome not in (OUTCOME_LOCKED, OUTCOME_FAILED):
        return []
    m = message
    attempt = result.attempt if result.attempt is not None else m.attempt
    out: list[Event] = [
        MessageProcessedFail(
            m.id, m.queue, m.channel, {"attempt": attempt, "error": error, "retry": retry}
        )
    ]
    if result.outcome == OUTCOME_LOCKED:
        available = result.available_at.isoformat() if result.available_at else None
        out.append(
            MessageLocked(m.id, m.queue, m.channel, {"attempt": attempt, "available_at": available})
        )
    else:
        if retry:
            out.append(MessageAttemptsExhausted(m.id, m.queue, m.channel, {"attempt": attempt}))
        out.append(MessageFinalized(m.id, m.queue, m.channel, {"success": False}))
    return out


# -- dispatch ------------------------------------------------------------------------------

#: A subscriber: a plain function or a coroutine function taking one event.
Subscriber = Callable[[Event], Any]
S = TypeVar("S", bound=Subscriber)


@dataclass(slots=True)
class _Subscription:
    callback: Subscriber
    names: frozenset[str] | None


class EventDispatcher:
    """Holds ``on_event`` subscribers and calls them, in order, for each event.

    Subscribers run on the daemon's event loop: plain functions are called directly (keep
    them quick, or hand the event to a queue of your own), coroutine functions are awaited.
    An exception raised by a subscriber is logged with its traceback and otherwise ignored.
    """

    def __init__(self) -> None:
        self._subs: list[_Subscription] = []

    def subscribe(self, callback: S, *, events: Iterable[str | type[Event]] | None = None) -> S:
        """Register ``callback`` for every event, or only for the given names / classes.
        Returns the callback, so this also works as a decorator."""
        names: frozenset[str] | None = None
        if events is not None:
            names = frozenset(e if isinstance(e, str) else e.name for e in events)
            unknown = names - EVENT_TYPES.keys()
            if unknown:
                raise ValueError(f"events: unknown event name(s) {sorted(unknown)}")
        self._subs.append(_Subscription(callback, names))
        return callback

    def unsubscribe(self, callback: Subscriber) -> None:
        self._subs = [s for s in self._subs if s.callback is not callback]

    def __bool__(self) -> bool:
        return bool(self._subs)

    async def dispatch(self, events: Sequence[Event]) -> None:
        """Deliver ``events`` (already committed) to every interested subscriber."""
        if not self._subs:
            return
        for ev in events:
            for sub in self._subs:
                if sub.names is not None and ev.name not in sub.names:
                    continue
                try:
                    result = sub.callback(ev)
                    if inspect.isawaitable(result):
                        await _await(result)
                except Exception:
                    log.exception(
                        "event subscriber %r failed on %s for message %s",
                        sub.callback,
                        ev.name,
                        ev.message_id,
                    )


async def _await(result: Awaitable[Any]) -> None:
    await result
