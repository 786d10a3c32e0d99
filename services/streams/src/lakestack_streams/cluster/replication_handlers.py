"""gRPC handlers of the Replicate* RPCs (secondary side), mixed into StreamsHandlers."""

from __future__ import annotations


class ReplicationHandlers:
    pass
