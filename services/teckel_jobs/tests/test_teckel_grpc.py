"""teckel.v1.TeckelService over real gRPC: every RPC, real pipelines on real files, cancellation,
and the error statuses the contract and the reference give."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path

import grpc
import polars as pl
import pytest

from lakestack_common.testing import channel_to, running
from lakestack_protos.teckel.v1 import teckel_pb2 as pb
from lakestack_protos.teckel.v1 import teckel_pb2_grpc
from lakestack_teckel_jobs.app import TeckelJobsService
from lakestack_teckel_jobs.settings import TeckelJobsSettings

Stub = teckel_pb2_grpc.TeckelServiceStub


@pytest.fixture
async def stub(tmp_path: Path) -> AsyncIterator[Stub]:
    settings = TeckelJobsSettings(data_dir=tmp_path / "state", max_concurrency=2, hooks_enabled=True)
    async with running(TeckelJobsService(settings)) as server:
        channel = channel_to(server)
        yield Stub(channel)
        await channel.close()


@pytest.fixture
def data(tmp_path: Path) -> Path:
    folder = tmp_path / "data"
    folder.mkdir()
    pl.DataFrame(
        {
            "id": [1, 2, 3, 4, 5, 6],
            "customer_id": [10, 20, 10, 30, 20, 10],
            "amount": [5.0, 25.0, 40.0, 15.0, 60.0, 0.0],
        }
    ).write_csv(folder / "orders.csv")
    pl.DataFrame({"id": [10, 20, 30], "name": ["ada", "bob", "cy"]}).write_parquet(
        folder / "customers.parquet"
    )
    return folder


def pipeline(data: Path, out: Path, mode: str = "error", extra: str = "") -> str:
    return f"""
version: "3.0"
input:
  - name: orders
    format: csv
    path: {data}/orders.csv
    options: {{header: true}}
  - name: customers
    format: parquet
    path: {data}/customers.parquet
transformation:
  - name: paid
    where: {{from: orders, filter: "amount > 0"}}
  - name: enriched
    join:
      left: paid
      right:
        - name: customers
          type: inner
          on: ["paid.customer_id = customers.id"]
  - name: totals
    group: {{from: enriched, by: [name], agg: ["sum(amount) AS total", "count(*) AS orders"]}}
  - name: ranked
    orderBy: {{from: totals, columns: [{{column: total, direction: desc}}]}}
