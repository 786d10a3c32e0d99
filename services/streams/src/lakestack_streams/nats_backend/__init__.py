"""The NATS JetStream backend of the streams service (`LAKESTACK_STREAMS_BACKEND=nats`): see
docs/streams-nats.md."""

from lakestack_streams.nats_backend.registry import NatsRegistry

__all__ = ["NatsRegistry"]
