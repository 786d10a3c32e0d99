"""kill -9 of a real teckel-jobs server with one job running and one queued: after a restart the
running job is failed "interrupted by restart" (its worker died with the server and left no
output), the queued job runs to completion, and acknowledged jobs are all still listed."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from pathlib import Path

import grpc
import polars as pl

from lakestack_common.testing import spawn_service, wait_serving
from lakestack_common.topology import free_port
from lakestack_protos.teckel.v1 import teckel_pb2 as pb
from lakestack_protos.teckel.v1 import teckel_pb2_grpc


def start(state: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    return spawn_service("lakestack-teckel-jobs", state, port, log, max_concurrency="1", hooks_enabled="true")


def document(source: Path, out: Path, hook: str = "") -> str:
    hooks = f"hooks:\n  preExecution:\n    - {{name: wait, command: '{hook}'}}\n" if hook else ""
    return (
        f'version: "3.0"\ninput:\n  - {{name: src, format: parquet, path: "{source}"}}\n'
        f'transformation:\n  - name: big\n    where: {{from: src, filter: "v > 1"}}\n'
        f'output:\n  - {{name: big, format: parquet, path: "{out}"}}\n{hooks}'
    )


async def test_restart_fails_interrupted_jobs_and_resumes_queued_ones(tmp_path: Path) -> None:
    source = tmp_path / "src.parquet"
    pl.DataFrame({"v": [1, 2, 3]}).write_parquet(source)
    port = free_port()
    address = f"127.0.0.1:{port}"
    log = tmp_path / "server.log"
    process = start(tmp_path / "state", port, log)
    try:
        await wait_serving(address, process)
        async with grpc.aio.insecure_channel(address) as channel:
            stub = teckel_pb2_grpc.TeckelServiceStub(channel)
            running = await stub.SubmitJob(
                pb.PipelineRequest(yaml=document(source, tmp_path / "interrupted", hook="sleep 60"))
            )
            queued = await stub.SubmitJob(
                pb.PipelineRequest(yaml=document(source, tmp_path / "resumed.parquet"))
            )
            for _ in range(600):
                if (await stub.GetJob(pb.GetJobRequest(job_id=running.job_id))).status == "running":
                    break
                await asyncio.sleep(0.05)
            assert (await stub.GetJob(pb.GetJobRequest(job_id=queued.job_id))).status == "queued"
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)

        process = start(tmp_path / "state", port, log)
        await wait_serving(address, process)
        async with grpc.aio.insecure_channel(address) as channel:
            stub = teckel_pb2_grpc.TeckelServiceStub(channel)
            interrupted = await stub.GetJob(pb.GetJobRequest(job_id=running.job_id))
            assert (interrupted.status, interrupted.error) == ("failed", "interrupted by restart")
            assert interrupted.completed_at and interrupted.duration_ms >= 0
            resumed = await stub.WaitForJob(pb.WaitForJobRequest(job_id=queued.job_id, timeout_seconds=120))
            assert resumed.status == "completed", resumed.error
            listed = [job.id for job in (await stub.ListJobs(pb.ListJobsRequest())).jobs]
            assert listed == [queued.job_id, running.job_id]
        assert pl.read_parquet(tmp_path / "resumed.parquet")["v"].to_list() == [2, 3]
        assert not (tmp_path / "interrupted").exists()
        assert not [p for p in os.listdir(tmp_path) if ".teckel-" in p]
    finally:
        process.kill()
        process.wait(timeout=30)
