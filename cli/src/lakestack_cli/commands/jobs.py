"""`lakestack jobs ...`: submit Teckel YAML pipelines to teckel-jobs and follow them."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from lakestack_cli.commands.common import (
    UNARY_TIMEOUT_S,
    AddressOption,
    JsonOption,
    Target,
    connect,
    emit_json,
    err,
    group,
    out,
    pairs,
    run,
    table,
    target,
    to_dict,
)
from lakestack_common.clients import TeckelClient
from lakestack_common.topology import TECKEL_JOBS
from lakestack_protos.teckel.v1 import teckel_pb2 as pb

app = group("Jobs: run Teckel YAML pipelines on teckel-jobs and follow them.")

TERMINAL = ("completed", "failed", "cancelled")
# WaitForJob answers at the job's end or after this many seconds with the job as it is: the
# progress display is refreshed at least that often without polling in between.
LONG_POLL_S = 1

TimeoutOption = Annotated[
    float | None,
    typer.Option("--timeout", min=0, help="give up waiting after this many seconds", show_default=False),
]


def job_document(job: pb.JobResponse) -> dict[str, Any]:
    return to_dict(job)


def job_rows(job: pb.JobResponse) -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = [
        ("job", job.id),
        ("status", job.status),
        ("created", job.created_at),
        ("started", job.started_at),
        ("completed", job.completed_at),
        ("duration", f"{job.duration_ms} ms" if job.duration_ms >= 0 else ""),
    ]
    if job.error:
        rows.append(("error", job.error))
    return rows


def show_job(t: Target, job: pb.JobResponse) -> None:
    if t.json:
        emit_json(job_document(job))
    else:
        out.print(table(None, ("", "value"), job_rows(job)))


def outcome(t: Target, job: pb.JobResponse, timeout_s: float | None) -> int:
    """The exit code for a waited-for job, with the reason on stderr when it is not 0."""
    if job.status == "completed":
        return 0
    if job.status == "failed":
        err.print(f"{t.label}: job {job.id} failed: {job.error}", markup=False)
    elif job.status == "cancelled":
        err.print(f"{t.label}: job {job.id} was cancelled", markup=False)
    else:
        err.print(f"{t.label}: job {job.id} is still {job.status} after {timeout_s:g} s", markup=False)
    return 1


async def wait_for(client: TeckelClient, t: Target, job_id: str, timeout_s: float | None) -> pb.JobResponse:
    """Long-poll WaitForJob until the job ends (or ``timeout_s``), with a progress display on
    stderr. The contract reports a job's state, not a fraction done: the bar pulses while the job
    is queued or running and fills when it ends."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    progress = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TimeElapsedColumn(),
        console=err,
        disable=t.json,
    )
    with progress:
        task = progress.add_task(f"job {job_id}", total=None)
        while True:
            poll = LONG_POLL_S
            if deadline is not None:
                poll = max(0, min(poll, int(deadline - time.monotonic())))
            request = pb.WaitForJobRequest(job_id=job_id, timeout_seconds=max(poll, 1))
            job = await client.teckel.WaitForJob(request, timeout=poll + UNARY_TIMEOUT_S)
            progress.update(task, description=f"job {job_id} [bold]{job.status}[/bold]")
            if job.status in TERMINAL:
                progress.update(task, total=1, completed=1)
                return job
            if deadline is not None and time.monotonic() >= deadline:
                return job


