"""gRPC handlers of TransferStream, MigrateStream, GetClusterStreamStats and RebalanceStreams,
mixed into StreamsHandlers."""

from __future__ import annotations


class RebalanceHandlers:
    pass
