"""A bounded pool of warm worker processes that run pipelines.

Pipelines run in separate processes so that cancelling one really stops it (the process is
killed, whatever Polars is doing) and a crash in native code cannot take the server down. The
processes are started ahead of time with Polars imported, so a small job does not pay for a
Python start. A worker runs one pipeline at a time; a killed or crashed worker is replaced.

Outputs are staged and committed only at the end (see ``runner``); a worker tells the pool when
it starts committing, and a cancel that arrives after that point lets the commit finish, so a
job's outputs are never half-written. Staging data of a killed worker is removed by the pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import multiprocessing
import os
import signal
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from lakestack_common.errors import LakestackError
from lakestack_teckel_jobs import document, format_options, formats

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerConfig:
    """What every worker process needs; sent once when the process starts."""

    catalog: formats.CatalogConfig | None = None
    vector: formats.VectorTarget | None = None  # vector-core, for `vector` outputs
    policy: document.Policy = document.DEFAULT_POLICY
    hook_timeout_s: float = 300.0
    enrich_enabled: bool = False
    polars_threads: int = 0  # 0: Polars decides


@dataclass(frozen=True)
class Task:
    tag: str  # the job id; names the staging data
    yaml: str
    variables: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Outcome:
    status: str  # completed | failed | cancelled
    error: str = ""
    rows: dict[str, int] = field(default_factory=dict)


class Run:
    """One task on one worker: await ``outcome()``; ``cancel()`` stops it unless it is committing."""

    def __init__(self, pool: WorkerPool, task: Task) -> None:
        self._pool = pool
        self.task = task
        self._worker: _Worker | None = None
        self._cancelled = False
        self._future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._started = asyncio.Event()

    @property
    def started(self) -> asyncio.Event:
        """Set when a worker has taken the task."""
        return self._started

    async def outcome(self) -> Outcome:
        return await asyncio.shield(self._future)

    def cancel(self) -> bool:
        """True if the task will end cancelled; False if it is finishing (committing or done)."""
        if self._future.done():
            return self._future.result().status == "cancelled"
        worker = self._worker
        if worker is not None and worker.committing:
            return False
        self._cancelled = True
        if worker is not None:
            worker.kill()
        return True


class WorkerPool:
    def __init__(self, size: int, config: WorkerConfig) -> None:
        self.size = max(1, size)
        self.config = config
        self._idle: asyncio.Queue[_Worker] = asyncio.Queue()
        self._all: set[_Worker] = set()
        # one thread per worker waits on its pipe; joins and staging cleanup use the spare
        self._threads = ThreadPoolExecutor(self.size + 1, thread_name_prefix="teckel-worker-io")
        self._closed = False
        self._runs: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        workers = await asyncio.gather(*(self._spawn() for _ in range(self.size)))
        for worker in workers:
            self._idle.put_nowait(worker)

    def submit(self, task: Task) -> Run:
        """Queue ``task`` for the next idle worker."""
        run = Run(self, task)
        job = asyncio.create_task(self._execute(run), name=f"teckel-run-{task.tag}")
        self._runs.add(job)
        job.add_done_callback(self._runs.discard)
        return run

    async def close(self) -> None:
        self._closed = True
        for job in list(self._runs):
            job.cancel()
        await asyncio.gather(*self._runs, return_exceptions=True)
        for worker in list(self._all):
            worker.kill()
        loop = asyncio.get_running_loop()
        await asyncio.gather(*(loop.run_in_executor(self._threads, w.join) for w in list(self._all)))
        self._threads.shutdown(wait=False, cancel_futures=True)

    async def _execute(self, run: Run) -> None:
        worker = await self._idle.get()
        try:
            if run._cancelled:
                run._future.set_result(Outcome("cancelled"))
                self._idle.put_nowait(worker)
                return
            run._worker = worker
            run._started.set()
            outcome = await self._drive(worker, run)
        except asyncio.CancelledError:
            worker.kill()
            self._all.discard(worker)
            outcome = Outcome("cancelled", "the server is shutting down")
            await self._after_kill(run)
            if not run._future.done():
                run._future.set_result(outcome)
            raise
        if not worker.alive:
            self._all.discard(worker)
            await self._after_kill(run)
            worker = await self._spawn() if not self._closed else worker
        if not self._closed:
            self._idle.put_nowait(worker)
        run._future.set_result(outcome)

    async def _drive(self, worker: _Worker, run: Run) -> Outcome:
        loop = asyncio.get_running_loop()
        try:
            worker.send(run.task)
            while True:
                message = await loop.run_in_executor(self._threads, worker.receive)
                if message[0] == "committing":
                    worker.committing = True
                    continue
                worker.committing = False
                status, error, rows = message
                return Outcome(status, error, rows)
        except (EOFError, OSError, BrokenPipeError):
            worker.committing = False
            await loop.run_in_executor(self._threads, worker.join)
            if run._cancelled:
                return Outcome("cancelled")
            return Outcome("failed", f"worker process exited unexpectedly (exit code {worker.exitcode})")

    async def _after_kill(self, run: Run) -> None:
        """Remove what a killed worker may have staged for this task's outputs."""
        await asyncio.get_running_loop().run_in_executor(self._threads, remove_staging, run.task, self.config)

    async def _spawn(self) -> _Worker:
        # Started from the event loop's thread: the kernel's parent-death signal follows the
        # thread that forked, and this one lives as long as the server.
        worker = _Worker.start(self.config)
        self._all.add(worker)
        return worker


