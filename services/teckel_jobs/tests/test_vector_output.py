"""Output format `vector`: jobs upsert a vector column into a real in-process vector-core over its
`Call` stream (batched, lz4 NdArray), and vector-core then answers with those vectors; an
unreachable vector-core or an ERROR answer fails the job clearly; bad options are validation
errors; bad columns fail the job before anything is sent."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from lakestack_common import ndarray
from lakestack_common.testing import channel_to, running
from lakestack_common.topology import free_port
from lakestack_protos.teckel.v1 import teckel_pb2 as pb
from lakestack_protos.teckel.v1 import teckel_pb2_grpc
from lakestack_teckel_jobs import document, explain
from lakestack_teckel_jobs.app import TeckelJobsService
from lakestack_teckel_jobs.settings import TeckelJobsSettings
from lakestack_teckel_jobs.spec_errors import PipelineInvalid, StepFailed
from lakestack_teckel_jobs.vector_output import VectorSpec, vectors_of
from lakestack_vector_core.app import VectorCoreService
from lakestack_vector_core.client import VectorClient
from lakestack_vector_core.settings import VectorCoreSettings

DIM = 8
ROWS = 2500
Stub = teckel_pb2_grpc.TeckelServiceStub


@dataclass
class Env:
    teckel: Stub
    vectors: VectorClient


def embeddings(rows: int = ROWS, dim: int = DIM, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(rows, dim))


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "docs.parquet"
    data = embeddings()
    pl.DataFrame(
        {
            "doc_id": [f"d{i}" for i in range(ROWS)],
            "embedding": [list(row) for row in data],  # list[f64]: sent as float32
            "keep": [i % 5 != 0 for i in range(ROWS)],
        }
    ).write_parquet(path)
    return path


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    vector_core = VectorCoreService(VectorCoreSettings(data_dir=tmp_path / "vector-core"))
    async with running(vector_core) as vector_server:
        settings = TeckelJobsSettings(
            data_dir=tmp_path / "teckel",
            max_concurrency=1,
            vector_core_address=f"127.0.0.1:{vector_server.port}",
        )
        async with running(TeckelJobsService(settings)) as teckel_server:
            teckel_channel = channel_to(teckel_server)
            vector_channel = channel_to(vector_server, timeout_s=None)
            async with VectorClient(vector_channel) as client:
                yield Env(Stub(teckel_channel), client)
            await vector_channel.close()
            await teckel_channel.close()


def vector_job(source: Path, *, namespace: str = "docs", mode: str = "", extra_output: str = "") -> str:
    mode_line = f"    mode: {mode}\n" if mode else ""
    return (
        f'version: "3.0"\n'
        f'input:\n  - {{name: docs, format: parquet, path: "{source}"}}\n'
        f"transformation:\n"
        f"  - name: kept\n    where: {{from: docs, filter: keep}}\n"
        f"output:\n"
        f"  - name: kept\n    format: vector\n{mode_line}"
        f"    options: {{namespace: {namespace}, id_column: doc_id, vector_column: embedding, "
        f"batch_size: 500}}\n"
        f"{extra_output}"
    )


async def run(stub: Stub, yaml: str) -> pb.JobResponse:
    job = await stub.SubmitJob(pb.PipelineRequest(yaml=yaml))
    return await stub.WaitForJob(pb.WaitForJobRequest(job_id=job.job_id, timeout_seconds=120))


async def test_a_vector_output_upserts_every_row_into_vector_core(env: Env, source: Path) -> None:
    done = await run(env.teckel, vector_job(source))
    assert done.status == "completed", done.error
    kept = [i for i in range(ROWS) if i % 5 != 0]  # 2000 rows: four batches of 500
    info = await env.vectors.info(namespace="docs", check=True)
    assert info.info.index_size == len(kept)

    data = embeddings().astype(np.float32)
    fetched = await env.vectors.fetch(["d1", "d2", "d5"], namespace="docs", check=True)
    np.testing.assert_allclose(ndarray.decode(fetched.fetch.vectors[0]), data[1], rtol=1e-6)
    np.testing.assert_allclose(ndarray.decode(fetched.fetch.vectors[1]), data[2], rtol=1e-6)
    assert not fetched.fetch.vectors[2].shape  # filtered out by the job: never sent

    answer = await env.vectors.query(data[[7, 1234]], top_k=3, namespace="docs", check=True)
    assert [m.ids[0] for m in answer.query.matches] == ["d7", "d1234"]

    # Upserts are idempotent by id: running the job again converges to the same namespace.
    again = await run(env.teckel, vector_job(source))
    assert again.status == "completed", again.error
    assert (await env.vectors.info(namespace="docs", check=True)).info.index_size == len(kept)


async def test_error_and_ignore_modes_look_at_the_namespace(env: Env, source: Path) -> None:
    assert (await run(env.teckel, vector_job(source, mode="error"))).status == "completed"
    refused = await run(env.teckel, vector_job(source, mode="error"))
    assert refused.status == "failed"
    assert "[E-IO-002]" in refused.error and "docs" in refused.error
    ignored = await run(env.teckel, vector_job(source, mode="ignore"))
    assert ignored.status == "completed", ignored.error


async def test_an_error_answer_fails_the_job_and_commits_no_other_output(
    env: Env, source: Path, tmp_path: Path
) -> None:
    # The namespace exists with another dimension: vector-core answers ERROR to the first batch.
    await env.vectors.upsert(["x"], np.ones((1, DIM + 1), dtype=np.float32), namespace="docs", check=True)
    out = tmp_path / "copy.parquet"
    also = f'  - {{name: kept, format: parquet, path: "{out}"}}\n'
    done = await run(env.teckel, vector_job(source, extra_output=also))
    assert done.status == "failed"
    assert "[E-X-VEC-002] vector-core refused batch 1 of 4 (rows 1-500)" in done.error
    assert "dimension" in done.error
    assert not out.exists()  # vector outputs go first: the parquet output was never committed
    assert not [name for name in os.listdir(tmp_path) if ".teckel-" in name]


async def test_an_unreachable_vector_core_fails_the_job_clearly(tmp_path: Path, source: Path) -> None:
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    settings = TeckelJobsSettings(
        data_dir=tmp_path / "teckel", max_concurrency=1, vector_core_address=address, vector_core_retry_s=0.5
    )
    async with running(TeckelJobsService(settings)) as server:
        channel = channel_to(server)
        done = await run(Stub(channel), vector_job(source))
        await channel.close()
    assert done.status == "failed"
    assert f"[E-X-VEC-003] vector-core at {address} is unreachable" in done.error


# ---- validation (no service needed) ---------------------------------------------------------------


def parse(output: str, input_format: str = "parquet") -> document.Pipeline:
    return document.parse(
        f'version: "3.0"\ninput:\n  - {{name: docs, format: {input_format}, path: /tmp/docs.parquet}}\n'
        f"output:\n{output}",
        {},
        {},
    )


def errors_of(output: str, input_format: str = "parquet") -> str:
    with pytest.raises(PipelineInvalid) as invalid:
        parse(output, input_format)
    return str(invalid.value)


def test_vector_outputs_need_namespace_id_and_vector_columns() -> None:
    text = errors_of("  - {name: docs, format: vector}\n")
    for option in ("namespace", "id_column", "vector_column"):
        assert f'[E-X-OPT-003] vector write option "{option}" is required' in text
    assert "3 error(s)" in text


def test_vector_option_values_modes_and_keys_are_checked() -> None:
    base = "namespace: docs, id_column: id, vector_column: v"
    assert "[E-X-OPT-002]" in errors_of(
        f"  - {{name: docs, format: vector, options: {{{base}, batch_size: 0}}}}\n"
    )
    assert '[E-X-OPT-001] unknown vector write option "metadata_columns"' in errors_of(
        f"  - {{name: docs, format: vector, options: {{{base}, metadata_columns: a}}}}\n"
    )
    assert "[E-MODE-002]" in errors_of(
        f"  - {{name: docs, format: vector, mode: overwrite, options: {{{base}}}}}\n"
    )
    assert "[E-X-KEY-003]" in errors_of(
        f"  - {{name: docs, format: vector, path: /x, options: {{{base}}}}}\n"
    )
    assert '[E-FMT-001] format "vector" can only be written' in errors_of(
        f"  - {{name: docs, format: vector, options: {{{base}}}}}\n", input_format="vector"
    )


def test_a_valid_vector_output_defaults_to_append_and_explains_its_namespace() -> None:
    pipeline = parse(
        "  - {name: docs, format: vector, options: {namespace: docs, id_column: id, vector_column: v}}\n"
    )
    (output,) = pipeline.outputs
    assert (output.mode, output.path) == ("append", "docs")
    assert "[output_docs] from=docs, format=vector, mode=Append, path=docs" in explain.explain(pipeline)


async def test_validate_pipeline_rpc_reports_missing_vector_options(tmp_path: Path) -> None:
    async with running(TeckelJobsService(TeckelJobsSettings(data_dir=tmp_path, max_concurrency=1))) as server:
        channel = channel_to(server)
        yaml = (
            'version: "3.0"\ninput:\n  - {name: docs, format: parquet, path: /tmp/d.parquet}\n'
            "output:\n  - {name: docs, format: vector, options: {namespace: docs}}\n"
        )
        answer = await Stub(channel).ValidatePipeline(pb.PipelineRequest(yaml=yaml))
        await channel.close()
    assert not answer.valid
    assert 'option "id_column" is required' in answer.error
    assert 'option "vector_column" is required' in answer.error


# ---- columns --------------------------------------------------------------------------------------

SPEC = VectorSpec(namespace="docs", id_column="id", vector_column="v")


def refusal(frame: pl.DataFrame) -> str:
    with pytest.raises(StepFailed) as failed:
        vectors_of(frame, SPEC, 'asset "docs"')
    return str(failed.value)


def test_columns_are_converted_to_string_ids_and_float32_vectors() -> None:
    ids, matrix = vectors_of(pl.DataFrame({"id": [1, 2], "v": [[1.0, 2.0], [3.0, 4.0]]}), SPEC, "x")
    assert ids == ["1", "2"]
    assert matrix.dtype == np.float32 and matrix.tolist() == [[1.0, 2.0], [3.0, 4.0]]
    frame = pl.DataFrame(
        {"id": ["a"], "v": [[1, 2, 3]]}, schema={"id": pl.String, "v": pl.Array(pl.Int32, 3)}
    )
    assert vectors_of(frame, SPEC, "x")[1].tolist() == [[1.0, 2.0, 3.0]]


def test_bad_vector_columns_are_refused_before_anything_is_sent() -> None:
    assert "different lengths" in refusal(pl.DataFrame({"id": ["a", "b"], "v": [[1.0], [1.0, 2.0]]}))
    assert "duplicate ids" in refusal(pl.DataFrame({"id": ["a", "a"], "v": [[1.0], [2.0]]}))
    assert "null" in refusal(pl.DataFrame({"id": ["a", None], "v": [[1.0], [2.0]]}))
    assert "null" in refusal(pl.DataFrame({"id": ["a", "b"], "v": [[1.0], None]}))
    assert "NaN or infinite" in refusal(pl.DataFrame({"id": ["a", "b"], "v": [[1.0], [float("nan")]]}))
    assert "list or array of numbers" in refusal(pl.DataFrame({"id": ["a"], "v": ["1,2"]}))
    assert '[E-COL-001] column "v" not found' in refusal(pl.DataFrame({"id": ["a"], "w": [[1.0]]}))


async def test_the_session_api_writes_a_vector_output(env: Env, source: Path) -> None:
    session = (await env.teckel.CreateSession(pb.CreateSessionRequest(backend="polars"))).session_id
    docs = await env.teckel.ReadInput(
        pb.ReadInputRequest(session_id=session, asset_name="docs", format="parquet", path=str(source))
    )
    options = {"namespace": "session-docs", "id_column": "doc_id", "vector_column": "embedding"}
    written = await env.teckel.WriteOutput(
        pb.WriteOutputRequest(session_id=session, handle_id=docs.handle_id, format="vector", options=options)
    )
    assert written.rows_written == ROWS
    assert (await env.vectors.info(namespace="session-docs", check=True)).info.index_size == ROWS