output:
  - name: ranked
    format: parquet
    path: {out}
    mode: {mode}
{extra}"""


def slow(data: Path, out: Path, seconds: int = 30) -> str:
    return pipeline(
        data, out, extra=f"hooks:\n  preExecution:\n    - {{name: wait, command: 'sleep {seconds}'}}\n"
    )


async def wait_for_status(stub: Stub, job_id: str, status: str) -> pb.JobResponse:
    for _ in range(600):
        job = await stub.GetJob(pb.GetJobRequest(job_id=job_id))
        if job.status == status:
            return job
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {job_id} never reached {status}")


async def test_health(stub: Stub) -> None:
    answer = await stub.Health(pb.HealthRequest())
    assert (answer.status, answer.version) == ("ok", "0.1.0")


async def test_validate_reports_valid_and_every_error(stub: Stub, data: Path, tmp_path: Path) -> None:
    good = await stub.ValidatePipeline(pb.PipelineRequest(yaml=pipeline(data, tmp_path / "o.parquet")))
    assert (good.valid, good.error) == (True, "")
    misspelt = pipeline(data, tmp_path / "o.parquet").replace("from: enriched", "from: enrichd")
    bad = await stub.ValidatePipeline(pb.PipelineRequest(yaml=misspelt))
    assert not bad.valid
    assert bad.error.startswith("Validation failed with 1 error(s):")
    expected = '[E-REF-001] asset "totals" references undefined asset "enrichd" (did you mean "enriched"?)'
    assert expected in bad.error


async def test_variables_come_from_the_request(stub: Stub, data: Path, tmp_path: Path) -> None:
    text = pipeline(data, tmp_path / "o.parquet").replace(f"{data}/orders.csv", "${BASE}/orders.csv")
    missing = await stub.ValidatePipeline(pb.PipelineRequest(yaml=text))
    assert "[E-VAR-001]" in missing.error
    given = await stub.ValidatePipeline(pb.PipelineRequest(yaml=text, variables={"BASE": str(data)}))
    assert given.valid


async def test_explain(stub: Stub, data: Path, tmp_path: Path) -> None:
    plan = (await stub.ExplainPipeline(pb.PipelineRequest(yaml=pipeline(data, tmp_path / "o")))).plan
    assert plan.startswith("=== Pipeline Execution Plan ===\n\n--- Inputs ---\n")
    assert "  [enriched] JOIN (from: paid, customers)" in plan
    assert "  [totals] GROUP BY (from: enriched)" in plan
    assert f"  [output_ranked] from=ranked, format=parquet, mode=Error, path={tmp_path / 'o'}" in plan
    assert "Total: 2 inputs, 4 transformations, 1 outputs\nExecution waves: 6\n" in plan
    assert plan.endswith("  Wave 4: ranked\n  Wave 5: output_ranked")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ExplainPipeline(pb.PipelineRequest(yaml="version: '3.0'\n"))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "E-REQ-001" in (caught.value.details() or "")


async def test_a_job_runs_to_completion_and_writes_its_output(stub: Stub, data: Path, tmp_path: Path) -> None:
    out = tmp_path / "out" / "ranked.parquet"
    submitted = await stub.SubmitJob(pb.PipelineRequest(yaml=pipeline(data, out)))
    assert submitted.status == "queued"
    job = await stub.WaitForJob(pb.WaitForJobRequest(job_id=submitted.job_id, timeout_seconds=60))
    assert (job.id, job.status, job.error) == (submitted.job_id, "completed", "")
    created, started, completed = (
        datetime.fromisoformat(t) for t in (job.created_at, job.started_at, job.completed_at)
    )
    assert created.utcoffset() is not None and created <= started <= completed
    assert job.duration_ms >= 0
    assert pl.read_parquet(out).to_dicts() == [
        {"name": "bob", "total": 85.0, "orders": 2},
        {"name": "ada", "total": 45.0, "orders": 2},
        {"name": "cy", "total": 15.0, "orders": 1},
    ]
    again = await stub.SubmitJob(pb.PipelineRequest(yaml=pipeline(data, out)))
    failed = await stub.WaitForJob(pb.WaitForJobRequest(job_id=again.job_id, timeout_seconds=60))
    assert failed.status == "failed"
    assert "[E-IO-002]" in failed.error and "already exists" in failed.error


async def test_an_invalid_submission_is_refused(stub: Stub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.SubmitJob(pb.PipelineRequest(yaml="version: '3.0'\ninput: []\noutput: []\n"))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "Validation failed with 2 error(s)" in (caught.value.details() or "")
    assert (await stub.ListJobs(pb.ListJobsRequest())).jobs == []


async def test_a_failing_job_reports_its_error_and_leaves_no_output(
    stub: Stub, data: Path, tmp_path: Path
) -> None:
    out = tmp_path / "never"
    text = pipeline(data, out).replace("sum(amount)", "sum(amountt)")
    submitted = await stub.SubmitJob(pb.PipelineRequest(yaml=text))
    job = await stub.WaitForJob(pb.WaitForJobRequest(job_id=submitted.job_id, timeout_seconds=60))
    assert job.status == "failed"
    assert "amountt" in job.error
    assert job.duration_ms >= 0
    assert not out.exists()
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".never")]


async def test_unknown_ids_are_not_found(stub: Stub) -> None:
    calls = [
        stub.GetJob(pb.GetJobRequest(job_id="nope")),
        stub.WaitForJob(pb.WaitForJobRequest(job_id="nope", timeout_seconds=1)),
        stub.CancelJob(pb.CancelJobRequest(job_id="nope")),
    ]
    for call in calls:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert (caught.value.code(), caught.value.details()) == (grpc.StatusCode.NOT_FOUND, "job not found")


async def test_wait_returns_the_job_as_it_is_at_the_timeout(stub: Stub, data: Path, tmp_path: Path) -> None:
    submitted = await stub.SubmitJob(pb.PipelineRequest(yaml=slow(data, tmp_path / "o")))
    await wait_for_status(stub, submitted.job_id, "running")
    job = await stub.WaitForJob(pb.WaitForJobRequest(job_id=submitted.job_id, timeout_seconds=1))
    assert (job.status, job.completed_at, job.duration_ms) == ("running", "", -1)
    assert job.started_at
    await stub.CancelJob(pb.CancelJobRequest(job_id=submitted.job_id))


async def test_cancel_stops_a_running_job_and_cancels_queued_ones(
    stub: Stub, data: Path, tmp_path: Path
) -> None:
    # Two workers: two slow jobs run, the third waits in the queue.
    ids = [
        (await stub.SubmitJob(pb.PipelineRequest(yaml=slow(data, tmp_path / f"o{i}")))).job_id
        for i in range(3)
    ]
    await wait_for_status(stub, ids[0], "running")
    await wait_for_status(stub, ids[1], "running")
    assert (await stub.GetJob(pb.GetJobRequest(job_id=ids[2]))).status == "queued"

    queued = await stub.CancelJob(pb.CancelJobRequest(job_id=ids[2]))
    assert (queued.cancelled, queued.status) == (True, "cancelled")
    job = await stub.GetJob(pb.GetJobRequest(job_id=ids[2]))
    assert (job.status, job.started_at, job.duration_ms) == ("cancelled", "", -1)
    assert job.completed_at

    running_job = await stub.CancelJob(pb.CancelJobRequest(job_id=ids[0]))
    assert (running_job.cancelled, running_job.status) == (True, "cancelled")
    job = await stub.GetJob(pb.GetJobRequest(job_id=ids[0]))
    assert job.status == "cancelled" and job.duration_ms >= 0
    assert not (tmp_path / "o0").exists()

    again = await stub.CancelJob(pb.CancelJobRequest(job_id=ids[0]))
    assert (again.cancelled, again.status) == (False, "cancelled")
    await stub.CancelJob(pb.CancelJobRequest(job_id=ids[1]))

    # The killed workers were replaced: a new job still runs.
    fresh = await stub.SubmitJob(pb.PipelineRequest(yaml=pipeline(data, tmp_path / "after.parquet")))
    done = await stub.WaitForJob(pb.WaitForJobRequest(job_id=fresh.job_id, timeout_seconds=60))
    assert done.status == "completed", done.error


async def test_list_jobs_newest_first(stub: Stub, data: Path, tmp_path: Path) -> None:
    ids = [
        (await stub.SubmitJob(pb.PipelineRequest(yaml=pipeline(data, tmp_path / f"l{i}.parquet")))).job_id
        for i in range(3)
    ]
    listed = [job.id for job in (await stub.ListJobs(pb.ListJobsRequest())).jobs]
    assert listed == ids[::-1]
    for job_id in ids:
        await stub.WaitForJob(pb.WaitForJobRequest(job_id=job_id, timeout_seconds=60))


async def test_inspect_source(stub: Stub, data: Path) -> None:
    found = await stub.InspectSource(
        pb.InspectSourceRequest(format="parquet", path=str(data / "customers.parquet"))
    )
    assert found.row_count == 3
    assert [(f.name, f.nullable) for f in found.fields] == [("id", True), ("name", True)]
    assert [f.data_type for f in found.fields] == ["Int64", "Utf8"]
    csv = await stub.InspectSource(
        pb.InspectSourceRequest(format="csv", path=str(data / "orders.csv"), options={"header": "true"})
    )
    assert (csv.row_count, [f.name for f in csv.fields]) == (6, ["id", "customer_id", "amount"])
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.InspectSource(pb.InspectSourceRequest(format="xml", path=str(data / "orders.csv")))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "E-FMT-001" in (caught.value.details() or "")


async def test_sessions_read_transform_and_write(stub: Stub, data: Path, tmp_path: Path) -> None:
    session = (await stub.CreateSession(pb.CreateSessionRequest(backend="polars"))).session_id
    orders = await stub.ReadInput(
        pb.ReadInputRequest(
            session_id=session,
            asset_name="orders",
            format="csv",
            path=str(data / "orders.csv"),
            options={"header": "true"},
        )
    )
    assert (orders.session_id, orders.row_count) == (session, 6)
    customers = await stub.ReadInput(
        pb.ReadInputRequest(
            session_id=session, asset_name="customers", format="parquet", path=str(data / "customers.parquet")
        )
    )
    paid = await stub.ApplyTransform(
        pb.ApplyTransformRequest(
            session_id=session,
            asset_name="paid",
            source_json=json.dumps({"where": {"from": "orders", "filter": "amount > 10"}}),
            input_handles={"orders": orders.handle_id},
        )
    )
    assert paid.row_count == 4
    joined = await stub.ApplyTransform(
        pb.ApplyTransformRequest(
            session_id=session,
            asset_name="joined",
            source_json=json.dumps(
                {
                    "join": {
                        "left": "paid",
                        "right": [
                            {"name": "customers", "type": "inner", "on": ["paid.customer_id = customers.id"]}
                        ],
                    }
                }
            ),
            input_handles={"paid": paid.handle_id, "customers": customers.handle_id},
        )
    )
    assert joined.row_count == 4
    out = tmp_path / "joined.parquet"
    written = await stub.WriteOutput(
        pb.WriteOutputRequest(session_id=session, handle_id=joined.handle_id, format="parquet", path=str(out))
    )
    assert written.rows_written == 4
    assert sorted(pl.read_parquet(out)["name"].to_list()) == ["ada", "bob", "bob", "cy"]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.WriteOutput(
            pb.WriteOutputRequest(
                session_id=session, handle_id=joined.handle_id, format="parquet", path=str(out)
            )
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "E-IO-002" in (
        caught.value.details() or ""
    )
    appended = await stub.WriteOutput(
        pb.WriteOutputRequest(
            session_id=session,
            handle_id=paid.handle_id,
            format="parquet",
            path=str(tmp_path / "p"),
            mode="append",
        )
    )
    assert appended.rows_written == 4
    await stub.CloseSession(pb.CloseSessionRequest(session_id=session))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ReadInput(
            pb.ReadInputRequest(session_id=session, format="csv", path=str(data / "orders.csv"))
        )
    assert (caught.value.code(), caught.value.details()) == (grpc.StatusCode.NOT_FOUND, "session not found")


async def test_session_errors(stub: Stub, data: Path) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.CreateSession(pb.CreateSessionRequest(backend="datafusion"))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "polars" in (
        caught.value.details() or ""
    )
    session = (await stub.CreateSession(pb.CreateSessionRequest())).session_id
    orders = await stub.ReadInput(
        pb.ReadInputRequest(
            session_id=session, asset_name="orders", format="csv", path=str(data / "orders.csv")
        )
    )
    bad_calls = [
        (
            pb.ApplyTransformRequest(
                session_id=session,
                source_json='{"where": {"from": "orders"}}',
                input_handles={"orders": orders.handle_id},
            ),
            "E-REQ-001",
        ),
        (
            pb.ApplyTransformRequest(
                session_id=session, source_json='{"where": {"from": "elsewhere", "filter": "a > 1"}}'
            ),
            "E-REF-001",
        ),
        (pb.ApplyTransformRequest(session_id=session, source_json="{not json"), "E-X-YAML-001"),
    ]
    for request, code in bad_calls:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.ApplyTransform(request)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert code in (caught.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ApplyTransform(
            pb.ApplyTransformRequest(
                session_id=session,
                source_json='{"limit": {"from": "orders", "count": 1}}',
                input_handles={"orders": "no-such-handle"},
            )
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ReadInput(
            pb.ReadInputRequest(session_id=session, format="csv", path=str(data / "missing.csv"))
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "E-IO-001" in (
        caught.value.details() or ""
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.CloseSession(pb.CloseSessionRequest(session_id="nope"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_execute_pipeline_answers_completed_or_failed(stub: Stub, data: Path, tmp_path: Path) -> None:
    session = (await stub.CreateSession(pb.CreateSessionRequest(backend="polars"))).session_id
    out = tmp_path / "exec.parquet"
    done = await stub.ExecutePipeline(pb.ExecutePipelineRequest(session_id=session, yaml=pipeline(data, out)))
    assert (done.status, done.error) == ("completed", "")
    assert done.job_id and done.duration_ms >= 0
    assert pl.read_parquet(out).height == 3
    failed = await stub.ExecutePipeline(
        pb.ExecutePipelineRequest(session_id=session, yaml=pipeline(data, out))
    )
    assert failed.status == "failed" and "E-IO-002" in failed.error
    invalid = await stub.ExecutePipeline(pb.ExecutePipelineRequest(session_id=session, yaml="version: '1.0'"))
    assert invalid.status == "failed" and "E-VERSION-001" in invalid.error
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ExecutePipeline(pb.ExecutePipelineRequest(session_id="nope", yaml=pipeline(data, out)))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    # ExecutePipeline is synchronous and is not a job.
    assert (await stub.ListJobs(pb.ListJobsRequest())).jobs == []


async def test_quality_suites_gate_the_outputs(stub: Stub, data: Path, tmp_path: Path) -> None:
    def with_suite(out: Path, severity: str) -> str:
        suite = (
            "quality:\n"
            "  - suite: orders-ok\n"
            "    target: orders\n"
            f"    severity: {severity}\n"
            "    checks:\n"
            "      - {type: validity, column: amount, range: {min: 0, strictMin: true}}\n"
            "      - {type: referential, column: customer_id, reference: {asset: customers, column: id}}\n"
        )
        return pipeline(data, out, extra=suite)

    blocked = await stub.SubmitJob(pb.PipelineRequest(yaml=with_suite(tmp_path / "blocked", "error")))
    job = await stub.WaitForJob(pb.WaitForJobRequest(job_id=blocked.job_id, timeout_seconds=60))
    assert job.status == "failed" and "[E-QUALITY-001]" in job.error and "amount" in job.error
    assert not (tmp_path / "blocked").exists()
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".blocked")]

    warned = await stub.SubmitJob(pb.PipelineRequest(yaml=with_suite(tmp_path / "warned", "warn")))
    job = await stub.WaitForJob(pb.WaitForJobRequest(job_id=warned.job_id, timeout_seconds=60))
    assert (job.status, job.error) == ("completed", "")
    assert (tmp_path / "warned").is_dir()


async def test_a_worker_that_dies_fails_only_its_job(stub: Stub, data: Path, tmp_path: Path) -> None:
    # The hook's shell kills its parent, the worker process, as the kernel's OOM killer would.
    text = pipeline(
        data,
        tmp_path / "dead",
        extra="hooks:\n  preExecution:\n    - {name: oom, command: 'kill -9 $PPID'}\n",
    )
    submitted = await stub.SubmitJob(pb.PipelineRequest(yaml=text))
    job = await stub.WaitForJob(pb.WaitForJobRequest(job_id=submitted.job_id, timeout_seconds=60))
    assert job.status == "failed" and "worker process exited unexpectedly" in job.error
    assert not (tmp_path / "dead").exists()
    fresh = await stub.SubmitJob(pb.PipelineRequest(yaml=pipeline(data, tmp_path / "alive.parquet")))
    done = await stub.WaitForJob(pb.WaitForJobRequest(job_id=fresh.job_id, timeout_seconds=60))
    assert done.status == "completed", done.error
