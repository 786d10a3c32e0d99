"""NatsRegistry: our streams, consumers, KV buckets, object stores and collections kept in a NATS
JetStream cluster, behind the same (duck-typed) API as the embedded StreamRegistry.

Stream `s` is the JetStream stream `<namespace>_<enc(s)>` with subjects `<namespace>.<enc(s)>.>`
(see jetstream.Names); our StreamConfig is kept in the stream's metadata, so every instance of
the service pointed at the cluster sees the same streams. Durability and failover are
JetStream's (give `replicas=3` on a 3-node cluster).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import uuid
from typing import Any

from lakestack_streams.errors import (
    InvalidConfig,
    NoSuchStream,
    StreamExists,
    StreamsError,
)
from lakestack_streams.events import EventHub
from lakestack_streams.model import PublishRequest, StreamConfig
from lakestack_streams.nats_backend.consumers import NatsConsumers
from lakestack_streams.nats_backend.jetstream import (
    ERR_STREAM_EXISTS,
    ERR_STREAM_NOT_FOUND,
    JetStream,
    JsError,
    Names,
)
from lakestack_streams.nats_backend.stream import NatsStream, json_config, nats_config
from lakestack_streams.registry import check_publish, updated_config
from lakestack_streams.sources import SourceStatus
from lakestack_streams.subjects import SubjectFilter

log = logging.getLogger("lakestack.streams.nats")

NAMESPACE = re.compile(r"^[A-Za-z0-9-]{1,32}$")


class NatsSources:
    """Source status from JetStream's stream info (JetStream runs the sourcing itself)."""

    def __init__(self, registry: NatsRegistry) -> None:
        self._registry = registry

    def statuses(self, stream: str | None = None) -> list[SourceStatus]:
        found = []
        for name in [stream] if stream is not None else self._registry.names():
            adapter = self._registry.find(name)
            if adapter is None:
                continue
            by_nats_name = {
                self._registry.names_map.stream(s.source_stream): s for s in adapter.config.sources
            }
            for info in adapter.source_infos:
                source = by_nats_name.get(str(info.get("name")))
                if source is None:
                    continue
                status = SourceStatus(name, source.source_stream)
                origin = self._registry.find(source.source_stream)
                if origin is not None:  # JetStream reports how far behind, not how far along
                    status.last_sourced_seq = max(origin.last_seq - int(info.get("lag", 0) or 0), 0)
                error = info.get("error")
                if error:
                    status.last_error = str(error.get("description") or error)
                found.append(status)
        return found

    async def stop_all(self) -> None:
        return None


