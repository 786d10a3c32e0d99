"""The lakehouse agent: the local rules end to end over fake tools, and OpenAI-compatible providers
against a scripted HTTP/1.1 server on a free loopback port (JSON and SSE replies)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest

from lakestack_lakehouse.agent import (
    MUTATING_TOOLS,
    TOOLS,
    Agent,
    AgentConfig,
    AgentEvent,
    AgentRequest,
    AgentResponse,
    ArgumentError,
    LakehouseTools,
    LocalIntent,
    SessionStore,
    interpret,
    is_affirmation,
    is_negation,
    openai_tools,
    validate_arguments,
)

NOW = datetime(2024, 5, 10, 12, 0, tzinfo=UTC)


# ---------------------------------------------------------------------------------------------
# Fakes
# ---------------------------------------------------------------------------------------------


def _health(table: str, *, small: int, snapshots: int) -> dict[str, Any]:
    issues = []
    if small > 10:
        issues.append({"code": "small_files", "severity": "warning", "message": f"{small} small files"})
    if snapshots > 100:
        issues.append({"code": "too_many_snapshots", "severity": "warning", "message": "many snapshots"})
    recommendation = "; ".join(
        text
        for code, text in (("small_files", "Consider compaction"), ("too_many_snapshots", "Expire snapshots"))
        if any(i["code"] == code for i in issues)
    )
    return {
        "success": True,
        "table": table,
        "snapshot_count": snapshots,
        "data_file_count": 120,
        "total_size_bytes": 3 * 1024**3,
        "avg_file_size_bytes": 25 * 1024**2,
        "small_file_count": small,
        "recommendation": recommendation or "healthy",
        "needs_maintenance": bool(issues),
        "issues": issues,
    }


class FakeTools:
    """Records every call; answers like the lakehouse would."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.health = {
            "db.events": _health("db.events", small=80, snapshots=150),
            "db.users": _health("db.users", small=0, snapshots=3),
            "analytics.daily": _health("analytics.daily", small=2, snapshots=5),
        }

    async def list_tables(self, namespace: str = "") -> dict[str, Any]:
        self.calls.append(("list_tables", {"namespace": namespace}))
        tables = [t for t in self.health if not namespace or t.startswith(namespace + ".")]
        return {"success": True, "namespaces": ["analytics", "db"], "tables": tables}

    async def get_schema(self, table: str) -> dict[str, Any]:
        self.calls.append(("get_schema", {"table": table}))
        return {
            "success": True,
            "table": table,
            "schema_id": 2,
            "format_version": 2,
            "columns": [
                {"name": "id", "type": "bigint", "nullable": False, "field_id": 1},
                {"name": "ts", "type": "timestamp", "nullable": True, "field_id": 2},
                {"name": "payload", "type": "string", "nullable": True, "comment": "raw JSON", "field_id": 3},
            ],
            "partition_spec": {"spec_id": 0, "fields": [{"source_name": "ts", "transform": "day"}]},
            "sort_order": {"order_id": 0, "fields": []},
        }

    async def get_table_health(self, table: str) -> dict[str, Any]:
        self.calls.append(("get_table_health", {"table": table}))
        if table not in self.health:
            return {"success": False, "table": table, "error": f"table {table} not found"}
        return self.health[table]

    async def compact_table(
        self, table: str, strategy: str = "binpack", options: dict[str, str] | None = None
    ) -> dict[str, Any]:
        self.calls.append(("compact_table", {"table": table, "strategy": strategy, "options": options}))
        return {
            "success": True,
            "operation": "compact",
            "table": table,
            "details_json": json.dumps({"rewritten_files": 80, "new_files": 4}),
            "snapshot_id": 42,
        }

    async def expire_snapshots(
        self, table: str, retain_last: int = 0, older_than: str | None = None
    ) -> dict[str, Any]:
        self.calls.append(
            ("expire_snapshots", {"table": table, "retain_last": retain_last, "older_than": older_than})
        )
        return {
            "success": True,
            "operation": "expire",
            "table": table,
            "details_json": '{"expired_snapshots": 140}',
        }

    async def remove_orphan_files(
        self, table: str, dry_run: bool = True, older_than: str | None = None
    ) -> dict[str, Any]:
        self.calls.append(
            ("remove_orphan_files", {"table": table, "dry_run": dry_run, "older_than": older_than})
        )
        files = ["s3://w/db/events/data/x.parquet", "s3://w/db/events/data/y.parquet"]
        return {
            "success": True,
            "operation": "remove_orphans",
            "table": table,
            "details_json": json.dumps({"orphan_files": files}),
        }

    async def add_column(
        self, table: str, name: str, type: str, after: str | None = None, comment: str | None = None
    ) -> dict[str, Any]:
        self.calls.append(
            ("add_column", {"table": table, "name": name, "type": type, "after": after, "comment": comment})
        )
        return {"success": True, "operation": "add_column", "table": table, "details_json": "{}"}

    async def rename_column(self, table: str, old_name: str, new_name: str) -> dict[str, Any]:
        self.calls.append(("rename_column", {"table": table, "old_name": old_name, "new_name": new_name}))
        return {"success": True, "operation": "rename_column", "table": table, "details_json": "{}"}

    async def drop_column(self, table: str, name: str) -> dict[str, Any]:
        self.calls.append(("drop_column", {"table": table, "name": name}))
        return {"success": True, "operation": "drop_column", "table": table, "details_json": "{}"}

    async def list_pipelines(self) -> dict[str, Any]:
        self.calls.append(("list_pipelines", {}))
        return {
            "success": True,
            "pipelines": [
                {
                    "pipeline_id": "p1",
                    "name": "orders",
                    "status": "running",
                    "source": "stream:orders",
                    "sink": "db.orders",
                    "rows_processed": 1200,
                }
            ],
        }

    async def start_pipeline(self, spec: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(("start_pipeline", {"spec": spec}))
        return {"success": True, "pipeline_id": "p2", "status": "starting"}

    async def stop_pipeline(self, pipeline_id: str) -> dict[str, Any]:
        self.calls.append(("stop_pipeline", {"pipeline_id": pipeline_id}))
        return {"success": True, "pipeline_id": pipeline_id, "status": "stopped", "rows_processed": 1200}

    async def list_jobs(self, status: str = "", limit: int = 20) -> dict[str, Any]:
        self.calls.append(("list_jobs", {"status": status, "limit": limit}))
        return {"success": True, "jobs": [], "total": 0, "counts": {}}

    async def submit_job(
        self, yaml: str = "", path: str = "", variables: dict[str, str] | None = None
    ) -> dict[str, Any]:
        self.calls.append(("submit_job", {"yaml": yaml, "path": path, "variables": variables}))
        return {"success": True, "job_id": "j-1", "status": "queued"}

    async def get_job(self, job_id: str) -> dict[str, Any]:
        self.calls.append(("get_job", {"job_id": job_id}))
        return {"success": False, "error": f"teckel-jobs at 127.0.0.1:1 answered NOT_FOUND: job {job_id}"}

    async def stream_lag(self, stream: str = "", consumer: str = "") -> dict[str, Any]:
        self.calls.append(("stream_lag", {"stream": stream, "consumer": consumer}))
        return {"success": True, "consumers": [], "total_lag": 0}

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]