def remove_staging(task: Task, config: WorkerConfig) -> None:
    """Delete staging data the task's outputs may have left (the task is parsed again to find them)."""
    try:
        pipeline = document.parse(task.yaml, task.variables, os.environ, config.policy)
    except LakestackError:
        return  # it never validated, so it never staged anything
    for output in pipeline.outputs:
        if output.format in format_options.NAMED_DESTINATIONS:
            continue  # tables and vector-core namespaces stage nothing on disk
        try:
            formats.remove_staging(output.path, task.tag)
        except OSError as exc:
            log.warning("could not remove staging data of %s for %s: %s", task.tag, output.path, exc)


class _Worker:
    """The parent's handle on one worker process."""

    def __init__(self, process: Any, conn: Connection) -> None:
        self.process = process
        self.conn = conn
        self.committing = False

    @classmethod
    def start(cls, config: WorkerConfig) -> _Worker:
        context = multiprocessing.get_context("spawn")  # never fork a process running gRPC threads
        parent_end, child_end = context.Pipe()
        process = context.Process(target=_worker_main, args=(child_end, config, os.getpid()), daemon=True)
        process.start()
        child_end.close()
        return cls(process, parent_end)

    @property
    def alive(self) -> bool:
        return bool(self.process.is_alive())

    @property
    def exitcode(self) -> int | None:
        return self.process.exitcode  # type: ignore[no-any-return]

    def send(self, task: Task) -> None:
        self.conn.send(task)

    def receive(self) -> tuple[Any, ...]:
        return self.conn.recv()  # type: ignore[no-any-return]

    def kill(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.process.kill()

    def join(self) -> None:
        self.process.join(timeout=30)
        with contextlib.suppress(OSError):
            self.conn.close()


# ---- inside the worker process ----------------------------------------------------------------


def _die_with_parent() -> None:
    """Linux: have the kernel kill this worker if the server dies, so no orphan commits outputs
    of a job the restarted server has already marked failed."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)


def _worker_main(conn: Connection, config: WorkerConfig, parent_pid: int) -> None:
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the server, which stops us
    if config.polars_threads:
        os.environ["POLARS_MAX_THREADS"] = str(config.polars_threads)
    from lakestack_teckel_jobs import runner, transforms

    transforms.ENRICH_ENABLED = config.enrich_enabled
    limits = runner.RunLimits(hook_timeout_s=config.hook_timeout_s)

    def before_commit() -> None:
        if os.getppid() != parent_pid:
            raise SystemExit(1)  # the server is gone: its successor owns this job now
        conn.send(("committing",))

    while True:
        try:
            task: Task = conn.recv()
        except (EOFError, OSError):
            return
        try:
            pipeline = document.parse(task.yaml, task.variables, os.environ, config.policy)
            rows = runner.run(
                pipeline,
                catalog=config.catalog,
                tag=task.tag,
                limits=limits,
                before_commit=before_commit,
                vector=config.vector,
            )
            result: tuple[Any, ...] = ("completed", "", rows)
        except LakestackError as exc:
            result = ("failed", str(exc), {})
        except Exception as exc:  # a bug, not the pipeline's fault: keep the worker, report it
            log.exception("pipeline %s failed unexpectedly", task.tag)
            result = ("failed", f"internal error: {type(exc).__name__}: {exc}", {})
        try:
            conn.send(result)
        except (EOFError, OSError):
            return
