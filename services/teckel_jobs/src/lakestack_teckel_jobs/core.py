"""The teckel-jobs domain facade: everything the RPCs do, without gRPC.

It owns the job store, the worker pool and the sessions, and gives the handlers one object to
delegate to. Validation and explain run in a thread (a large document takes a few milliseconds
of pure Python), everything touching data runs in worker processes or session threads.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lakestack_common.errors import LakestackError
from lakestack_teckel_jobs import document, explain, formats
from lakestack_teckel_jobs.jobs import Jobs, JobStore
from lakestack_teckel_jobs.sessions import SessionLimits, Sessions
from lakestack_teckel_jobs.spec_errors import PipelineInvalid, SpecError
from lakestack_teckel_jobs.workers import Task, WorkerConfig, WorkerPool


@dataclass(frozen=True)
class TeckelConfig:
    data_dir: Path
    workers: int
    worker: WorkerConfig
    sessions: SessionLimits
    session_threads: int
    keep_terminal_jobs: int = 10_000


@dataclass(frozen=True)
class Execution:
    job_id: str
    status: str
    error: str
    duration_ms: int


class Teckel:
    def __init__(self, config: TeckelConfig, emit: Callable[..., None] | None = None) -> None:
        """``emit(event, **data)`` publishes a platform event (``job_state_changed``); it must
        neither block nor raise."""
        self.config = config
        self.policy = config.worker.policy
        self.emit = emit
        self.pool = WorkerPool(config.workers, config.worker)
        self.sessions = Sessions(
            config.worker.catalog,
            config.sessions,
            config.session_threads,
            self.policy,
            vector=config.worker.vector,
        )
        self._jobs: Jobs | None = None

    @property
    def jobs(self) -> Jobs:
        if self._jobs is None:
            raise RuntimeError("Teckel.open() has not run")
        return self._jobs

    async def open(self) -> None:
        store = await JobStore.open(self.config.data_dir / "jobs.db")
        await self.pool.start()
        self._jobs = Jobs(store, self.pool, self.parse, self.config.keep_terminal_jobs, emit=self.emit)
        await self._jobs.start()
        await self.sessions.start()

    async def close(self) -> None:
        await self.sessions.close()
        if self._jobs is not None:
            await self._jobs.close()
        await self.pool.close()
        if self._jobs is not None:
            await self._jobs.store.close()

    def parse(self, yaml: str, variables: Mapping[str, str]) -> document.Pipeline:
        return document.parse(yaml, variables, os.environ, self.policy)

    async def validate(self, yaml: str, variables: Mapping[str, str]) -> str:
        """ "" if the document is valid, else every error found."""
        try:
            await asyncio.to_thread(self.parse, yaml, variables)
        except PipelineInvalid as invalid:
            return str(invalid)
        return ""

    async def explain(self, yaml: str, variables: Mapping[str, str]) -> str:
        pipeline = await asyncio.to_thread(self.parse, yaml, variables)
        return explain.explain(pipeline)

    async def inspect(self, fmt: str, path: str, options: Mapping[str, Any]) -> formats.Inspection:
        problem = document.path_problem(path, fmt.lower(), self.policy)
        if problem:
            raise PipelineInvalid([SpecError("E-X-PATH-001", problem)])
        return await self.sessions.run_io(
            lambda: formats.inspect(fmt.lower(), path, options, self.config.worker.catalog), path
        )

    async def execute(self, session_id: str, yaml: str, variables: Mapping[str, str]) -> Execution:
        """ExecutePipeline: run now in a worker, wait, answer completed or failed (not an RPC error)."""
        self.sessions.session(session_id)
        job_id = str(uuid.uuid4())
        began = time.monotonic()
        try:
            await asyncio.to_thread(self.parse, yaml, variables)
        except LakestackError as exc:
            return Execution(job_id, "failed", str(exc), int((time.monotonic() - began) * 1000))
        run = self.pool.submit(Task(job_id, yaml, dict(variables)))
        try:
            outcome = await run.outcome()
        except asyncio.CancelledError:
            run.cancel()  # the caller went away: stop the work it asked for
            raise
        return Execution(job_id, outcome.status, outcome.error, int((time.monotonic() - began) * 1000))
