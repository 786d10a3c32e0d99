"""The lakehouse's platform events (docs/events.md, ``lakestack.events.lakehouse.<event>``).

The domain code reports what it did through a plain callable, ``emit("table_compacted", table=...,
...)``; the service passes its ``EventPublisher.emit`` (buffered, never blocks, never raises). The
callable is called on the event loop only (pyiceberg work on the pool threads reports back first).
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

log = logging.getLogger(__name__)

TABLE_CREATED = "table_created"
TABLE_COMMITTED = "table_committed"
TABLE_COMPACTED = "table_compacted"
SNAPSHOTS_EXPIRED = "snapshots_expired"
ORPHANS_REMOVED = "orphans_removed"
SCHEMA_CHANGED = "schema_changed"
PIPELINE_STARTED = "pipeline_started"
PIPELINE_STOPPED = "pipeline_stopped"
PIPELINE_FAILED = "pipeline_failed"
CONFIG_CHANGED = "config_changed"

EVENTS = (
    TABLE_CREATED,
    TABLE_COMMITTED,
    TABLE_COMPACTED,
    SNAPSHOTS_EXPIRED,
    ORPHANS_REMOVED,
    SCHEMA_CHANGED,
    PIPELINE_STARTED,
    PIPELINE_STOPPED,
    PIPELINE_FAILED,
    CONFIG_CHANGED,
)


class Emit(Protocol):
    def __call__(self, event: str, /, **data: Any) -> None: ...


def discard(event: str, /, **data: Any) -> None:
    """No events (tests and tools that use the core without a service)."""


def guarded(emit: Emit) -> Emit:
    """``emit`` that never raises into the operation that caused the event."""

    def call(event: str, /, **data: Any) -> None:
        try:
            emit(event, **data)
        except Exception:  # an event is never worth failing the operation for
            log.exception("platform event %s not emitted", event)

    return call
