"""Platform event `teckel-jobs.job_state_changed`: every state a job enters, in order, published
through the service's platform events publisher (a fake send captures them), including the
FAILED "interrupted by restart" of recovery."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from lakestack_common import server as server_module
from lakestack_common.platform_events import EventPublisher, PlatformEvent
from lakestack_common.testing import channel_to, running
from lakestack_protos.teckel.v1 import teckel_pb2 as pb
from lakestack_protos.teckel.v1 import teckel_pb2_grpc
from lakestack_teckel_jobs.app import TeckelJobsService
from lakestack_teckel_jobs.jobs import Job, JobStore, now_rfc3339
from lakestack_teckel_jobs.settings import TeckelJobsSettings

SUBJECT = "lakestack.events.teckel-jobs.job_state_changed"


@dataclass
class Env:
    stub: teckel_pb2_grpc.TeckelServiceStub
    published: list[PlatformEvent]


@pytest.fixture
def published(monkeypatch: pytest.MonkeyPatch) -> list[PlatformEvent]:
    captured: list[PlatformEvent] = []

    async def send(event: PlatformEvent) -> None:
        captured.append(event)

    monkeypatch.setattr(
        server_module, "publisher_for", lambda service, *args, **kwargs: EventPublisher(service, send)
    )
    return captured


@pytest.fixture
async def env(tmp_path: Path, published: list[PlatformEvent]) -> AsyncIterator[Env]:
    service = TeckelJobsService(
        TeckelJobsSettings(data_dir=tmp_path / "state", max_concurrency=1, hooks_enabled=True)
    )
    async with running(service) as server:
        channel = channel_to(server)
        yield Env(teckel_pb2_grpc.TeckelServiceStub(channel), published)
        await channel.close()


def document(source: Path, out: Path, name: str = "nightly") -> str:
    return (
        f'version: "3.0"\npipeline: {{name: {name}}}\n'
        f'input:\n  - {{name: src, format: parquet, path: "{source}"}}\n'
        f'output:\n  - {{name: src, format: parquet, path: "{out}"}}\n'
    )


async def events_of(published: list[PlatformEvent], job_id: str, count: int) -> list[dict[str, Any]]:
    """The job's events once ``count`` of them are published (the publisher sends in the background)."""
    async with asyncio.timeout(30):
        while True:
            mine = [e.data for e in published if e.data.get("job_id") == job_id]
            if len(mine) >= count:
                return mine
            await asyncio.sleep(0.02)


async def test_a_succeeding_job_publishes_queued_running_succeeded(env: Env, tmp_path: Path) -> None:
    source = tmp_path / "src.parquet"
    pl.DataFrame({"v": [1, 2, 3]}).write_parquet(source)
    job = await env.stub.SubmitJob(pb.PipelineRequest(yaml=document(source, tmp_path / "out.parquet")))
    done = await env.stub.WaitForJob(pb.WaitForJobRequest(job_id=job.job_id, timeout_seconds=120))
    assert done.status == "completed", done.error
    events = await events_of(env.published, job.job_id, 3)
    assert events == [
        {"job_id": job.job_id, "name": "nightly", "state": "QUEUED"},
        {"job_id": job.job_id, "name": "nightly", "state": "RUNNING"},
        {"job_id": job.job_id, "name": "nightly", "state": "SUCCEEDED"},
    ]
    sent = [e for e in env.published if e.data.get("job_id") == job.job_id]
    assert {(e.service, e.event, e.subject) for e in sent} == {("teckel-jobs", "job_state_changed", SUBJECT)}


async def test_a_failing_job_publishes_failed_with_its_error(env: Env, tmp_path: Path) -> None:
    missing = tmp_path / "missing.parquet"
    job = await env.stub.SubmitJob(pb.PipelineRequest(yaml=document(missing, tmp_path / "out.parquet")))
    done = await env.stub.WaitForJob(pb.WaitForJobRequest(job_id=job.job_id, timeout_seconds=120))
    assert done.status == "failed"
    events = await events_of(env.published, job.job_id, 3)
    assert [e["state"] for e in events] == ["QUEUED", "RUNNING", "FAILED"]
    assert "error" not in events[0] and "error" not in events[1]
    assert events[2]["error"] == done.error and "E-IO-001" in done.error


async def test_a_job_cancelled_while_queued_publishes_cancelled(env: Env, tmp_path: Path) -> None:
    source = tmp_path / "src.parquet"
    pl.DataFrame({"v": [1]}).write_parquet(source)
    # One worker: the first job holds it (its hook waits for a file), so the second stays queued.
    gate = tmp_path / "gate"
    wait = f"while [ ! -e {gate} ]; do sleep 0.05; done"
    blocker = document(source, tmp_path / "a.parquet") + (
        f"hooks:\n  preExecution:\n    - {{name: wait, command: '{wait}'}}\n"
    )
    first = await env.stub.SubmitJob(pb.PipelineRequest(yaml=blocker))
    second = await env.stub.SubmitJob(pb.PipelineRequest(yaml=document(source, tmp_path / "b.parquet")))
    cancelled = await env.stub.CancelJob(pb.CancelJobRequest(job_id=second.job_id))
    assert (cancelled.cancelled, cancelled.status) == (True, "cancelled")
    gate.touch()
    done = await env.stub.WaitForJob(pb.WaitForJobRequest(job_id=first.job_id, timeout_seconds=120))
    assert done.status == "completed", done.error
    assert [e["state"] for e in await events_of(env.published, first.job_id, 3)] == [
        "QUEUED",
        "RUNNING",
        "SUCCEEDED",
    ]
    assert [e["state"] for e in await events_of(env.published, second.job_id, 2)] == ["QUEUED", "CANCELLED"]


async def test_recovery_publishes_failed_interrupted_by_restart(
    tmp_path: Path, published: list[PlatformEvent]
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    store = await JobStore.open(state / "jobs.db")
    job = Job("job-1", "queued", "", now_rfc3339(), "", "", -1, "hourly")
    await store.insert(job, document(tmp_path / "x.parquet", tmp_path / "y.parquet", "hourly"), {})
    assert await store.start("job-1", now_rfc3339())  # the server died while it ran
    await store.close()

    service = TeckelJobsService(TeckelJobsSettings(data_dir=state, max_concurrency=1))
    async with running(service):
        events = await events_of(published, "job-1", 1)
    assert events == [
        {"job_id": "job-1", "name": "hourly", "state": "FAILED", "error": "interrupted by restart"}
    ]