def _tools(fake: FakeTools) -> LakehouseTools:
    return fake  # FakeTools implements the protocol structurally


@pytest.fixture
def fake() -> FakeTools:
    return FakeTools()


@pytest.fixture
def agent(fake: FakeTools) -> Agent:
    return Agent(_tools(fake), clock=lambda: NOW)


@pytest.fixture(autouse=True)
def _no_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


# ---------------------------------------------------------------------------------------------
# Tools, argument checks, rules
# ---------------------------------------------------------------------------------------------


def test_tool_schemas_are_openai_function_definitions() -> None:
    schemas = openai_tools()
    names = [s["function"]["name"] for s in schemas]
    assert names == [
        "list_tables", "get_schema", "get_table_health", "compact_table", "expire_snapshots",
        "remove_orphan_files", "add_column", "rename_column", "drop_column", "list_pipelines",
        "start_pipeline", "stop_pipeline", "list_jobs", "submit_job", "get_job", "stream_lag",
    ]  # fmt: skip
    for schema in schemas:
        assert schema["type"] == "function"
        assert schema["function"]["description"]
        assert schema["function"]["parameters"]["type"] == "object"
        json.dumps(schema)
    assert [s["function"]["name"] for s in openai_tools(["get_schema", "nope"])] == ["get_schema"]
    assert {n for n, spec in TOOLS.items() if spec.mutating({"dry_run": False})} == MUTATING_TOOLS
    assert not TOOLS["remove_orphan_files"].mutating({"table": "db.t"})  # dry run by default
    assert not TOOLS["get_table_health"].mutating({"table": "db.t"})
    assert TOOLS["submit_job"].mutating({"path": "job.yaml"})  # a job writes its outputs
    assert not any(TOOLS[n].mutating({}) for n in ("list_jobs", "get_job", "stream_lag"))


