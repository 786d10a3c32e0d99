"""The agent manages the other services: teckel jobs (list, submit, status) and stream lag, through
the real teckel-jobs and streams services started in-process on free loopback ports, with the local
rules and with an OpenAI-compatible model; and a clear error when those services are down.

Waits poll until a deadline; nothing asserts timing."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from lakestack_common.clients import LakehouseClient, StreamsClient, TeckelClient
from lakestack_common.testing import channel_to, eventually, running
from lakestack_common.topology import STREAMS, free_port
from lakestack_lakehouse.app import LakehouseService
from lakestack_lakehouse.settings import LakehouseSettings
from lakestack_protos.lakehouse import lakehouse_pb2 as pb
from lakestack_protos.teckel.v1 import teckel_pb2 as tpb
from lakestack_protos.waymaker.streams import waymaker_streams_pb2 as spb
from lakestack_streams.app import StreamsService
from lakestack_streams.settings import StreamsSettings
from lakestack_teckel_jobs.app import TeckelJobsService
from lakestack_teckel_jobs.settings import TeckelJobsSettings

from .test_agent import FakeLLM, call, completion, llm  # noqa: F401 - llm is a fixture

T = TypeVar("T")
DEADLINE_S = 60.0


@dataclass
class Platform:
    lakehouse: LakehouseClient
    teckel: TeckelClient
    streams: StreamsClient
    teckel_address: str
    streams_address: str

    async def chat(self, prompt: str, session_id: str = "", **fields: Any) -> pb.ChatResponse:
        return await self.lakehouse.agent.Chat(pb.ChatRequest(prompt=prompt, session_id=session_id, **fields))


@pytest.fixture
async def platform(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Platform]:
    monkeypatch.delenv(STREAMS.address_env, raising=False)  # no platform events in these tests
    streams_service = StreamsService(StreamsSettings(data_dir=tmp_path / "streams"))
    teckel_service = TeckelJobsService(TeckelJobsSettings(data_dir=tmp_path / "teckel", max_concurrency=1))
    async with running(streams_service) as streams_server, running(teckel_service) as teckel_server:
        streams_address = f"127.0.0.1:{streams_server.port}"
        teckel_address = f"127.0.0.1:{teckel_server.port}"
        settings = LakehouseSettings(
            data_dir=tmp_path / "lakehouse",
            streams_address=streams_address,
            teckel_jobs_address=teckel_address,
        )
        async with (
            running(LakehouseService(settings)) as server,
            LakehouseClient(channel_to(server)) as lakehouse,
            TeckelClient(channel_to(teckel_server)) as teckel,
            StreamsClient(channel_to(streams_server)) as streams,
        ):
            yield Platform(lakehouse, teckel, streams, teckel_address, streams_address)


def job_yaml(data: Path, out: Path) -> str:
    return f"""version: "3.0"
input:
  - name: orders
    format: csv
    path: {data}
    options: {{header: true}}
transformation:
  - name: paid
    where: {{from: orders, filter: "amount > 0"}}
output:
  - name: paid
    format: parquet
    path: {out}
    mode: error
"""


def only_call(response: pb.ChatResponse, name: str) -> tuple[pb.ToolCall, dict[str, Any]]:
    """The response's one tool call (of tool ``name``) and its result."""
    assert response.success, response.error
    [tool_call] = response.tool_calls
    assert tool_call.name == name
    return tool_call, json.loads(tool_call.result_json) if tool_call.result_json else {}


# ---- teckel jobs --------------------------------------------------------------------------------


async def test_the_agent_lists_submits_and_follows_teckel_jobs(platform: Platform, tmp_path: Path) -> None:
    data = tmp_path / "orders.csv"
    data.write_text("id,amount\n1,5.0\n2,0.0\n3,7.5\n")
    out = tmp_path / "out" / "paid.parquet"
    document = tmp_path / "paid.yaml"
    document.write_text(job_yaml(data, out))

    empty = await platform.chat("list jobs")
    listed, result = only_call(empty, "list_jobs")
    assert listed.success and result["jobs"] == [] and result["total"] == 0
    assert empty.text == "No teckel jobs."

    proposal = await platform.chat(f"submit job {document}")
    [pending] = proposal.tool_calls
    assert pending.name == "submit_job" and pending.skipped
    assert proposal.text == f"I will submit the teckel job in {document}. Reply 'yes' to confirm."
    assert len((await platform.teckel.teckel.ListJobs(tpb.ListJobsRequest())).jobs) == 0  # not before "yes"

    confirmed = await platform.chat("yes", proposal.session_id)
    submitted, result = only_call(confirmed, "submit_job")
    assert submitted.success and result["status"] == "queued" and result["path"] == str(document)
    job_id = result["job_id"]
    assert confirmed.text.startswith(f"Submitted: job {job_id} is queued.")

    async def finished() -> dict[str, Any] | None:
        _, got = only_call(await platform.chat(f"status of job {job_id}"), "get_job")
        return got["job"] if got["job"]["status"] in ("completed", "failed", "cancelled") else None

    job = await eventually(finished, "the job finished")
    assert (job["id"], job["status"], job["error"]) == (job_id, "completed", "")
    assert out.exists()  # the job ran on teckel-jobs and wrote its output
    teckel_view = await platform.teckel.teckel.GetJob(tpb.GetJobRequest(job_id=job_id))
    assert teckel_view.status == "completed" and teckel_view.completed_at == job["completed_at"]
    status = await platform.chat(f"is job {job_id} done?")
    assert status.text.startswith(f"Job {job_id}: completed, submitted ")

    everything = await platform.chat("list completed jobs")
    _, result = only_call(everything, "list_jobs")
    assert [j["id"] for j in result["jobs"]] == [job_id] and result["counts"] == {"completed": 1}
    assert everything.text.startswith("1 completed teckel job:\n- " + job_id + ": completed")
    _, none_failed = only_call(await platform.chat("list failed jobs"), "list_jobs")
    assert none_failed["jobs"] == [] and none_failed["total"] == 0


