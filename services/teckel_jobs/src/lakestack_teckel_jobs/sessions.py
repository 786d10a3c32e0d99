"""Spark-Connect-style sessions: DataFrame handles built step by step.

A session holds named handles to lazy frames. ReadInput scans a source, ApplyTransform applies
one Teckel transformation (``source_json``) to handles, WriteOutput writes a handle atomically.
Handles are lazy plans, so a chain of ApplyTransform calls is optimized as one plan when it is
finally written; each response still carries the handle's exact row count, which is computed
(with projection pushdown, from Parquet metadata where possible) on a bounded thread pool.

Sessions expire after ``idle_ttl_s`` without a call; their number and the handles per session
are bounded, and going over answers RESOURCE_EXHAUSTED instead of growing without limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import polars as pl

from lakestack_common.errors import InvalidArgument, NotFound, ResourceExhausted
from lakestack_teckel_jobs import document, format_options, formats, transforms

T = TypeVar("T")
BACKENDS = ("polars",)


@dataclass
class Handle:
    asset: str
    frame: pl.LazyFrame


@dataclass
class Session:
    id: str
    backend: str
    created_at: float = field(default_factory=time.time)
    last_used: float = field(default_factory=time.monotonic)
    handles: dict[str, Handle] = field(default_factory=dict)


@dataclass(frozen=True)
class SessionLimits:
    idle_ttl_s: float = 3600.0
    max_sessions: int = 256
    max_handles: int = 10_000


class Sessions:
    def __init__(
        self,
        catalog: formats.CatalogConfig | None,
        limits: SessionLimits,
        threads: int,
        policy: document.Policy = document.DEFAULT_POLICY,
        vector: formats.VectorTarget | None = None,
    ) -> None:
        self.catalog = catalog
        self.vector = vector
        self.limits = limits
        self.policy = policy
        self._sessions: dict[str, Session] = {}
        self._pool = ThreadPoolExecutor(max(1, threads), thread_name_prefix="teckel-session")
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._sweeper = asyncio.create_task(self._sweep(), name="teckel-session-expiry")

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        self._sessions.clear()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def create(self, backend: str) -> str:
        chosen = backend.strip().lower() or "polars"
        if chosen not in BACKENDS:
            raise InvalidArgument(
                f'unsupported backend "{backend}": this server runs pipelines on Polars (backend "polars")'
            )
        self._expire()
        if len(self._sessions) >= self.limits.max_sessions:
            raise ResourceExhausted(
                f"too many open sessions ({self.limits.max_sessions}); "
                "close one or wait for idle ones to expire"
            )
        session = Session(str(uuid.uuid4()), chosen)
        self._sessions[session.id] = session
        return session.id

    def close_session(self, session_id: str) -> None:
        if self._sessions.pop(session_id, None) is None:
            raise NotFound("session not found")

    def session(self, session_id: str) -> Session:
        session = self._sessions.get(session_id)
        if session is None:
            raise NotFound("session not found")
        session.last_used = time.monotonic()
        return session

    async def read_input(
        self, session_id: str, asset: str, fmt: str, path: str, options: Mapping[str, Any]
    ) -> tuple[str, int]:
        session = self.session(session_id)
        self._check_path(fmt, path)
        frame = await self.run_io(lambda: formats.scan(fmt.lower(), path, options, self.catalog), asset)
        return await self._register(session, asset or "input", frame)

    async def apply_transform(
        self, session_id: str, asset: str, source_json: str, input_handles: Mapping[str, str]
    ) -> tuple[str, int]:
        session = self.session(session_id)
        if not source_json.strip():
            raise InvalidArgument(
                "source_json is empty: give one transformation, e.g. "
                '{"where": {"from": "orders", "filter": "amount > 0"}}'
            )
        step = document.parse_step(source_json, asset or "result")
        inputs: dict[str, pl.LazyFrame] = {}
        for dependency in step.dependencies:
            handle_id = input_handles.get(dependency)
            if handle_id is None:
                known = ", ".join(sorted(input_handles)) or "none"
                raise InvalidArgument(
                    f'[E-REF-001] transformation reads asset "{dependency}" '
                    "but input_handles does not map it "
                    f"(mapped: {known})"
                )
            inputs[dependency] = self._handle(session, handle_id).frame
        frame = await self.run_io(
            lambda: transforms.apply(step.op.key, step.params, inputs, name=step.name), step.name
        )
        return await self._register(session, step.name, frame)

    async def write_output(
        self, session_id: str, handle_id: str, fmt: str, path: str, mode: str, options: Mapping[str, Any]
    ) -> int:
        session = self.session(session_id)
        handle = self._handle(session, handle_id)
        self._check_path(fmt, path)
        chosen = mode.strip().lower() or format_options.default_mode(fmt.strip().lower())

        def write() -> int:
            staged = formats.stage(
                handle.frame,
                fmt.lower(),
                path,
                chosen,
                options,
                self.catalog,
                tag=uuid.uuid4().hex,
                vector=self.vector,
            )
            if staged is None:
                return 0  # mode=ignore and the destination exists
            try:
                staged.commit()
            except BaseException:
                staged.abort()
                raise
            return staged.rows

        return await self.run_io(write, handle.asset)

    # ---- internals ----------------------------------------------------------------------------

    def _handle(self, session: Session, handle_id: str) -> Handle:
        handle = session.handles.get(handle_id)
        if handle is None:
            raise NotFound(f'handle "{handle_id}" not found in session {session.id}')
        return handle

    def _check_path(self, fmt: str, path: str) -> None:
        if not path and fmt.strip().lower() != "vector":  # a vector output's options name its namespace
            raise InvalidArgument("[E-REQ-001] path is required")
        problem = document.path_problem(path, fmt.lower(), self.policy)
        if problem:
            raise InvalidArgument(f"[E-X-PATH-001] {problem}")

    async def _register(self, session: Session, asset: str, frame: pl.LazyFrame) -> tuple[str, int]:
        rows = await self.run_io(lambda: frame.select(pl.len()).collect().item(), asset)
        if len(session.handles) >= self.limits.max_handles:
            raise ResourceExhausted(
                f"session {session.id} has {self.limits.max_handles} handles; close it and start another"
            )
        handle_id = str(uuid.uuid4())
        session.handles[handle_id] = Handle(asset, frame)
        return handle_id, int(rows)

    async def run_io(self, work: Callable[[], T], asset: str) -> T:
        """Run blocking data work on the session threads; Polars errors name ``asset``."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(transforms.guarded, asset, work))

    def _expire(self) -> None:
        deadline = time.monotonic() - self.limits.idle_ttl_s
        for session_id in [s.id for s in self._sessions.values() if s.last_used < deadline]:
            del self._sessions[session_id]

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(max(1.0, self.limits.idle_ttl_s / 4))
            self._expire()