def test_validate_arguments() -> None:
    spec = TOOLS["expire_snapshots"]
    assert validate_arguments(spec, '{"table": "db.t", "retain_last": "3", "older_than": null}') == {
        "table": "db.t",
        "retain_last": 3,
    }
    with pytest.raises(ArgumentError, match="not valid JSON"):
        validate_arguments(spec, "{table")
    with pytest.raises(ArgumentError, match="missing required argument"):
        validate_arguments(spec, {"retain_last": 1})
    with pytest.raises(ArgumentError, match="unexpected argument"):
        validate_arguments(spec, {"table": "db.t", "force": True})
    with pytest.raises(ArgumentError, match="must be >= 0"):
        validate_arguments(spec, {"table": "db.t", "retain_last": -1})
    with pytest.raises(ArgumentError, match="must be one of"):
        validate_arguments(TOOLS["compact_table"], {"table": "db.t", "strategy": "shuffle"})
    with pytest.raises(ArgumentError, match=r"spec\.sink_table"):
        validate_arguments(TOOLS["start_pipeline"], {"spec": {"source_table": "db.a"}})
    assert (
        validate_arguments(TOOLS["remove_orphan_files"], {"table": "db.t", "dry_run": "false"})["dry_run"]
        is False
    )
    assert validate_arguments(TOOLS["list_pipelines"], "") == {}


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("list tables", ("list_tables", {})),
        ("What tables are in namespace analytics?", ("list_tables", {"namespace": "analytics"})),
        ("schema of db.events", ("get_schema", {"table": "db.events"})),
        ("describe table lakestack.db.events", ("get_schema", {"table": "lakestack.db.events"})),
        ("Is db.events healthy?", ("get_table_health", {"table": "db.events"})),
        ("health of analytics.daily", ("get_table_health", {"table": "analytics.daily"})),
        ("compact db.events", ("compact_table", {"table": "db.events", "strategy": "binpack"})),
        (
            "compact db.events with zorder on a, b",
            ("compact_table", {"table": "db.events", "strategy": "zorder", "sort_order": "a,b"}),
        ),
        (
            "compact db.events sorted by id desc and name",
            ("compact_table", {"table": "db.events", "strategy": "sort", "sort_order": "id DESC,name"}),
        ),
        (
            "expire snapshots of db.events older than 7 days keep 3",
            (
                "expire_snapshots",
                {"table": "db.events", "retain_last": 3, "older_than": "2024-05-03T12:00:00Z"},
            ),
        ),
        ("remove orphans of db.events", ("remove_orphan_files", {"table": "db.events", "dry_run": False})),
        ("find orphan files in db.events", ("remove_orphan_files", {"table": "db.events", "dry_run": True})),
        (
            "add column email string to db.users after name",
            ("add_column", {"table": "db.users", "name": "email", "type": "string", "after": "name"}),
        ),
        (
            "add column price decimal(10,2) to db.orders comment 'unit price'",
            (
                "add_column",
                {"table": "db.orders", "name": "price", "type": "decimal(10,2)", "comment": "unit price"},
            ),
        ),
        (
            "rename column a to b in db.t",
            ("rename_column", {"table": "db.t", "old_name": "a", "new_name": "b"}),
        ),
        ("drop column c from db.t", ("drop_column", {"table": "db.t", "name": "c"})),
        ("list pipelines", ("list_pipelines", {})),
        ("stop pipeline p-1", ("stop_pipeline", {"pipeline_id": "p-1"})),
        (
            "start pipeline from stream orders into db.orders",
            ("start_pipeline", {"spec": {"source_stream": "orders", "sink_table": "db.orders"}}),
        ),
        ("list jobs", ("list_jobs", {})),
        ("jobs", ("list_jobs", {})),
        ("show me the failed teckel jobs", ("list_jobs", {"status": "failed"})),
        ("which jobs are still running?", ("list_jobs", {"status": "running"})),
        ("list canceled jobs", ("list_jobs", {"status": "cancelled"})),
        ("status of job 6f1c-42", ("get_job", {"job_id": "6f1c-42"})),
        ("is job 6f1c-42 done?", ("get_job", {"job_id": "6f1c-42"})),
        ("submit job jobs/daily.yaml", ("submit_job", {"path": "jobs/daily.yaml"})),
        (
            "run the teckel job from file /srv/j.yml with DAY=2024-05-01, N='3'",
            ("submit_job", {"path": "/srv/j.yml", "variables": {"DAY": "2024-05-01", "N": "3"}}),
        ),
        ("submit job:\nversion: '3.0'\ninput: []\n", ("submit_job", {"yaml": "version: '3.0'\ninput: []\n"})),
        (
            "submit this job ```yaml\nversion: '3.0'\n```",
            ("submit_job", {"yaml": "version: '3.0'\n"}),
        ),
        ("stream lag", ("stream_lag", {})),
        ("what is the lag of the pipelines?", ("stream_lag", {})),
        ("stream lag for orders", ("stream_lag", {"stream": "orders"})),
        ("how far behind is stream orders", ("stream_lag", {"stream": "orders"})),
        (
            "lag of consumer audit on stream orders",
            ("stream_lag", {"consumer": "audit", "stream": "orders"}),
        ),
        ("list tables in namespace jobs", ("list_tables", {"namespace": "jobs"})),
    ],
)
def test_interpret_rules(prompt: str, expected: tuple[str, dict[str, Any]]) -> None:
    assert interpret(prompt, NOW) == LocalIntent("calls", (expected,))


def test_interpret_check_all_and_help() -> None:
    assert interpret("check all tables", NOW) == LocalIntent("check_all")
    assert interpret("are all tables in analytics healthy", NOW) == LocalIntent(
        "check_all", namespace="analytics"
    )
    assert interpret("check all tables in analytics", NOW) == LocalIntent("check_all", namespace="analytics")
    assert interpret("write me a poem", NOW).kind == "help"
    assert interpret("rename table db.a to db.b", NOW).kind == "help"  # not supported: no guessing
    assert interpret("submit job", NOW).kind == "help"  # which job?


def test_affirmations() -> None:
    assert all(is_affirmation(p) for p in ["yes", "Yes!", "y", "go ahead", "confirm", "yes please", "OK"])
    assert not any(is_affirmation(p) for p in ["yes but only db.a", "no", "compact db.a", ""])
    assert all(is_negation(p) for p in ["no", "No thanks", "cancel", "n"])
    assert not is_negation("stop pipeline p1")


def test_session_store_ttl_and_cap() -> None:
    now = [0.0]
    store = SessionStore(ttl_s=10, max_sessions=2, clock=lambda: now[0])
    a = store.get("a")
    assert store.get("a") is a
    fresh = store.get()
    assert fresh.id and fresh.id != "a"
    now[0] = 5
    store.get("a")  # a is now the most recently used
    store.get("b")  # over the cap: drops the least recently used (fresh)
    assert "a" in store and "b" in store and fresh.id not in store
    now[0] = 14.9
    assert "a" in store
    now[0] = 15
    assert "a" not in store and len(store) == 0
    assert store.get("a") is not a  # an expired id starts over