async def test_an_inline_job_and_the_errors_teckel_gives(platform: Platform, tmp_path: Path) -> None:
    data = tmp_path / "orders.csv"
    data.write_text("id,amount\n1,5.0\n")
    broken = job_yaml(data, tmp_path / "o.parquet").replace("from: orders", "from: ordrs")
    proposal = await platform.chat(f"submit job:\n{broken}")
    [pending] = proposal.tool_calls
    assert pending.skipped and json.loads(pending.arguments_json) == {"yaml": broken}
    confirmed = await platform.chat("yes", proposal.session_id)
    refused, _ = only_call(confirmed, "submit_job")
    assert not refused.success
    assert refused.error.startswith(f"teckel-jobs at {platform.teckel_address} answered INVALID_ARGUMENT:")
    assert "ordrs" in refused.error and confirmed.text.startswith("Could not submit a teckel job")
    assert len((await platform.teckel.teckel.ListJobs(tpb.ListJobsRequest())).jobs) == 0

    unknown, _ = only_call(await platform.chat("status of job no-such-job"), "get_job")
    assert not unknown.success and unknown.error.startswith(
        f"teckel-jobs at {platform.teckel_address} answered NOT_FOUND"
    )

    not_yaml = tmp_path / "notes.txt"
    not_yaml.write_text("version: 3.0")
    proposal = await platform.chat(f"submit job {not_yaml}")
    rejected, _ = only_call(await platform.chat("yes", proposal.session_id), "submit_job")
    assert (
        not rejected.success
        and rejected.error == f"cannot read the job file: {not_yaml} is not a .yaml or .yml file"
    )


# ---- stream lag ---------------------------------------------------------------------------------


async def publish(streams: StreamsClient, stream: str, count: int) -> None:
    config = spb.StreamConfigPb(name=stream, subjects_filter=[f"{stream}.>"])
    assert (await streams.streams.CreateStream(spb.CreateStreamRequest(config=config))).success
    for i in range(count):
        payload = json.dumps({"id": i, "amount": i * 1.5}).encode()
        reply = await streams.streams.Publish(
            spb.PublishRequest(stream=stream, subject=f"{stream}.new", payload=payload)
        )
        assert reply.success, reply.message


async def test_the_agent_reports_stream_lag(platform: Platform) -> None:
    await publish(platform.streams, "orders", 5)
    audit = spb.ConsumerConfigPb(name="audit")
    assert (
        await platform.streams.streams.CreateConsumer(
            spb.CreateConsumerRequest(stream="orders", config=audit)
        )
    ).success
    fetched = await platform.streams.streams.Fetch(
        spb.FetchRequest(stream="orders", consumer="audit", batch_size=2)
    )
    assert [m.seq for m in fetched.messages] == [1, 2]
    await platform.streams.streams.Ack(spb.AckRequest(stream="orders", consumer="audit", seq=1))

    one = await platform.chat("lag of consumer audit on stream orders")
    lag_call, result = only_call(one, "stream_lag")
    assert json.loads(lag_call.arguments_json) == {"consumer": "audit", "stream": "orders"}
    assert result["consumers"] == [
        {
            "stream": "orders",
            "consumer": "audit",
            "last_seq": 5,
            "filter_subject": "",
            "ack_floor": 1,
            "last_delivered": 2,
            "lag": 4,
            "pending": 3,
            "ack_pending": 1,
        }
    ]
    assert result["total_lag"] == 4
    assert "- orders/audit: lag 4 (3 not yet delivered, 1 awaiting ack), stream at seq 5" in one.text

    none = await platform.chat("stream lag")
    _, result = only_call(none, "stream_lag")
    assert (
        result["consumers"] == [] and none.text == "No stream pipelines (and so no consumers) to report on."
    )

    started = await platform.lakehouse.streaming.StartPipeline(
        pb.StartPipelineRequest(
            source_stream="orders",
            sink_table="db.orders",
            create_sink=True,
            trigger_interval="20 ms",
            start_position="all",
        )
    )
    consumer = f"lakehouse-{started.pipeline_id}"

    async def caught_up() -> dict[str, Any] | None:
        _, got = only_call(await platform.chat("how far behind are the pipelines?"), "stream_lag")
        rows = got["consumers"]
        return got if rows and rows[0]["lag"] == 0 and rows[0]["ack_floor"] == 5 else None

    result = await eventually(caught_up, "the pipeline's consumer caught up")
    [row] = result["consumers"]
    assert (row["stream"], row["consumer"], row["pipeline_id"]) == ("orders", consumer, started.pipeline_id)
    assert row["pipeline_status"] == "running" and row["pending"] == row["ack_pending"] == 0

    every = await platform.chat("stream lag for orders")
    _, result = only_call(every, "stream_lag")
    lags = {r["consumer"]: (r["lag"], r.get("pipeline_id")) for r in result["consumers"]}
    assert lags == {"audit": (4, None), consumer: (0, started.pipeline_id)}
    assert result["total_lag"] == 4

    missing, _ = only_call(await platform.chat("stream lag for nope"), "stream_lag")
    assert (
        not missing.success
        and missing.error == f"streams at {platform.streams_address}: stream 'nope' does not exist"
    )
    gone, _ = only_call(await platform.chat("lag of consumer ghost on stream orders"), "stream_lag")
    assert (
        gone.error
        == f"streams at {platform.streams_address}: consumer 'ghost' of stream 'orders' does not exist"
    )


