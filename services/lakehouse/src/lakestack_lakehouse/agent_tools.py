"""The agent's tools (:class:`lakestack_lakehouse.agent.LakehouseTools`) on this service's core
and, through :mod:`lakestack_lakehouse.remote`, on the teckel-jobs and streams services: each
returns the proto-shaped dict the agent expects. Lakehouse failures raise and become failed calls;
another service being down or refusing is a ``{"success": False, "error": ...}`` result that names
it and its address."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

from lakestack_lakehouse.agent import JOB_STATUSES, Agent, AgentConfig, SessionStore
from lakestack_lakehouse.core import Lakehouse, OperationResult
from lakestack_lakehouse.pipelines import PipelineSpec, consumer_name
from lakestack_lakehouse.remote import RemoteError, RemoteServices

JsonDict = dict[str, Any]

MAX_JOB_FILE_BYTES = 1 << 20
MAX_LISTED_JOBS = 1000


def _operation(result: OperationResult) -> JsonDict:
    return {"success": True, **dataclasses.asdict(result)}


def _failed(error: str) -> JsonDict:
    return {"success": False, "error": error}


def _read_job_file(path: str) -> str:
    file = Path(path).expanduser()
    if file.suffix.lower() not in (".yaml", ".yml"):
        raise ValueError(f"{path} is not a .yaml or .yml file")
    if file.stat().st_size > MAX_JOB_FILE_BYTES:
        raise ValueError(f"{path} is larger than {MAX_JOB_FILE_BYTES} bytes")
    return file.read_text(encoding="utf-8")


class ServiceTools:
    def __init__(self, lakehouse: Lakehouse, remote: RemoteServices) -> None:
        self._lakehouse = lakehouse
        self._remote = remote

    async def list_tables(self, namespace: str = "") -> JsonDict:
        namespaces, tables = await self._lakehouse.list_tables(namespace)
        return {"success": True, "namespaces": namespaces, "tables": tables}

    async def get_schema(self, table: str) -> JsonDict:
        return {"success": True, **dataclasses.asdict(await self._lakehouse.schema(table))}

    async def get_table_health(self, table: str) -> JsonDict:
        name, report = await self._lakehouse.health(table, None, None)
        return {"success": True, "table": name, **dataclasses.asdict(report)}

    async def compact_table(
        self, table: str, strategy: str = "binpack", options: dict[str, str] | None = None
    ) -> JsonDict:
        options = dict(options or {})
        sort_order = options.pop("sort_order", None)
        where = options.pop("where", None)
        return _operation(await self._lakehouse.compact(table, strategy, options, sort_order, where, False))

    async def expire_snapshots(
        self, table: str, retain_last: int = 0, older_than: str | None = None
    ) -> JsonDict:
        return _operation(await self._lakehouse.expire(table, retain_last, older_than, [], False))

    async def remove_orphan_files(
        self, table: str, dry_run: bool = True, older_than: str | None = None
    ) -> JsonDict:
        return _operation(await self._lakehouse.remove_orphans(table, dry_run, older_than, None))

    async def add_column(
        self, table: str, name: str, type: str, after: str | None = None, comment: str | None = None
    ) -> JsonDict:
        return _operation(await self._lakehouse.add_column(table, name, type, after, comment, False))

    async def rename_column(self, table: str, old_name: str, new_name: str) -> JsonDict:
        return _operation(await self._lakehouse.rename_column(table, old_name, new_name))

    async def drop_column(self, table: str, name: str) -> JsonDict:
        return _operation(await self._lakehouse.drop_column(table, name))

    async def list_pipelines(self) -> JsonDict:
        pipelines = await self._lakehouse.pipelines.list()
        return {"success": True, "pipelines": [dataclasses.asdict(p) for p in pipelines]}

    async def start_pipeline(self, spec: JsonDict) -> JsonDict:
        known = {k: v for k, v in spec.items() if k in PipelineSpec.__dataclass_fields__}
        status = await self._lakehouse.pipelines.start(PipelineSpec(**known))
        return {"success": True, **dataclasses.asdict(status)}

    async def stop_pipeline(self, pipeline_id: str) -> JsonDict:
        status = await self._lakehouse.pipelines.stop(pipeline_id)
        return {"success": True, **dataclasses.asdict(status)}

    # ---- teckel-jobs

    async def list_jobs(self, status: str = "", limit: int = 20) -> JsonDict:
        status = status.strip().lower()
        if status and status not in JOB_STATUSES:
            return _failed(f"status {status!r} must be one of {', '.join(JOB_STATUSES)}")
        try:
            jobs = await self._remote.list_jobs()
        except RemoteError as exc:
            return _failed(str(exc))
        counts: dict[str, int] = {}
        for job in jobs:
            counts[job["status"]] = counts.get(job["status"], 0) + 1
        chosen = [job for job in jobs if not status or job["status"] == status]
        limit = min(max(limit, 1), MAX_LISTED_JOBS)
        return {"success": True, "jobs": chosen[:limit], "total": len(chosen), "counts": counts}

    async def submit_job(
        self, yaml: str = "", path: str = "", variables: dict[str, str] | None = None
    ) -> JsonDict:
        if bool(yaml.strip()) == bool(path.strip()):
            return _failed("give the pipeline document as yaml or as the path of a .yaml file (one of them)")
        if path.strip():
            try:
                yaml = await asyncio.to_thread(_read_job_file, path.strip())
            except (OSError, ValueError) as exc:
                return _failed(f"cannot read the job file: {exc}")
        try:
            submitted = await self._remote.submit_job(yaml, dict(variables or {}))
        except RemoteError as exc:
            return _failed(str(exc))
        return {"success": True, **submitted, **({"path": path.strip()} if path.strip() else {})}

    async def get_job(self, job_id: str) -> JsonDict:
        try:
            return {"success": True, "job": await self._remote.get_job(job_id.strip())}
        except RemoteError as exc:
            return _failed(str(exc))

    # ---- streams

    async def stream_lag(self, stream: str = "", consumer: str = "") -> JsonDict:
        """Lag of one consumer, of every consumer of ``stream``, or of every stream pipeline's."""
        stream, consumer = stream.strip(), consumer.strip()
        pipelines = {
            (p.spec.source_stream, consumer_name(p.pipeline_id, p.spec)): p
            for p in await self._lakehouse.pipelines.list()
            if p.spec.source_stream
        }
        try:
            if stream and not consumer:
                targets = [(stream, c["consumer"]) for c in await self._remote.consumers(stream)]
            elif stream or consumer:
                streams = [stream] if stream else [s for s, c in pipelines if c == consumer]
                if not streams:
                    return _failed(f"no pipeline reads through consumer {consumer!r}: give its stream")
                targets = [(s, consumer) for s in streams]
            else:
                targets = list(pipelines)
            stats: dict[str, JsonDict] = {}
            rows = []
            for name, durable in targets:
                if name not in stats:
                    stats[name] = await self._remote.stream_stats(name)
                row: JsonDict = {"stream": name, "consumer": durable, "last_seq": stats[name]["last_seq"]}
                if (pipeline := pipelines.get((name, durable))) is not None:
                    row.update(pipeline_id=pipeline.pipeline_id, pipeline_status=pipeline.status)
                try:
                    state = await self._remote.consumer(name, durable)
                except RemoteError as exc:
                    if len(targets) == 1:
                        raise
                    rows.append({**row, "error": str(exc)})
                    continue
                last, floor, delivered = row["last_seq"], state["ack_floor"], state["last_delivered"]
                row.update(
                    filter_subject=state["filter_subject"],
                    ack_floor=floor,
                    last_delivered=delivered,
                    lag=max(0, last - floor),
                    pending=max(0, last - max(delivered, floor)),
                    ack_pending=max(0, delivered - floor),
                )
                rows.append(row)
        except RemoteError as exc:
            return _failed(str(exc))
        total = sum(int(r.get("lag", 0)) for r in rows)
        return {"success": True, "consumers": rows, "total_lag": total}