# ---------------------------------------------------------------------------------------------
# The local provider, end to end
# ---------------------------------------------------------------------------------------------


async def test_local_list_tables(agent: Agent, fake: FakeTools) -> None:
    response = await agent.chat(AgentRequest(prompt="list tables"))
    assert response.success and response.error is None
    assert (response.provider, response.model) == ("local", "rules")
    assert fake.calls == [("list_tables", {"namespace": ""})]
    assert "3 tables" in response.text
    for table in ("db.events", "db.users", "analytics.daily"):
        assert f"- {table}" in response.text
    [call] = response.tool_calls
    assert call.name == "list_tables" and call.success and not call.skipped
    assert json.loads(call.result_json)["tables"] == list(fake.health)
    assert response.session_id


async def test_local_schema_strips_the_catalog_name(agent: Agent, fake: FakeTools) -> None:
    response = await agent.chat(AgentRequest(prompt="What is the schema of lakestack.db.events?"))
    assert fake.calls == [("get_schema", {"table": "db.events"})]
    assert json.loads(response.tool_calls[0].arguments_json) == {"table": "db.events"}
    assert "db.events has 3 columns" in response.text
    assert "- id: bigint, required" in response.text
    assert "- payload: string -- raw JSON" in response.text
    assert "Partitioned by: day(ts)" in response.text


async def test_local_health_summary(agent: Agent, fake: FakeTools) -> None:
    response = await agent.chat(AgentRequest(prompt="is db.events healthy?"))
    assert fake.names() == ["get_table_health"]
    text = response.text
    assert text.startswith(
        "db.events needs maintenance: 120 data files (3.0 GiB, average 25.0 MiB), 80 small files"
    )
    assert "- [warning] 80 small files" in text
    assert "Recommendation: Consider compaction; Expire snapshots" in text
    assert "'compact db.events'" in text and "'expire snapshots of db.events'" in text

    healthy = await agent.chat(AgentRequest(prompt="health of db.users"))
    assert healthy.text.startswith("db.users healthy:")
    assert "Recommendation" not in healthy.text


async def test_local_check_all_tables(agent: Agent, fake: FakeTools) -> None:
    response = await agent.chat(AgentRequest(prompt="Check all tables"))
    assert fake.names() == ["list_tables", "get_table_health", "get_table_health", "get_table_health"]
    assert response.text.startswith("Checked 3 tables: 2 healthy, 1 need maintenance.")
    assert "db.events needs maintenance" in response.text
    assert "Healthy: db.users, analytics.daily." in response.text
    assert len(response.tool_calls) == 4


async def test_local_tool_failure_is_reported(agent: Agent) -> None:
    response = await agent.chat(AgentRequest(prompt="health of db.nope"))
    assert response.success  # the conversation worked; the tool call did not
    [call] = response.tool_calls
    assert not call.success and call.error == "table db.nope not found"
    assert response.text == "Could not check the health of db.nope: table db.nope not found"


async def test_local_submit_job_waits_for_yes_and_never_runs_in_a_dry_run(
    agent: Agent, fake: FakeTools
) -> None:
    dry = await agent.chat(AgentRequest(prompt="submit job jobs/daily.yaml", dry_run=True))
    assert (
        fake.calls == []
        and dry.text == "Dry run: I would submit the teckel job in jobs/daily.yaml. Nothing was changed."
    )
    asked = await agent.chat(AgentRequest(prompt="submit job jobs/daily.yaml with DAY=1"))
    assert fake.calls == [] and asked.text.endswith("Reply 'yes' to confirm.")
    done = await agent.chat(AgentRequest(prompt="yes", session_id=asked.session_id))
    assert fake.calls == [("submit_job", {"yaml": "", "path": "jobs/daily.yaml", "variables": {"DAY": "1"}})]
    assert done.text == "Submitted: job j-1 is queued. Ask 'status of job j-1' to follow it."
    missing = await agent.chat(AgentRequest(prompt="status of job j-2"))
    assert (
        missing.text
        == "Could not get the status of job j-2: teckel-jobs at 127.0.0.1:1 answered NOT_FOUND: job j-2"
    )


async def test_local_compact_needs_confirmation_then_runs_on_yes(agent: Agent, fake: FakeTools) -> None:
    first = await agent.chat(AgentRequest(prompt="compact db.events with sort on a,b"))
    assert first.success
    assert fake.calls == []
    [skipped] = first.tool_calls
    assert skipped.name == "compact_table" and skipped.skipped and not skipped.success
    assert skipped.result_json == ""
    assert (
        first.text == "I will compact table db.events using the sort strategy on a,b. Reply 'yes' to confirm."
    )

    second = await agent.chat(AgentRequest(prompt="yes", session_id=first.session_id))
    assert second.success and second.session_id == first.session_id
    assert fake.calls == [
        ("compact_table", {"table": "db.events", "strategy": "sort", "options": {"sort_order": "a,b"}})
    ]
    [ran] = second.tool_calls
    assert ran.success and not ran.skipped and json.loads(ran.result_json)["snapshot_id"] == 42
    assert second.text.startswith("Done: compact table db.events using the sort strategy on a,b.")
    assert "rewritten_files=80" in second.text and "New snapshot: 42." in second.text

    third = await agent.chat(AgentRequest(prompt="yes", session_id=first.session_id))
    assert len(fake.calls) == 1  # nothing pending any more: "yes" alone runs nothing
    assert "I can help with" in third.text


