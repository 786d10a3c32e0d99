"""gRPC handlers of the teckel-jobs service (``teckel.v1.TeckelService``): translate protobuf to
domain calls and back, nothing more. Domain errors map to status codes in the shared wrapper."""

from __future__ import annotations

from importlib import metadata

from grpc import aio

from lakestack_protos.teckel.v1 import teckel_pb2 as pb
from lakestack_protos.teckel.v1 import teckel_pb2_grpc
from lakestack_teckel_jobs.core import Teckel
from lakestack_teckel_jobs.jobs import Job

VERSION = metadata.version("lakestack-teckel-jobs")


def _job(job: Job) -> pb.JobResponse:
    return pb.JobResponse(
        id=job.id,
        status=job.status,
        error=job.error,
        created_at=job.created_at,
        started_at=job.started_at,
        completed_at=job.completed_at,
        duration_ms=job.duration_ms,
    )


class TeckelHandlers(teckel_pb2_grpc.TeckelServiceServicer):
    def __init__(self, teckel: Teckel) -> None:
        self._teckel = teckel

    # ---- high-level API ----

    async def Health(self, request: pb.HealthRequest, context: aio.ServicerContext) -> pb.HealthResponse:
        return pb.HealthResponse(status="ok", version=VERSION)

    async def ValidatePipeline(
        self, request: pb.PipelineRequest, context: aio.ServicerContext
    ) -> pb.ValidateResponse:
        error = await self._teckel.validate(request.yaml, request.variables)
        return pb.ValidateResponse(valid=not error, error=error)

    async def ExplainPipeline(
        self, request: pb.PipelineRequest, context: aio.ServicerContext
    ) -> pb.ExplainResponse:
        return pb.ExplainResponse(plan=await self._teckel.explain(request.yaml, request.variables))

    async def SubmitJob(
        self, request: pb.PipelineRequest, context: aio.ServicerContext
    ) -> pb.SubmitJobResponse:
        job = await self._teckel.jobs.submit(request.yaml, dict(request.variables))
        return pb.SubmitJobResponse(job_id=job.id, status=job.status)

    async def GetJob(self, request: pb.GetJobRequest, context: aio.ServicerContext) -> pb.JobResponse:
        return _job(await self._teckel.jobs.get(request.job_id))

    async def WaitForJob(self, request: pb.WaitForJobRequest, context: aio.ServicerContext) -> pb.JobResponse:
        return _job(await self._teckel.jobs.wait(request.job_id, request.timeout_seconds))

    async def CancelJob(
        self, request: pb.CancelJobRequest, context: aio.ServicerContext
    ) -> pb.CancelJobResponse:
        cancelled, status = await self._teckel.jobs.cancel(request.job_id)
        return pb.CancelJobResponse(cancelled=cancelled, status=status)

    async def ListJobs(
        self, request: pb.ListJobsRequest, context: aio.ServicerContext
    ) -> pb.ListJobsResponse:
        return pb.ListJobsResponse(jobs=[_job(job) for job in await self._teckel.jobs.list()])

    async def InspectSource(
        self, request: pb.InspectSourceRequest, context: aio.ServicerContext
    ) -> pb.InspectSourceResponse:
        found = await self._teckel.inspect(request.format, request.path, dict(request.options))
        return pb.InspectSourceResponse(
            fields=[
                pb.FieldInfo(name=f.name, data_type=f.data_type, nullable=f.nullable) for f in found.fields
            ],
            row_count=found.row_count,
        )

    # ---- low-level (Spark-Connect-style) API ----

    async def CreateSession(
        self, request: pb.CreateSessionRequest, context: aio.ServicerContext
    ) -> pb.CreateSessionResponse:
        return pb.CreateSessionResponse(session_id=self._teckel.sessions.create(request.backend))

    async def CloseSession(
        self, request: pb.CloseSessionRequest, context: aio.ServicerContext
    ) -> pb.CloseSessionResponse:
        self._teckel.sessions.close_session(request.session_id)
        return pb.CloseSessionResponse()

    async def ReadInput(
        self, request: pb.ReadInputRequest, context: aio.ServicerContext
    ) -> pb.DataFrameResponse:
        handle, rows = await self._teckel.sessions.read_input(
            request.session_id, request.asset_name, request.format, request.path, dict(request.options)
        )
        return pb.DataFrameResponse(session_id=request.session_id, handle_id=handle, row_count=rows)

    async def ApplyTransform(
        self, request: pb.ApplyTransformRequest, context: aio.ServicerContext
    ) -> pb.DataFrameResponse:
        handle, rows = await self._teckel.sessions.apply_transform(
            request.session_id, request.asset_name, request.source_json, dict(request.input_handles)
        )
        return pb.DataFrameResponse(session_id=request.session_id, handle_id=handle, row_count=rows)

    async def WriteOutput(
        self, request: pb.WriteOutputRequest, context: aio.ServicerContext
    ) -> pb.WriteOutputResponse:
        rows = await self._teckel.sessions.write_output(
            request.session_id,
            request.handle_id,
            request.format,
            request.path,
            request.mode,
            dict(request.options),
        )
        return pb.WriteOutputResponse(rows_written=rows)

    async def ExecutePipeline(
        self, request: pb.ExecutePipelineRequest, context: aio.ServicerContext
    ) -> pb.ExecutePipelineResponse:
        done = await self._teckel.execute(request.session_id, request.yaml, dict(request.variables))
        return pb.ExecutePipelineResponse(
            job_id=done.job_id, status=done.status, error=done.error, duration_ms=done.duration_ms
        )
