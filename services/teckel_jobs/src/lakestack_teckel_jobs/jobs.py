"""Durable asynchronous jobs: a SQLite job table and the worker pool that runs them.

A job is on disk (``synchronous=FULL``) before SubmitJob answers. It is ``queued`` until a worker
takes it, ``running`` while the worker runs it, then ``completed``, ``failed`` or ``cancelled``.
After a restart, ``queued`` jobs are submitted again in their original order and ``running`` jobs
are marked failed with "interrupted by restart" (their worker died with the old server, and
whatever they had staged is removed), so no job is silently lost or left running forever.

Every state a job enters is published as the platform event ``job_state_changed`` (``emit``),
right after the store has recorded it: QUEUED, RUNNING, then SUCCEEDED, FAILED (with the error)
or CANCELLED; a job failed at recovery is FAILED "interrupted by restart".
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiosqlite

from lakestack_common.errors import NotFound
from lakestack_common.sqlite import open_database
from lakestack_teckel_jobs.document import Pipeline
from lakestack_teckel_jobs.workers import Outcome, Run, Task, WorkerPool, remove_staging

TERMINAL = ("completed", "failed", "cancelled")
DEFAULT_WAIT_S = 300
INTERRUPTED = "interrupted by restart"
# Job status -> the `state` of the job_state_changed platform event (docs/events.md).
EVENT_STATES = {
    "queued": "QUEUED",
    "running": "RUNNING",
    "completed": "SUCCEEDED",
    "failed": "FAILED",
    "cancelled": "CANCELLED",
}
Emit = Callable[..., None]  # emit(event, **data): never blocks, never raises

MIGRATIONS = [
    """
    CREATE TABLE jobs (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        status TEXT NOT NULL,
        error TEXT NOT NULL DEFAULT '',
        yaml TEXT NOT NULL,
        variables TEXT NOT NULL,
        created_at TEXT NOT NULL,
        started_at TEXT NOT NULL DEFAULT '',
        completed_at TEXT NOT NULL DEFAULT '',
        duration_ms INTEGER NOT NULL DEFAULT -1
    );
    CREATE INDEX jobs_by_status ON jobs (status, seq);
    """,
    # The pipeline's name (`pipeline.name` of the document), for the job_state_changed events.
    "ALTER TABLE jobs ADD COLUMN name TEXT NOT NULL DEFAULT '';",
]


@dataclass(frozen=True)
class Job:
    id: str
    status: str
    error: str
    created_at: str
    started_at: str
    completed_at: str
    duration_ms: int
    name: str = ""  # the pipeline's name, "" when the document gives none

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL


def now_rfc3339() -> str:
    return datetime.now(UTC).isoformat()


class JobStore:
    """The job table. Every write is committed before it returns."""

    COLUMNS = "id, status, error, created_at, started_at, completed_at, duration_ms, name"

    def __init__(self, db: aiosqlite.Connection) -> None:
        self.db = db

    @classmethod
    async def open(cls, path: Path) -> JobStore:
        return cls(await open_database(path, MIGRATIONS))

    async def close(self) -> None:
        await self.db.close()

    async def insert(self, job: Job, yaml: str, variables: dict[str, str]) -> None:
        await self.db.execute(
            "INSERT INTO jobs (id, status, yaml, variables, created_at, name) VALUES (?, ?, ?, ?, ?, ?)",
            (job.id, job.status, yaml, json.dumps(variables), job.created_at, job.name),
        )

    async def start(self, job_id: str, started_at: str) -> bool:
        cursor = await self.db.execute(
            "UPDATE jobs SET status = 'running', started_at = ? WHERE id = ? AND status = 'queued'",
            (started_at, job_id),
        )
        return cursor.rowcount == 1

    async def finish(self, job_id: str, status: str, error: str, duration_ms: int) -> bool:
        """Record a terminal state, unless the job already has one."""
        cursor = await self.db.execute(
            "UPDATE jobs SET status = ?, error = ?, completed_at = ?, duration_ms = ? "
            "WHERE id = ? AND status NOT IN ('completed', 'failed', 'cancelled')",
            (status, error, now_rfc3339(), duration_ms, job_id),
        )
        return cursor.rowcount == 1

    async def get(self, job_id: str) -> Job | None:
        async with self.db.execute(f"SELECT {self.COLUMNS} FROM jobs WHERE id = ?", (job_id,)) as cursor:
            row = await cursor.fetchone()
        return _job(row) if row else None

    async def newest_first(self) -> list[Job]:
        async with self.db.execute(f"SELECT {self.COLUMNS} FROM jobs ORDER BY seq DESC") as cursor:
            return [_job(row) for row in await cursor.fetchall()]

    async def tasks_in(self, status: str) -> list[tuple[Task, str]]:
        """The tasks of the jobs in ``status``, oldest first, with their pipeline names."""
        async with self.db.execute(
            "SELECT id, yaml, variables, name FROM jobs WHERE status = ? ORDER BY seq", (status,)
        ) as cursor:
            return [(Task(row[0], row[1], json.loads(row[2])), row[3]) for row in await cursor.fetchall()]

    async def prune(self, keep_terminal: int) -> None:
        """Forget terminal jobs beyond the newest ``keep_terminal``."""
        await self.db.execute(
            "DELETE FROM jobs WHERE status IN ('completed', 'failed', 'cancelled') AND seq NOT IN "
            "(SELECT seq FROM jobs WHERE status IN ('completed', 'failed', 'cancelled') "
            "ORDER BY seq DESC LIMIT ?)",
            (keep_terminal,),
        )


def _job(row: Any) -> Job:
    return Job(row[0], row[1], row[2], row[3], row[4], row[5], int(row[6]), row[7])


def pipeline_name(pipeline: Pipeline) -> str:
    name = pipeline.metadata.get("name") if isinstance(pipeline.metadata, dict) else None
    return "" if name is None else str(name)


class Jobs:
    """SubmitJob / GetJob / WaitForJob / CancelJob / ListJobs over the store and the pool."""

    def __init__(
        self,
        store: JobStore,
        pool: WorkerPool,
        validate: Callable[[str, dict[str, str]], Pipeline],
        keep_terminal: int = 10_000,
        emit: Emit | None = None,
    ) -> None:
        self.store = store
        self.pool = pool
        self.validate = validate  # raises PipelineInvalid
        self.keep_terminal = keep_terminal
        self.emit = emit
        self._names: dict[str, str] = {}  # job id -> pipeline name, while the job is unfinished
        self._runs: dict[str, Run] = {}
        self._ended: dict[str, asyncio.Event] = {}
        self._watchers: dict[str, asyncio.Task[None]] = {}  # job id -> task recording its outcome
        self._finished_since_prune = 0

    async def start(self) -> None:
        """Recover from the previous run, then resume the queue."""
        for task, name in await self.store.tasks_in("running"):
            started = await self.store.get(task.tag)
            if await self.store.finish(
                task.tag, "failed", INTERRUPTED, _elapsed_ms(started.started_at if started else "")
            ):
                self._changed(task.tag, name, "failed", INTERRUPTED)
            await asyncio.to_thread(remove_staging, task, self.pool.config)
        await self.store.prune(self.keep_terminal)
        for task, name in await self.store.tasks_in("queued"):
            self._names[task.tag] = name
            self._launch(task)

    async def close(self) -> None:
        watchers = list(self._watchers.values())
        for watcher in watchers:
            watcher.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)

    async def submit(self, yaml: str, variables: dict[str, str]) -> Job:
        pipeline = await asyncio.to_thread(self.validate, yaml, variables)
        job = Job(str(uuid.uuid4()), "queued", "", now_rfc3339(), "", "", -1, pipeline_name(pipeline))
        await self.store.insert(job, yaml, variables)
        self._names[job.id] = job.name
        self._changed(job.id, job.name, "queued")
        self._launch(Task(job.id, yaml, variables))
        return job

    async def get(self, job_id: str) -> Job:
        job = await self.store.get(job_id)
        if job is None:
            raise NotFound("job not found")
        return job

    async def wait(self, job_id: str, timeout_s: float) -> Job:
        """The job once terminal, or as it is when ``timeout_s`` (0: 300 s) runs out."""
        # The event exists before the job is read, so a finish in between cannot be missed.
        ended = self._ended.setdefault(job_id, asyncio.Event())
        try:
            job = await self.get(job_id)
        except NotFound:
            self._ended.pop(job_id, None)
            raise
        if job.terminal:
            self._ended.pop(job_id, None)
            return job
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s or DEFAULT_WAIT_S):
                await ended.wait()
        return await self.get(job_id)

    async def cancel(self, job_id: str) -> tuple[bool, str]:
        job = await self.get(job_id)
        if job.terminal:
            return False, job.status
        run = self._runs.get(job_id)
        if job.status == "queued" and (run is None or not run.started.is_set()):
            if run is not None:
                run.cancel()
            await self._finish(job_id, Outcome("cancelled"), -1)
            return True, "cancelled"
        if run is None or not run.cancel():
            return False, job.status  # committing its outputs: it will complete
        # The worker is killed, so this is immediate; waiting for the watcher (not just the
        # outcome) means the store already says "cancelled" when we answer.
        watcher = self._watchers.get(job_id)
        await (asyncio.shield(watcher) if watcher is not None else run.outcome())
        return True, (await self.get(job_id)).status

    async def list(self) -> list[Job]:
        return await self.store.newest_first()

    # ---- running ------------------------------------------------------------------------------

    def _launch(self, task: Task) -> None:
        run = self.pool.submit(task)
        self._runs[task.tag] = run
        watcher = asyncio.create_task(self._watch(run), name=f"teckel-job-{task.tag}")
        self._watchers[task.tag] = watcher
        watcher.add_done_callback(lambda _: self._watchers.pop(task.tag, None))

    async def _watch(self, run: Run) -> None:
        job_id = run.task.tag
        try:
            outcome_future = asyncio.ensure_future(run.outcome())
            started = asyncio.ensure_future(run.started.wait())
            await asyncio.wait({outcome_future, started}, return_when=asyncio.FIRST_COMPLETED)
            began: float | None = None
            if run.started.is_set():
                began = time.monotonic()
                if await self.store.start(job_id, now_rfc3339()):
                    self._changed(job_id, self._names.get(job_id, ""), "running")
            started.cancel()
            outcome = await outcome_future
            duration = int((time.monotonic() - began) * 1000) if began is not None else -1
            await self._finish(job_id, outcome, duration)
        finally:
            self._runs.pop(job_id, None)

    async def _finish(self, job_id: str, outcome: Outcome, duration_ms: int) -> None:
        if await self.store.finish(job_id, outcome.status, outcome.error, duration_ms):
            self._changed(job_id, self._names.pop(job_id, ""), outcome.status, outcome.error)
            self._finished_since_prune += 1
            if self._finished_since_prune >= 100:
                self._finished_since_prune = 0
                await self.store.prune(self.keep_terminal)
        ended = self._ended.pop(job_id, None)
        if ended is not None:
            ended.set()

    def _changed(self, job_id: str, name: str, status: str, error: str = "") -> None:
        """Publish the job's new state (the store has recorded it)."""
        if self.emit is None:
            return
        data: dict[str, Any] = {
            "job_id": job_id,
            "name": name,
            "state": EVENT_STATES.get(status, status.upper()),
        }
        if status == "failed":
            data["error"] = error
        self.emit("job_state_changed", **data)


def _elapsed_ms(started_at: str) -> int:
    if not started_at:
        return -1
    return int((datetime.now(UTC) - datetime.fromisoformat(started_at)).total_seconds() * 1000)