async def test_local_no_cancels_the_pending_call(agent: Agent, fake: FakeTools) -> None:
    first = await agent.chat(AgentRequest(prompt="drop column payload from db.events"))
    assert "I will drop column payload from db.events." in first.text
    second = await agent.chat(AgentRequest(prompt="no", session_id=first.session_id))
    assert second.text == "Cancelled: drop column payload from db.events. Nothing was changed."
    assert second.tool_calls == []
    third = await agent.chat(AgentRequest(prompt="yes", session_id=first.session_id))
    assert fake.calls == [] and third.tool_calls == []


async def test_local_other_prompt_cancels_and_is_answered(agent: Agent, fake: FakeTools) -> None:
    first = await agent.chat(AgentRequest(prompt="stop pipeline p1"))
    second = await agent.chat(AgentRequest(prompt="list pipelines", session_id=first.session_id))
    assert fake.names() == ["list_pipelines"]
    assert second.text.startswith("Cancelled: stop pipeline p1. Nothing was changed.\n\n1 pipeline:")
    assert "- p1 (orders): running, stream:orders -> db.orders, 1200 rows" in second.text


async def test_confirmation_is_per_session(agent: Agent, fake: FakeTools) -> None:
    first = await agent.chat(AgentRequest(prompt="expire snapshots of db.events keep 5"))
    other = await agent.chat(AgentRequest(prompt="yes", session_id="someone-else"))
    assert fake.calls == [] and other.tool_calls == []
    await agent.chat(AgentRequest(prompt="Go ahead", session_id=first.session_id))
    assert fake.calls == [("expire_snapshots", {"table": "db.events", "retain_last": 5, "older_than": None})]


async def test_local_dry_run_never_executes(agent: Agent, fake: FakeTools) -> None:
    response = await agent.chat(AgentRequest(prompt="remove orphans of db.events", dry_run=True))
    assert fake.calls == []
    [call] = response.tool_calls
    assert call.skipped and call.error and call.error.startswith("dry run")
    assert response.text == "Dry run: I would delete the orphan files of db.events. Nothing was changed."
    follow_up = await agent.chat(AgentRequest(prompt="yes", session_id=response.session_id))
    assert fake.calls == [] and follow_up.tool_calls == []  # a dry run leaves nothing pending

    looked = await agent.chat(AgentRequest(prompt="list orphan files in db.events", dry_run=True))
    assert fake.calls == [
        ("remove_orphan_files", {"table": "db.events", "dry_run": True, "older_than": None})
    ]
    assert "orphan_files: 2 (s3://w/db/events/data/x.parquet" in looked.text


async def test_dry_run_on_confirmation_skips(agent: Agent, fake: FakeTools) -> None:
    first = await agent.chat(AgentRequest(prompt="compact db.events"))
    second = await agent.chat(AgentRequest(prompt="yes", session_id=first.session_id, dry_run=True))
    assert fake.calls == []
    assert second.tool_calls[0].skipped
    assert second.text.startswith("Dry run: I would compact table db.events")


async def test_local_allowed_tools(agent: Agent, fake: FakeTools) -> None:
    response = await agent.chat(AgentRequest(prompt="schema of db.events", allowed_tools=["list_tables"]))
    assert fake.calls == []
    [call] = response.tool_calls
    assert call.skipped and call.error == "tool 'get_schema' is not allowed for this request"
    assert response.text.startswith("I can't read the schema of db.events: tool 'get_schema' is not allowed")

    allowed = await agent.chat(AgentRequest(prompt="list tables", allowed_tools=["list_tables"]))
    assert allowed.tool_calls[0].success and fake.names() == ["list_tables"]


async def test_local_unknown_request_gets_help(agent: Agent, fake: FakeTools) -> None:
    response = await agent.chat(AgentRequest(prompt="write me a poem about ducks"))
    assert response.success and fake.calls == [] and response.tool_calls == []
    assert "I can help with" in response.text
    for example in (
        "list tables",
        "schema of <table>",
        "check all tables",
        "compact <table>",
        "list pipelines",
    ):
        assert example in response.text


async def test_local_stream_events(agent: Agent) -> None:
    events = [e async for e in agent.chat_stream(AgentRequest(prompt="health of db.users"))]
    assert [e.type for e in events] == ["tool_call", "tool_result", "token", "done"]
    assert [e.sequence for e in events] == [0, 1, 2, 3]
    assert events[0].tool_call and events[0].tool_call.result_json == ""
    assert events[1].tool_call and events[1].tool_call.success
    done = events[-1]
    assert done.response and done.content == done.response.text == events[2].content


async def test_empty_prompt_fails_cleanly(agent: Agent) -> None:
    response = await agent.chat(AgentRequest(prompt="   "))
    assert not response.success and response.error == "the prompt is empty"
    events = [e async for e in agent.chat_stream(AgentRequest(prompt=""))]
    assert [e.type for e in events] == ["error"] and events[0].error == "the prompt is empty"


# ---------------------------------------------------------------------------------------------
# A scripted OpenAI-compatible server
# ---------------------------------------------------------------------------------------------