async def test_an_openai_compatible_model_uses_the_platform_tools(
    platform: Platform,
    llm: FakeLLM,  # noqa: F811 - the fixture
) -> None:
    await publish(platform.streams, "clicks", 3)
    audit = spb.ConsumerConfigPb(name="audit")
    assert (
        await platform.streams.streams.CreateConsumer(
            spb.CreateConsumerRequest(stream="clicks", config=audit)
        )
    ).success
    llm.replies = [
        completion(
            tool_calls=[
                call("list_jobs", {}, "call_jobs"),
                call("stream_lag", {"stream": "clicks"}, "call_lag"),
            ]
        ),
        completion("No jobs yet; consumer audit is 3 messages behind on clicks."),
    ]
    answer = await platform.chat("what is going on?", provider="openai", model="gpt-test", api_base=llm.url)
    assert answer.success, answer.error
    assert [c.name for c in answer.tool_calls] == ["list_jobs", "stream_lag"]
    assert all(c.success for c in answer.tool_calls)
    offered = {t["function"]["name"] for t in llm.requests[0].body["tools"]}
    assert {"list_jobs", "submit_job", "get_job", "stream_lag"} <= offered
    fed_back = {
        m["tool_call_id"]: json.loads(m["content"])
        for m in llm.requests[1].body["messages"]
        if m["role"] == "tool"
    }
    assert fed_back["call_jobs"]["jobs"] == []
    assert [(c["consumer"], c["lag"]) for c in fed_back["call_lag"]["consumers"]] == [("audit", 3)]
    assert answer.text == "No jobs yet; consumer audit is 3 messages behind on clicks."


# ---- the other services down ------------------------------------------------------------------


async def test_unreachable_services_give_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(STREAMS.address_env, raising=False)
    nowhere = f"127.0.0.1:{free_port()}"  # nothing listens there
    settings = LakehouseSettings(
        data_dir=tmp_path / "lakehouse",
        streams_address=nowhere,
        teckel_jobs_address=nowhere,
        remote_timeout_s=5,
    )
    async with (
        running(LakehouseService(settings)) as server,
        LakehouseClient(channel_to(server)) as lakehouse,
    ):
        jobs = await lakehouse.agent.Chat(pb.ChatRequest(prompt="list jobs"))
        assert jobs.success  # the conversation works; the tool call does not
        failed, _ = only_call(jobs, "list_jobs")
        assert not failed.success and failed.error.startswith(f"teckel-jobs at {nowhere} is unreachable: ")
        assert jobs.text.startswith(
            f"Could not list the teckel jobs: teckel-jobs at {nowhere} is unreachable"
        )

        status, _ = only_call(
            await lakehouse.agent.Chat(pb.ChatRequest(prompt="status of job j1")), "get_job"
        )
        assert status.error.startswith(f"teckel-jobs at {nowhere} is unreachable: ")

        lag = await lakehouse.agent.Chat(pb.ChatRequest(prompt="stream lag for orders"))
        failed, _ = only_call(lag, "stream_lag")
        assert not failed.success and failed.error.startswith(f"streams at {nowhere} is unreachable: ")
        assert "Could not report the lag of every consumer of stream orders: streams at" in lag.text

        # The lakehouse itself still answers.
        tables = await lakehouse.agent.Chat(pb.ChatRequest(prompt="list tables"))
        assert only_call(tables, "list_tables")[0].success
