"""The agent's tools (:class:`lakestack_lakehouse.agent.LakehouseTools`) on this service's core:
each returns the proto-shaped dict the agent expects; failures raise and become failed calls."""

from __future__ import annotations

import dataclasses
from typing import Any

from lakestack_lakehouse.agent import Agent, AgentConfig, SessionStore
from lakestack_lakehouse.core import Lakehouse, OperationResult
from lakestack_lakehouse.pipelines import PipelineSpec

JsonDict = dict[str, Any]


def _operation(result: OperationResult) -> JsonDict:
    return {"success": True, **dataclasses.asdict(result)}


class ServiceTools:
    def __init__(self, lakehouse: Lakehouse) -> None:
        self._lakehouse = lakehouse

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


class AgentProvider:
    """The agent for the configuration in effect: provider, model, API base and key come from the
    catalog configuration's ``lakestack.agent.*`` properties (ConfigService), over ``defaults``.
    Conversations (sessions) outlive configuration changes."""

    def __init__(self, lakehouse: Lakehouse, defaults: AgentConfig) -> None:
        self._lakehouse = lakehouse
        self._defaults = defaults
        self._tools = ServiceTools(lakehouse)
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