@dataclass
class Reply:
    status: int = 200
    body: Any = None  # JSON reply
    sse: list[Any] | None = None  # chunks of a text/event-stream reply ("data: [DONE]" is added)
    raw: bytes | None = None
    hang: bool = False  # never answer


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class FakeLLM:
    replies: list[Reply] = field(default_factory=list)
    requests: list[Received] = field(default_factory=list)
    port: int = 0
    _release: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            request_line, *header_lines = head.decode().split("\r\n")
            headers = {}
            for line in header_lines:
                if ":" in line:
                    name, value = line.split(":", 1)
                    headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            self.requests.append(Received(request_line.split()[1], headers, json.loads(body)))
            reply = (
                self.replies.pop(0) if self.replies else Reply(500, {"error": {"message": "no reply left"}})
            )
            if reply.hang:
                await self._release.wait()
            elif reply.sse is not None:
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                    b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
                )
                for chunk in [*reply.sse, "[DONE]"]:
                    data = f"data: {chunk if isinstance(chunk, str) else json.dumps(chunk)}\n\n".encode()
                    writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                    await writer.drain()
                writer.write(b"0\r\n\r\n")
            else:
                payload = reply.raw if reply.raw is not None else json.dumps(reply.body).encode()
                writer.write(
                    f"HTTP/1.1 {reply.status} X\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode()
                    + payload
                )
            await writer.drain()
        finally:
            writer.close()


@pytest.fixture
async def llm() -> AsyncIterator[FakeLLM]:
    server_state = FakeLLM()
    server = await asyncio.start_server(server_state.handle, "127.0.0.1", 0)
    server_state.port = server.sockets[0].getsockname()[1]
    try:
        yield server_state
    finally:
        server_state._release.set()
        server.close()
        await server.wait_closed()


def completion(
    content: str | None = None,
    tool_calls: list[dict[str, Any]] | None = None,
    usage: tuple[int, int] = (10, 5),
) -> Reply:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return Reply(
        body={
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "choices": [
                {"index": 0, "message": message, "finish_reason": "tool_calls" if tool_calls else "stop"}
            ],
            "usage": {"prompt_tokens": usage[0], "completion_tokens": usage[1], "total_tokens": sum(usage)},
        }
    )


def call(name: str, arguments: Any, call_id: str = "call_1") -> dict[str, Any]:
    text = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": text}}


def llm_agent(fake: FakeTools, llm: FakeLLM, **config: Any) -> Agent:
    config.setdefault("default_provider", "openai")
    config.setdefault("default_model", "gpt-test")
    config.setdefault("api_base", llm.url)
    config.setdefault("api_key", "sk-test")
    config.setdefault("timeout_s", 10)
    return Agent(_tools(fake), AgentConfig(**config), clock=lambda: NOW)


def roles(body: dict[str, Any]) -> list[str]:
    return [m["role"] for m in body["messages"]]