class AgentProvider:
    """The agent for the configuration in effect: provider, model, API base and key come from the
    catalog configuration's ``lakestack.agent.*`` properties (ConfigService), over ``defaults``.
    Conversations (sessions) outlive configuration changes."""

    def __init__(self, lakehouse: Lakehouse, defaults: AgentConfig, remote: RemoteServices) -> None:
        self._lakehouse = lakehouse
        self._defaults = defaults
        self._remote = remote
        self._tools = ServiceTools(lakehouse, remote)
        self._sessions = SessionStore(defaults.session_ttl_s, defaults.max_sessions)
        self._built: tuple[tuple[str, ...], Agent] | None = None

    def agent(self) -> Agent:
        config = self._lakehouse.catalogs.config
        wanted = tuple(
            config.setting(f"agent.{key}", "")
            for key in ("provider", "model", "api-base", "api-key", "max-steps")
        )
        if self._built is None or self._built[0] != wanted:
            provider, model, api_base, api_key, max_steps = wanted
            agent_config = dataclasses.replace(
                self._defaults,
                default_provider=provider or self._defaults.default_provider,
                default_model=model or self._defaults.default_model,
                api_base=api_base or self._defaults.api_base,
                api_key=api_key or self._defaults.api_key,
                max_steps=int(max_steps) if max_steps.isdigit() else self._defaults.max_steps,
                catalog_name=config.catalog_name,
            )
            self._built = (wanted, Agent(self._tools, agent_config, sessions=self._sessions))
        return self._built[1]

    async def close(self) -> None:
        """Close the channels to the other services."""
        await self._remote.close()
