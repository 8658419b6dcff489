"""hydramq: Python driver for the hydramq PostgreSQL extension (schema ``hydra``).

The extension decides everything about the queue; this package calls it:

* :class:`Client` / :class:`AsyncClient` — enqueue, policies, schedules, inspection, inside
  your own psycopg transaction;
* :class:`Worker` — the daemon that runs your handler for each message;
* :class:`Coordinator` — the daemon that calls ``hydra.coordinate()``;
* :mod:`hydramq.events` — typed lifecycle events for ``on_event`` subscribers;
* the ``hydramq`` command line (:mod:`hydramq.cli`).
"""

from __future__ import annotations

from .calls import EnqueueOptions, MessageSpec, ScheduleOptions
from .client import AsyncClient, Client
from .coordinator import Coordinator
from .events import Event, EventDispatcher
from .models import (
    ChannelPolicy,
    ChannelStatus,
    EnqueueResult,
    FailResult,
    Message,
    MessageInfo,
    Schedule,
)
from .worker import FailWithoutRetry, Handler, Worker

__version__ = "0.2.0"

__all__ = [
    "AsyncClient",
    "ChannelPolicy",
    "ChannelStatus",
    "Client",
    "Coordinator",
    "EnqueueOptions",
    "EnqueueResult",
    "Event",
    "EventDispatcher",
    "FailResult",
    "FailWithoutRetry",
    "Handler",
    "Message",
    "MessageInfo",
    "MessageSpec",
    "Schedule",
    "ScheduleOptions",
    "Worker",
    "__version__",
]