class NatsRegistry:
    """Drop-in for StreamRegistry on NATS JetStream. ``url``: one or more server URLs separated
    by commas (give every node of the cluster so the client can fail over)."""

    backend = "nats"

    def __init__(
        self,
        url: str,
        *,
        replicas: int = 1,
        events: EventHub | None = None,
        namespace: str = "lks",
        request_timeout_s: float = 5.0,
        retry_s: float = 30.0,
        refresh_interval_s: float = 1.0,
        connect_options: dict[str, Any] | None = None,
    ) -> None:
        if not NAMESPACE.match(namespace):
            raise InvalidConfig(f"nats namespace {namespace!r}: use 1..32 letters, digits or '-'")
        if replicas < 1 or replicas > 5:
            raise InvalidConfig(f"nats replicas {replicas}: JetStream allows 1..5")
        self.events = events or EventHub()
        self.replicas = replicas
        self.names_map = Names(namespace)
        self.refresh_interval_s = refresh_interval_s
        self.js = JetStream(
            [u.strip() for u in url.split(",") if u.strip()],
            request_timeout_s=request_timeout_s,
            retry_s=retry_s,
            connect_options=connect_options or {},
        )
        self._streams: dict[str, NatsStream] = {}
        self._filters: dict[str, SubjectFilter] = {}
        self._consumers: dict[str, NatsConsumers] = {}
        self._lifecycle = asyncio.Lock()
        self._refresher: asyncio.Task[None] | None = None
        self.sources = NatsSources(self)
        # Set by the cluster layer of the embedded engine (streams sourced from other nodes);
        # JetStream sources reach every stream of the cluster, so it is never consulted here.
        self.remote_source: Any = None

    # ---- open / close -----------------------------------------------------------------------

    async def open(self) -> None:
        await self.js.connect()
        await self.js.retrying("jetstream", lambda: self.js.api("INFO", retry=False))
        await self._sync()
        self._refresher = asyncio.create_task(self._refresh_forever(), name="nats-streams-refresh")
        log.info("opened %d streams from NATS %s", len(self._streams), self.js.servers)

    async def close(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
            self._refresher = None
        for adapter in list(self._streams.values()):
            await adapter.close()
        self._streams.clear()
        self._consumers.clear()
        await self.js.close()

    async def _list(self) -> list[dict[str, Any]]:
        infos: list[dict[str, Any]] = []
        offset = 0
        while True:
            answer = await self.js.api("STREAM.LIST", {"offset": offset})
            page = answer.get("streams") or []
            infos.extend(page)
            offset += len(page)
            if not page or offset >= int(answer.get("total", 0)):
                return infos

    async def _sync(self) -> None:
        """Refresh every stream's cached info; pick up streams created or deleted elsewhere."""
        async with self._lifecycle:  # never races this instance's own create / delete
            await self._sync_locked()

    async def _sync_locked(self) -> None:
        seen: set[str] = set()
        for info in await self._list():
            nats_name = str((info.get("config") or {}).get("name", ""))
            name = self.names_map.ours(nats_name)
            if name is None:
                continue
            adapter = self._streams.get(name)
            if adapter is not None:
                adapter.apply_info(info)
                seen.add(name)
                continue
            config = json_config(info)
            if config is None or config.name != name:
                continue
            self._add(NatsStream(self.js, self.names_map, config, info))
            seen.add(name)
            self.events.emit("stream_created", name)
        for name in set(self._streams) - seen:  # confirm before forgetting (it may be brand new)
            try:
                await self._streams[name].refresh()
            except JsError as exc:
                if exc.err_code == ERR_STREAM_NOT_FOUND and name in self._streams:
                    await self._forget(name)
                    self.events.emit("stream_deleted", name)
            except KeyError:
                continue

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_interval_s)
            try:
                await self._sync()
            except Exception as exc:
                log.warning("refreshing streams from NATS failed: %r", exc)

    def _add(self, adapter: NatsStream) -> None:
        name = adapter.config.name
        self._streams[name] = adapter
        self._filters[name] = adapter.config.subject_filter
        self._consumers[name] = NatsConsumers(
            self.js,
            self.names_map,
            adapter,
            lambda request: self.publish(name, request),
            lambda created, consumer: self.events.emit(
                "consumer_created" if created else "consumer_deleted", name, consumer
            ),
        )

    async def _forget(self, name: str) -> None:
        adapter = self._streams.pop(name, None)
        self._filters.pop(name, None)
        self._consumers.pop(name, None)
        if adapter is not None:
            await adapter.close()

    # ---- lookup -----------------------------------------------------------------------------

    def names(self) -> list[str]:
        return sorted(self._streams)

    def find(self, name: str) -> NatsStream | None:
        return self._streams.get(name)

    def get(self, name: str) -> NatsStream:
        adapter = self._streams.get(name)
        if adapter is None:
            raise NoSuchStream(name)
        return adapter

    def consumers(self, stream: str) -> NatsConsumers:
        consumers = self._consumers.get(stream)
        if consumers is None:
            raise NoSuchStream(stream)
        return consumers

    # ---- lifecycle --------------------------------------------------------------------------

    async def create(self, config: StreamConfig) -> NatsStream:
        config = config.validated()
        body = nats_config(config, self.names_map, self.replicas)  # Unsupported before anything happens
        nats_name = body["name"]
        async with self._lifecycle:
            if config.name in self._streams:
                raise StreamExists(f"stream {config.name!r} already exists")
            try:  # created by another instance meanwhile?
                await self.js.api(f"STREAM.INFO.{nats_name}")
            except JsError as exc:
                if exc.err_code != ERR_STREAM_NOT_FOUND:
                    raise
            else:
                raise StreamExists(f"stream {config.name!r} already exists")
            try:
                info = await self.js.api(f"STREAM.CREATE.{nats_name}", body)
            except JsError as exc:
                if exc.err_code == ERR_STREAM_EXISTS:
                    raise StreamExists(f"stream {config.name!r} already exists") from exc
                raise InvalidConfig(f"JetStream refused the stream config: {exc.description}") from exc
            adapter = NatsStream(self.js, self.names_map, config, info)
            self._add(adapter)
        self.events.emit("stream_created", config.name)
        log.info("created stream %s in NATS as %s", config.name, nats_name)
        return adapter

    async def delete(self, name: str) -> None:
        async with self._lifecycle:
            if name not in self._streams:
                raise NoSuchStream(name)
            try:
                await self.js.api(f"STREAM.DELETE.{self.names_map.stream(name)}")
            except JsError as exc:
                if exc.err_code != ERR_STREAM_NOT_FOUND:
                    raise
            await self._forget(name)
        self.events.emit("stream_deleted", name)
        log.info("deleted stream %s", name)

    async def update(self, name: str, changes: dict[str, Any]) -> tuple[StreamConfig, int]:
        """Apply a partial update of the mutable fields; returns (new config, messages pruned)."""
        adapter = self.get(name)
        config = updated_config(adapter.config, changes)
        pruned = await adapter.update_config(config, self.replicas)
        self.events.emit("stream_updated", name)
        return config, pruned

    # ---- publish ----------------------------------------------------------------------------

    async def publish(self, stream: str, request: PublishRequest) -> int:
        adapter = self.get(stream)
        check_publish(stream, adapter.config, self._filters[stream], request)
        try:
            return await adapter.append(request, uuid.uuid4().hex)
        except JsError as exc:
            if exc.err_code == ERR_STREAM_NOT_FOUND:
                raise NoSuchStream(stream) from exc
            raise StreamsError(f"JetStream refused the publish: {exc.description}") from exc

    # ---- retention --------------------------------------------------------------------------

    async def sweep(self) -> int:
        return 0  # JetStream applies every retention bound itself
