"""Jobs read and write the lakehouse's Iceberg tables by name: by default the catalog is the
lakehouse service's embedded one (a SQL catalog on SQLite under LAKESTACK_LAKEHOUSE_DATA_DIR, as
`lakestack up` runs it), and every job output is one snapshot (append, or overwrite)."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import polars as pl
import pyarrow as pa
import pytest
from pyiceberg.catalog.sql import SqlCatalog

from lakestack_common.testing import channel_to, running
from lakestack_common.topology import lakehouse_catalog
from lakestack_protos.teckel.v1 import teckel_pb2 as pb
from lakestack_protos.teckel.v1 import teckel_pb2_grpc
from lakestack_teckel_jobs import formats
from lakestack_teckel_jobs.app import TeckelJobsService
from lakestack_teckel_jobs.formats import CatalogConfig
from lakestack_teckel_jobs.settings import TeckelJobsSettings
from lakestack_teckel_jobs.spec_errors import StepFailed


def events(days: list[date], amounts: list[float]) -> pa.Table:
    return pa.table({"day": pa.array(days, pa.date32()), "amount": pa.array(amounts, pa.float64())})


def daily(mode: str) -> str:
    return f"""
version: "3.0"
pipeline: {{name: daily}}
input:
  - name: events
    format: iceberg
    table: raw.events
transformation:
  - name: totals
    group: {{from: events, by: [day], agg: ["sum(amount) AS total", "count(*) AS events"]}}
  - name: ordered
    orderBy: {{from: totals, columns: [day]}}
output:
  - name: ordered
    format: iceberg
    table: mart.daily
    mode: {mode}
"""


def test_the_default_catalog_is_the_lakehouses(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LAKESTACK_LAKEHOUSE_DATA_DIR", str(tmp_path / "lakehouse"))
    monkeypatch.delenv("LAKESTACK_LAKEHOUSE_CATALOG_URI", raising=False)
    monkeypatch.delenv("LAKESTACK_LAKEHOUSE_WAREHOUSE", raising=False)
    settings = TeckelJobsSettings(data_dir=tmp_path / "teckel")
    assert settings.resolved_catalog == lakehouse_catalog(tmp_path / "lakehouse")
    explicit = TeckelJobsSettings(
        lakehouse_catalog_uri="sqlite:////x/c.db", lakehouse_warehouse="file:///x/w"
    )
    assert explicit.resolved_catalog == ("sqlite:////x/c.db", "file:///x/w")


async def test_a_job_reads_one_lakehouse_table_and_writes_another(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    lakehouse = tmp_path / "lakehouse"
    monkeypatch.setenv("LAKESTACK_LAKEHOUSE_DATA_DIR", str(lakehouse))
    monkeypatch.delenv("LAKESTACK_LAKEHOUSE_CATALOG_URI", raising=False)
    monkeypatch.delenv("LAKESTACK_LAKEHOUSE_WAREHOUSE", raising=False)
    uri, warehouse = lakehouse_catalog(lakehouse)
    lakehouse.mkdir()
    catalog = SqlCatalog("lakestack", uri=uri, warehouse=warehouse)  # what the lakehouse service opens
    catalog.create_namespace("raw")
    d1, d2 = date(2024, 5, 1), date(2024, 5, 2)
    raw = catalog.create_table("raw.events", schema=events([d1], [1.0]).schema)
    raw.append(events([d1, d1, d2], [1.0, 2.0, 4.0]))

    settings = TeckelJobsSettings(data_dir=tmp_path / "teckel", max_concurrency=1)
    async with running(TeckelJobsService(settings)) as server:
        channel = channel_to(server)
        stub = teckel_pb2_grpc.TeckelServiceStub(channel)

        async def run(yaml: str) -> str:
            job = await stub.SubmitJob(pb.PipelineRequest(yaml=yaml))
            done = await stub.WaitForJob(pb.WaitForJobRequest(job_id=job.job_id, timeout_seconds=120))
            assert done.status == "completed", done.error
            return job.job_id

        first = await run(daily("error"))
        mart = catalog.load_table("mart.daily")
        assert mart.scan().to_arrow().to_pylist() == [
            {"day": d1, "total": 3.0, "events": 2},
            {"day": d2, "total": 4.0, "events": 1},
        ]
        assert [s.summary.operation.value for s in mart.snapshots()] == ["append"]
        assert mart.current_snapshot().summary["teckel.job-id"] == first  # type: ignore[union-attr]

        raw.append(events([d2], [8.0]))
        second = await run(daily("overwrite"))
        mart = catalog.load_table("mart.daily")
        assert mart.scan().to_arrow().to_pylist() == [
            {"day": d1, "total": 3.0, "events": 2},
            {"day": d2, "total": 12.0, "events": 2},
        ]
        # One snapshot per job output: the overwrite replaced every data file in one commit.
        assert [s.summary.operation.value for s in mart.snapshots()] == ["append", "overwrite"]
        assert mart.current_snapshot().summary["teckel.job-id"] == second  # type: ignore[union-attr]

        await run(daily("append"))
        mart = catalog.load_table("mart.daily")
        assert len(mart.scan().to_arrow()) == 4
        assert [s.summary.operation.value for s in mart.snapshots()] == ["append", "overwrite", "append"]
        await channel.close()


def test_an_output_that_does_not_fit_the_tables_schema_fails_clearly(tmp_path: Path) -> None:
    uri, warehouse = lakehouse_catalog(tmp_path / "lakehouse")
    catalog = CatalogConfig(uri=uri, warehouse=warehouse)
    first = formats.stage(pl.LazyFrame({"a": [1]}), "iceberg", "mart.x", "error", {}, catalog, tag="j1")
    assert first is not None
    first.commit()
    other = formats.stage(pl.LazyFrame({"b": ["x"]}), "iceberg", "mart.x", "append", {}, catalog, tag="j2")
    assert other is not None
    with pytest.raises(StepFailed, match=r"E-X-IO-008.*mart\.x.*schema"):
        other.commit()
    assert formats.scan("iceberg", "mart.x", {}, catalog).collect()["a"].to_list() == [1]