async def test_openai_tool_call_then_answer(
    fake: FakeTools, llm: FakeLLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LAKESTACK_TEST_LLM_KEY", "sk-from-env")
    agent = llm_agent(fake, llm, api_key="LAKESTACK_TEST_LLM_KEY")
    llm.replies = [
        completion(tool_calls=[call("get_table_health", {"table": "db.events"}, "call_h")], usage=(100, 12)),
        completion("db.events needs compaction: 80 small files.", usage=(180, 20)),
    ]
    response = await agent.chat(AgentRequest(prompt="How is db.events doing?", model="my-model"))

    assert response.success, response.error
    assert response.text == "db.events needs compaction: 80 small files."
    assert (response.provider, response.model) == ("openai", "my-model")
    assert (response.prompt_tokens, response.completion_tokens) == (280, 32)
    assert fake.calls == [("get_table_health", {"table": "db.events"})]
    [record] = response.tool_calls
    assert (
        record.id == "call_h" and record.success and json.loads(record.result_json)["small_file_count"] == 80
    )

    first, second = llm.requests
    assert first.path == "/v1/chat/completions"
    assert first.headers["authorization"] == "Bearer sk-from-env"
    assert first.body["model"] == "my-model"
    assert first.body["stream"] is False
    assert [t["function"]["name"] for t in first.body["tools"]] == list(TOOLS)
    assert roles(first.body) == ["system", "user"]
    assert first.body["messages"][1]["content"] == "How is db.events doing?"
    assert roles(second.body) == ["system", "user", "assistant", "tool"]
    assistant, tool = second.body["messages"][2:]
    assert assistant["tool_calls"][0]["function"]["name"] == "get_table_health"
    assert tool["tool_call_id"] == "call_h"
    assert json.loads(tool["content"]) == fake.health["db.events"]

    # The session keeps the history for the next turn.
    llm.replies = [completion("It has 150 snapshots.")]
    follow = await agent.chat(AgentRequest(prompt="And snapshots?", session_id=response.session_id))
    assert follow.success
    assert roles(llm.requests[2].body) == ["system", "user", "assistant", "tool", "assistant", "user"]


async def test_openai_stream_events(fake: FakeTools, llm: FakeLLM) -> None:
    agent = llm_agent(fake, llm)

    def delta(**d: Any) -> dict[str, Any]:
        return {"choices": [{"index": 0, "delta": d, "finish_reason": None}]}

    usage = {"choices": [], "usage": {"prompt_tokens": 50, "completion_tokens": 9}}
    tool_delta = [
        {
            "index": 0,
            "id": "call_s",
            "type": "function",
            "function": {"name": "get_table_health", "arguments": '{"tab'},
        }
    ]
    llm.replies = [
        Reply(
            sse=[
                delta(role="assistant", content="Let me check."),
                delta(tool_calls=tool_delta),
                delta(tool_calls=[{"index": 0, "function": {"arguments": 'le": "db.events"}'}}]),
                usage,
            ]
        ),
        Reply(sse=[delta(content="db.events"), delta(content=" needs compaction."), usage]),
    ]
    events: list[AgentEvent] = [e async for e in agent.chat_stream(AgentRequest(prompt="check db.events"))]

    assert [e.type for e in events] == ["token", "tool_call", "tool_result", "token", "token", "done"]
    assert [e.sequence for e in events] == list(range(len(events)))
    tokens = "".join(e.content for e in events if e.type == "token")
    assert tokens == "Let me check.\n\ndb.events needs compaction."
    call_event, result_event = events[1], events[2]
    assert call_event.tool_call and call_event.tool_call.name == "get_table_health"
    assert json.loads(call_event.tool_call.arguments_json) == {"table": "db.events"}
    assert call_event.tool_call.result_json == ""
    assert result_event.tool_call and result_event.tool_call.success and result_event.tool_call.id == "call_s"
    done = events[-1]
    assert done.response and done.response.success
    assert done.content == done.response.text == tokens
    assert (done.response.prompt_tokens, done.response.completion_tokens) == (100, 18)
    assert fake.calls == [("get_table_health", {"table": "db.events"})]
    assert llm.requests[0].body["stream"] is True
    assert llm.requests[1].body["messages"][-1]["tool_call_id"] == "call_s"


async def test_openai_stream_falls_back_without_streaming(fake: FakeTools, llm: FakeLLM) -> None:
    agent = llm_agent(fake, llm)
    llm.replies = [Reply(400, {"error": {"message": "stream not supported"}}), completion("Hello there.")]
    events = [e async for e in agent.chat_stream(AgentRequest(prompt="hi"))]
    assert [e.type for e in events] == ["token", "done"]
    assert events[-1].content == "Hello there."
    assert [r.body["stream"] for r in llm.requests] == [True, False]

    llm.replies = [completion("Again.")]  # remembered: no second streaming attempt
    events = [e async for e in agent.chat_stream(AgentRequest(prompt="hi"))]
    assert events[-1].content == "Again." and llm.requests[-1].body["stream"] is False

    # A server that ignores "stream" and answers with plain JSON works too.
    other = llm_agent(fake, llm)
    llm.replies = [completion("Plain JSON.")]
    events = [e async for e in other.chat_stream(AgentRequest(prompt="hi"))]
    assert [e.type for e in events] == ["token", "done"] and events[-1].content == "Plain JSON."


async def test_openai_mutating_call_waits_for_confirmation(fake: FakeTools, llm: FakeLLM) -> None:
    agent = llm_agent(fake, llm)
    llm.replies = [
        completion(tool_calls=[call("compact_table", {"table": "db.events", "strategy": "binpack"})])
    ]
    first = await agent.chat(AgentRequest(prompt="Please compact db.events"))
    assert first.success
    assert first.text == "I will compact table db.events using the binpack strategy. Reply 'yes' to confirm."
    assert fake.calls == [] and first.tool_calls[0].skipped
    assert len(llm.requests) == 1

    llm.replies = [completion("Compaction done: 80 files rewritten into 4.")]
    second = await agent.chat(AgentRequest(prompt="yes", session_id=first.session_id))
    assert second.success, second.error
    assert fake.calls == [("compact_table", {"table": "db.events", "strategy": "binpack", "options": None})]
    assert second.text == "Compaction done: 80 files rewritten into 4."
    body = llm.requests[1].body
    assert roles(body) == ["system", "user", "assistant", "tool", "assistant", "user", "assistant", "tool"]
    assert json.loads(body["messages"][3]["content"])["status"] == "awaiting_confirmation"
    assert body["messages"][4]["content"] == first.text
    assert body["messages"][5]["content"] == "yes"
    assert body["messages"][6]["tool_calls"][0]["function"]["name"] == "compact_table"
    assert json.loads(body["messages"][7]["content"])["snapshot_id"] == 42


async def test_openai_dry_run_and_allowed_tools(fake: FakeTools, llm: FakeLLM) -> None:
    agent = llm_agent(fake, llm)
    llm.replies = [
        completion(tool_calls=[call("drop_column", {"table": "db.events", "name": "payload"})]),
        completion("In a dry run I would drop payload."),
    ]
    response = await agent.chat(
        AgentRequest(prompt="drop payload", dry_run=True, allowed_tools=["drop_column", "get_schema"])
    )
    assert response.success and fake.calls == []
    assert response.tool_calls[0].skipped
    assert response.text == "In a dry run I would drop payload."
    first, second = llm.requests
    assert [t["function"]["name"] for t in first.body["tools"]] == ["get_schema", "drop_column"]
    assert "dry run" in first.body["messages"][0]["content"]
    assert json.loads(second.body["messages"][-1]["content"])["status"] == "not_executed"

    llm.replies = [
        completion(tool_calls=[call("list_tables", {})]),
        completion("Not allowed."),
    ]
    response = await agent.chat(AgentRequest(prompt="list", allowed_tools=["get_schema"]))
    assert fake.calls == [] and response.tool_calls[0].skipped
    assert "not allowed" in (response.tool_calls[0].error or "")


async def test_openai_bad_tool_calls_are_fed_back(fake: FakeTools, llm: FakeLLM) -> None:
    agent = llm_agent(fake, llm)
    llm.replies = [
        completion(
            tool_calls=[call("drop_database", {"name": "db"}, "c1"), call("get_schema", "{table:", "c2")]
        ),
        completion("Sorry, I cannot do that."),
    ]
    response = await agent.chat(AgentRequest(prompt="drop the database"))
    assert response.success and fake.calls == []
    unknown, invalid = response.tool_calls
    assert not unknown.success and "unknown tool 'drop_database'" in (unknown.error or "")
    assert not invalid.success and "invalid arguments for get_schema" in (invalid.error or "")
    tool_messages = [m for m in llm.requests[1].body["messages"] if m["role"] == "tool"]
    assert [m["tool_call_id"] for m in tool_messages] == ["c1", "c2"]
    assert "unknown tool" in json.loads(tool_messages[0]["content"])["error"]
    assert "not valid JSON" in json.loads(tool_messages[1]["content"])["error"]


async def test_openai_max_steps(fake: FakeTools, llm: FakeLLM) -> None:
    agent = llm_agent(fake, llm)
    llm.replies = [completion(tool_calls=[call("list_tables", {}, f"c{i}")]) for i in range(3)]
    response = await agent.chat(AgentRequest(prompt="loop", max_steps=2))
    assert not response.success
    assert response.error and "max_steps" in response.error
    assert len(llm.requests) == 3 and fake.names() == ["list_tables", "list_tables"]
    assert len(response.tool_calls) == 2


async def test_openai_http_500(fake: FakeTools, llm: FakeLLM) -> None:
    agent = llm_agent(fake, llm)
    llm.replies = [Reply(500, {"error": {"message": "model overloaded"}})]
    response = await agent.chat(AgentRequest(prompt="list tables"))
    assert not response.success
    assert response.error and "HTTP 500" in response.error and "model overloaded" in response.error
    assert response.session_id and response.tool_calls == []

    llm.replies = [Reply(500, {"error": {"message": "still overloaded"}})]
    events = [e async for e in agent.chat_stream(AgentRequest(prompt="list tables"))]
    assert [e.type for e in events] == ["error"]
    assert events[0].error and "still overloaded" in events[0].error and events[0].content == events[0].error
    assert len(llm.requests) == 2  # no retry without streaming after a server error


async def test_openai_bad_json_and_timeout(fake: FakeTools, llm: FakeLLM) -> None:
    agent = llm_agent(fake, llm, timeout_s=0.5)
    llm.replies = [Reply(raw=b"<html>not json</html>")]
    response = await agent.chat(AgentRequest(prompt="hi"))
    assert not response.success and "invalid JSON" in (response.error or "")

    llm.replies = [Reply(body={"unexpected": True})]
    response = await agent.chat(AgentRequest(prompt="hi"))
    assert not response.success and "no choices" in (response.error or "")

    llm.replies = [Reply(hang=True)]
    response = await agent.chat(AgentRequest(prompt="hi"))
    assert not response.success and "timed out" in (response.error or "")


async def test_unreachable_provider_and_bad_config(fake: FakeTools) -> None:
    agent = Agent(_tools(fake), AgentConfig(default_model="m", api_base="http://127.0.0.1:9/v1", timeout_s=5))
    response = await agent.chat(AgentRequest(prompt="hi", provider="vllm"))
    assert not response.success and "127.0.0.1:9" in (response.error or "")

    response = await agent.chat(AgentRequest(prompt="hi", provider="custom"))
    assert not response.success and "cannot reach" in (response.error or "")

    no_model = await Agent(_tools(fake)).chat(AgentRequest(prompt="hi", provider="openai"))
    assert not no_model.success and "no model" in (no_model.error or "")
    bad_base = await agent.chat(AgentRequest(prompt="hi", provider="x", api_base="file:///etc/passwd"))
    assert not bad_base.success and "http(s)" in (bad_base.error or "")
    no_base = await Agent(_tools(fake), AgentConfig(default_model="m")).chat(
        AgentRequest(prompt="hi", provider="x")
    )
    assert not no_base.success and "no api_base" in (no_base.error or "")


async def test_key_is_not_sent_to_a_request_chosen_api_base(fake: FakeTools, llm: FakeLLM) -> None:
    agent = Agent(_tools(fake), AgentConfig(default_model="m", api_key="sk-secret", timeout_s=10))
    llm.replies = [completion("hi")]
    response = await agent.chat(AgentRequest(prompt="hi", provider="openai", api_base=llm.url))
    assert response.success and "authorization" not in llm.requests[0].headers

    trusted = llm_agent(fake, llm, api_key="sk-secret")
    llm.replies = [completion("hi")]
    await trusted.chat(AgentRequest(prompt="hi", provider="ollama", api_base=llm.url + "/"))
    assert llm.requests[1].headers["authorization"] == "Bearer sk-secret"


def test_response_types_are_plain_dataclasses() -> None:
    response = AgentResponse(
        success=True, text="x", tool_calls=[], error=None, session_id="s", provider="local", model="rules"
    )
    assert response.prompt_tokens == 0 and response.completion_tokens == 0
