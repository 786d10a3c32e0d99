"""Run a validated pipeline on Polars: hooks, lazy plan, staged outputs, quality, commit.

Every asset becomes a LazyFrame chained onto its dependencies, so the whole DAG is one lazy
plan and Polars pushes predicates and projections across steps. All outputs are then executed
together (``formats.stage_many`` runs their sinks in one Polars pass, computing a subplan shared
by several outputs once) into staging locations. Quality suites run next, and only when all of
that has succeeded are the outputs committed. A failure anywhere removes what was staged, so a
pipeline leaves either all its outputs or none (spec §24.5).

The exception is ``vector`` outputs: vector-core has no transactions, so they are upserted after
the quality suites and before the other outputs commit (still cancellable), and a failed job may
leave some of their batches behind; upserts are idempotent by id, so a retried job converges.
"""

from __future__ import annotations

import functools
import logging
import os
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import polars as pl

from lakestack_teckel_jobs import formats, quality, transforms
from lakestack_teckel_jobs.document import Hook, Pipeline
from lakestack_teckel_jobs.spec_errors import StepFailed

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunLimits:
    hook_timeout_s: float = 300.0


def build_frames(pipeline: Pipeline, catalog: formats.CatalogConfig | None) -> dict[str, pl.LazyFrame]:
    """The lazy frame of every input and transformation asset, in topological order."""
    frames: dict[str, pl.LazyFrame] = {}
    for name in pipeline.schedule.order:
        if name in pipeline.inputs:
            source = pipeline.inputs[name]
            frames[name] = transforms.guarded(
                name, functools.partial(formats.scan, source.format, source.path, source.options, catalog)
            )
        elif name in pipeline.steps:
            step = pipeline.steps[name]
            inputs = {dependency: frames[dependency] for dependency in step.dependencies}
            frames[name] = transforms.guarded(
                name, functools.partial(transforms.apply, step.op.key, step.params, inputs, name=step.name)
            )
    return frames


def run(
    pipeline: Pipeline,
    *,
    catalog: formats.CatalogConfig | None,
    tag: str,
    limits: RunLimits = RunLimits(),
    before_commit: Callable[[], None] = lambda: None,
    vector: formats.VectorTarget | None = None,
) -> dict[str, int]:
    """Execute the pipeline; returns rows written per output key. ``tag`` names the staging
    data (the job id), ``before_commit`` is called once nothing can fail any more but the
    commit itself."""
    succeeded = False
    try:
        _run_hooks(pipeline.pre_hooks, "pre-execution", limits, status=None)
        frames = build_frames(pipeline, catalog)
        staged = _stage_outputs(pipeline, frames, catalog, tag, vector)
        try:
            _check_quality(pipeline, frames)
            for result in staged:
                if result is not None and not result.transactional:
                    result.commit()
            before_commit()
            for result in staged:
                if result is not None and result.transactional:
                    result.commit()
        except BaseException:
            for result in staged:
                if result is not None:
                    result.abort()
            raise
        succeeded = True
        return {
            output.key: result.rows if result else 0
            for output, result in zip(pipeline.outputs, staged, strict=True)
        }
    finally:
        if pipeline.post_hooks:
            _run_hooks(
                pipeline.post_hooks, "post-execution", limits, status="SUCCESS" if succeeded else "FAILURE"
            )


def _stage_outputs(
    pipeline: Pipeline,
    frames: Mapping[str, pl.LazyFrame],
    catalog: formats.CatalogConfig | None,
    tag: str,
    vector: formats.VectorTarget | None,
) -> list[formats.StagedOutput | None]:
    requests = [
        formats.OutputRequest(frames[o.name], o.format, o.path, o.mode, o.options, asset=o.name)
        for o in pipeline.outputs
    ]
    asset = ", ".join(output.key for output in pipeline.outputs)
    return transforms.guarded(asset, lambda: formats.stage_many(requests, catalog, tag=tag, vector=vector))


def _check_quality(pipeline: Pipeline, frames: Mapping[str, pl.LazyFrame]) -> None:
    """Run every suite; validation has checked that the assets they name exist."""
    for suite in pipeline.quality:
        needed = {name: frames[name] for name in quality.suite_targets(suite)}
        results = transforms.guarded(
            f'quality suite "{suite.get("suite")}"', functools.partial(quality.evaluate_suite, suite, needed)
        )
        quality.enforce(results)


def _run_hooks(hooks: list[Hook], phase: str, limits: RunLimits, status: str | None) -> None:
    env = dict(os.environ)
    if status is not None:
        env["TECKEL_PIPELINE_STATUS"] = status
    for hook in hooks:
        try:
            completed = subprocess.run(
                ["/bin/sh", "-c", hook.command],
                env=env,
                timeout=limits.hook_timeout_s,
                capture_output=True,
                check=False,
            )
            code = completed.returncode
        except subprocess.TimeoutExpired:
            code = -1
            log.warning("%s hook %r timed out after %.0f s", phase, hook.name, limits.hook_timeout_s)
        if code == 0:
            continue
        if status is None:  # a failing pre-execution hook stops the pipeline before it starts
            raise StepFailed("E-HOOK-001", f'{phase} hook "{hook.name}" failed with exit code {code}')
        log.warning("%s hook %r failed with exit code %d (pipeline status unchanged)", phase, hook.name, code)