@app.command()
def submit(
    ctx: typer.Context,
    yaml_file: Annotated[
        str, typer.Argument(metavar="YAML_FILE", help="the pipeline document, or - for stdin")
    ],
    var: Annotated[
        list[str] | None, typer.Option("--var", "-v", help="a ${NAME} variable, NAME=value (repeatable)")
    ] = None,
    wait: Annotated[
        bool, typer.Option("--wait", "-w", help="wait for the job to end (progress bar)")
    ] = False,
    timeout: TimeoutOption = None,
    json_output: JsonOption = False,
    address: AddressOption = None,
) -> None:
    """Submit a pipeline as a job; prints the job id (with --wait: the finished job, exit 1 if it
    failed). Paths in the document are read by the service, from its own working directory."""
    t = target(ctx, TECKEL_JOBS, address, json_output)
    if yaml_file == "-":
        document = sys.stdin.read()
    else:
        try:
            document = Path(yaml_file).read_text()
        except OSError as exc:
            raise typer.BadParameter(
                f"cannot read {yaml_file}: {exc.strerror}", param_hint="YAML_FILE"
            ) from None
    request = pb.PipelineRequest(yaml=document, variables=pairs(var, "variable"))

    async def work() -> int:
        async with connect(TeckelClient, t) as client:
            submitted = await client.teckel.SubmitJob(request, timeout=UNARY_TIMEOUT_S)
            if not wait:
                if t.json:
                    emit_json({"job_id": submitted.job_id, "status": submitted.status})
                else:
                    out.print(f"submitted job {submitted.job_id} ({submitted.status})", markup=False)
                return 0
            if not t.json:
                err.print(f"submitted job {submitted.job_id}", markup=False)
            job = await wait_for(client, t, submitted.job_id, timeout)
        show_job(t, job)
        return outcome(t, job, timeout)

    run(work())


@app.command("wait")
def wait_command(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(help="job id")],
    timeout: TimeoutOption = None,
    json_output: JsonOption = False,
    address: AddressOption = None,
) -> None:
    """Wait for a job to end with a progress bar; exit 1 if it failed or was cancelled."""
    t = target(ctx, TECKEL_JOBS, address, json_output)

    async def work() -> int:
        async with connect(TeckelClient, t) as client:
            job = await wait_for(client, t, job_id, timeout)
        show_job(t, job)
        return outcome(t, job, timeout)

    run(work())


@app.command("ls")
def list_jobs(ctx: typer.Context, json_output: JsonOption = False, address: AddressOption = None) -> None:
    """Every job the service keeps, newest first."""
    t = target(ctx, TECKEL_JOBS, address, json_output)

    async def work() -> None:
        async with connect(TeckelClient, t) as client:
            reply = await client.teckel.ListJobs(pb.ListJobsRequest(), timeout=UNARY_TIMEOUT_S)
        if t.json:
            emit_json([job_document(j) for j in reply.jobs])
            return
        rows = [
            (j.id, j.status, j.created_at, f"{j.duration_ms} ms" if j.duration_ms >= 0 else "", j.error)
            for j in reply.jobs
        ]
        out.print(table("jobs", ("job", "status", "created", "duration", "error"), rows))

    run(work())


@app.command()
def get(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(help="job id")],
    json_output: JsonOption = False,
    address: AddressOption = None,
) -> None:
    """One job's state."""
    t = target(ctx, TECKEL_JOBS, address, json_output)

    async def work() -> None:
        async with connect(TeckelClient, t) as client:
            job = await client.teckel.GetJob(pb.GetJobRequest(job_id=job_id), timeout=UNARY_TIMEOUT_S)
        show_job(t, job)

    run(work())


@app.command()
def cancel(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(help="job id")],
    json_output: JsonOption = False,
    address: AddressOption = None,
) -> None:
    """Cancel a queued or running job (exit 1 if it could not be cancelled)."""
    t = target(ctx, TECKEL_JOBS, address, json_output)

    async def work() -> int:
        async with connect(TeckelClient, t) as client:
            reply = await client.teckel.CancelJob(pb.CancelJobRequest(job_id=job_id), timeout=UNARY_TIMEOUT_S)
        if t.json:
            emit_json({"job_id": job_id, "cancelled": reply.cancelled, "status": reply.status})
        elif reply.cancelled:
            out.print(f"job {job_id} cancelled", markup=False)
        if not reply.cancelled:
            err.print(f"{t.label}: job {job_id} was not cancelled: it is {reply.status}", markup=False)
            return 1
        return 0

    run(work())
