"""Compaction (binpack / sort / zorder) on real Iceberg tables in a pyiceberg SqlCatalog (SQLite)."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import math
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.manifest import (
    DataFile,
    DataFileContent,
    FileFormat,
    ManifestContent,
    ManifestEntry,
    ManifestEntryStatus,
    ManifestWriterV2,
    write_manifest_list,
)
from pyiceberg.partitioning import PartitionField, PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.table import Table, TableProperties
from pyiceberg.table.refs import SnapshotRefType
from pyiceberg.table.snapshots import Operation, Snapshot, Summary
from pyiceberg.table.update import AddSnapshotUpdate, AssertRefSnapshotId, SetSnapshotRefUpdate
from pyiceberg.transforms import IdentityTransform
from pyiceberg.typedef import Record
from pyiceberg.types import (
    BinaryType,
    BooleanType,
    DateType,
    DecimalType,
    DoubleType,
    LongType,
    NestedField,
    StringType,
    StructType,
    TimestampType,
    UUIDType,
)

from lakestack_common.errors import Conflict, InvalidArgument, NotFound
from lakestack_lakehouse import compaction
from lakestack_lakehouse.compaction import CompactionResult, compact

SCHEMA = Schema(
    NestedField(1, "id", LongType()),
    NestedField(2, "name", StringType()),
    NestedField(3, "category", StringType()),
    NestedField(4, "x", DoubleType()),
    NestedField(5, "y", DoubleType()),
)
ARROW_SCHEMA = pa.schema(
    [
        pa.field("id", pa.int64()),
        pa.field("name", pa.string()),
        pa.field("category", pa.string()),
        pa.field("x", pa.float64()),
        pa.field("y", pa.float64()),
    ]
)
SORT_COLUMNS = [("id", "ascending"), ("name", "ascending"), ("category", "ascending"), ("x", "ascending")]


@pytest.fixture
def catalog(tmp_path: Path) -> SqlCatalog:
    cat = SqlCatalog("lakestack", uri=f"sqlite:///{tmp_path}/catalog.db", warehouse=f"file://{tmp_path}/wh")
    cat.create_namespace("db")
    return cat


def batch(start: int, count: int, rng: np.random.Generator | None = None, categories: int = 3) -> pa.Table:
    ids = list(range(start, start + count))
    rng = rng or np.random.default_rng(start)
    return pa.table(
        {
            "id": pa.array(ids, pa.int64()),
            "name": pa.array([f"name-{i % 97:03d}" if i % 11 else None for i in ids], pa.string()),
            "category": pa.array([chr(ord("a") + i % categories) for i in ids], pa.string()),
            "x": pa.array(rng.random(count), pa.float64()),
            "y": pa.array(rng.random(count), pa.float64()),
        },
        schema=ARROW_SCHEMA,
    )


def make_table(
    catalog: SqlCatalog,
    name: str,
    appends: int,
    rows_per_append: int = 50,
    partition_spec: PartitionSpec | None = None,
    properties: dict[str, str] | None = None,
) -> Table:
    kwargs: dict[str, Any] = {"properties": properties or {}}
    if partition_spec is not None:
        kwargs["partition_spec"] = partition_spec
    table = catalog.create_table(f"db.{name}", schema=SCHEMA, **kwargs)
    for i in range(appends):
        table.append(batch(i * rows_per_append, rows_per_append))
    return table


def rows(table: Table) -> pa.Table:
    return table.scan().to_arrow().sort_by(SORT_COLUMNS)


def data_files(table: Table) -> list[DataFile]:
    return [task.file for task in table.scan().plan_files()]


def read_file(data_file: DataFile) -> pa.Table:
    return pq.read_table(data_file.file_path.removeprefix("file://"))


def snapshot_count(table: Table) -> int:
    return len(table.metadata.snapshots)


def by_category() -> PartitionSpec:
    return PartitionSpec(
        PartitionField(source_id=3, field_id=1000, transform=IdentityTransform(), name="category")
    )


# ---------------------------------------------------------------------------------------------
# binpack


def test_binpack_merges_small_files_in_one_replace_snapshot(catalog: SqlCatalog) -> None:
    table = make_table(catalog, "events", appends=20)
    before = rows(table)
    snapshots = snapshot_count(table)
    inputs = {f.file_path for f in data_files(table)}
    assert len(inputs) == 20

    result = compact(table, "binpack", {})

    assert isinstance(result, CompactionResult)
    assert result.snapshot_id is not None
    json.dumps(result.details)  # JSON-serializable
    details = result.details
    assert details["strategy"] == "binpack"
    assert details["rewritten_files"] == 20
    assert details["added_files"] == details["new_files"] == 1
    assert details["groups"] == 1
    assert details["rows"] == 1000
    assert details["target_file_size_bytes"] == 512 * 1024 * 1024
    assert details["rewritten_bytes"] > 0 and details["added_bytes"] > 0
    assert details["snapshot_id"] == result.snapshot_id

    fresh = catalog.load_table("db.events")
    assert snapshot_count(fresh) == snapshots + 1
    snapshot = fresh.current_snapshot()
    assert snapshot is not None and snapshot.snapshot_id == result.snapshot_id
    assert snapshot.summary is not None
    assert snapshot.summary.operation == Operation.REPLACE
    assert snapshot.summary["lakestack.operation"] == "compact"
    assert snapshot.summary["total-records"] == "1000"
    assert snapshot.summary["total-data-files"] == "1"
    files = data_files(fresh)
    assert len(files) == 1 and files[0].file_path not in inputs
    assert rows(fresh).equals(before)


def test_binpack_is_idempotent(catalog: SqlCatalog) -> None:
    table = make_table(catalog, "events", appends=8)
    compact(table, "", {})
    snapshots = snapshot_count(table)
    again = compact(table, "binpack", {})
    assert again.snapshot_id is None
    assert again.details["groups"] == 0
    assert snapshot_count(catalog.load_table("db.events")) == snapshots


def test_min_input_files_is_respected(catalog: SqlCatalog) -> None:
    table = make_table(catalog, "events", appends=4)
    snapshot_id = table.metadata.current_snapshot_id

    result = compact(table, "binpack", {})

    assert result.snapshot_id is None
    assert result.details["groups"] == 0
    assert result.details["rewritten_files"] == 0
    assert "nothing to compact" in result.details["message"]
    assert "min_input_files=5" in result.details["message"]
    fresh = catalog.load_table("db.events")
    assert fresh.metadata.current_snapshot_id == snapshot_id
    assert len(data_files(fresh)) == 4

    lowered = compact(fresh, "binpack", {"min-input-files": "3"})
    assert lowered.snapshot_id is not None
    assert lowered.details["rewritten_files"] == 4
    assert len(data_files(catalog.load_table("db.events"))) == 1


def test_single_small_file_is_never_rewritten_alone(catalog: SqlCatalog) -> None:
    table = make_table(catalog, "events", appends=1)
    result = compact(table, "binpack", {"min_input_files": "1"})
    assert result.snapshot_id is None
    result = compact(table, "sort", {"min_input_files": "1"}, sort_order="id")
    assert result.snapshot_id is None


def test_total_size_reaching_target_triggers_rewrite(catalog: SqlCatalog) -> None:
    table = make_table(catalog, "events", appends=3)
    total = sum(f.file_size_in_bytes for f in data_files(table))
    # Three files below min (0.75 x target) whose total reaches the target.
    result = compact(table, "binpack", {"target_file_size_bytes": str(total)})
    assert result.details["rewritten_files"] == 3
    assert result.snapshot_id is not None


def test_target_size_from_table_property_and_output_split(catalog: SqlCatalog) -> None:
    table = make_table(catalog, "events", appends=12, rows_per_append=400)
    total = sum(f.file_size_in_bytes for f in data_files(table))
    with table.transaction() as tx:
        tx.set_properties({TableProperties.WRITE_TARGET_FILE_SIZE_BYTES: str(total // 4)})
    before = rows(table)

    result = compact(table, "binpack", {})

    assert result.details["target_file_size_bytes"] == total // 4
    assert 3 <= result.details["added_files"] <= 5
    fresh = catalog.load_table("db.events")
    assert rows(fresh).equals(before)
    assert sum(f.record_count for f in data_files(fresh)) == 4800


def test_max_file_group_size_splits_groups(catalog: SqlCatalog) -> None:
    table = make_table(catalog, "events", appends=9)
    before = rows(table)
    sizes = [f.file_size_in_bytes for f in data_files(table)]
    options = {"max-file-group-size-bytes": str(3 * max(sizes)), "min_input_files": "2"}

    result = compact(table, "binpack", options, dry_run=True)
    assert result.details["groups"] == 3
    assert [g["file_count"] for g in result.details["planned_groups"]] == [3, 3, 3]

    result = compact(table, "binpack", options)
    assert result.details["added_files"] == 3
    assert rows(catalog.load_table("db.events")).equals(before)


def test_too_large_single_file_is_split(catalog: SqlCatalog) -> None:
    table = make_table(catalog, "events", appends=1, rows_per_append=20_000)
    (only,) = data_files(table)
    before = rows(table)
    target = only.file_size_in_bytes // 4

    result = compact(table, "binpack", {"target-file-size-bytes": str(target)})

    assert result.details["rewritten_files"] == 1
    assert result.details["added_files"] >= 3
    fresh = catalog.load_table("db.events")
    assert rows(fresh).equals(before)


# ---------------------------------------------------------------------------------------------
# sort


def test_sort_strategy_writes_sorted_files(catalog: SqlCatalog) -> None:
    table = make_table(catalog, "events", appends=10, rows_per_append=300)
    for i in range(10):  # out-of-order ids so sorting has work to do
        table.append(batch(100_000 - i * 1000, 20))
    before = rows(table)
    total = sum(f.file_size_in_bytes for f in data_files(table))

    result = compact(
        table, "sort", {"target_file_size_bytes": str(total // 3)}, sort_order="id DESC NULLS LAST"
    )

    assert result.details["strategy"] == "sort"
    assert result.details["sort_order"] == "id DESC NULLS LAST"
    assert result.details["rewritten_files"] == 20
    assert result.details["added_files"] >= 2
    fresh = catalog.load_table("db.events")
    assert rows(fresh).equals(before)
    bounds = []
    for data_file in data_files(fresh):
        ids = read_file(data_file).column("id").to_pylist()
        assert ids == sorted(ids, reverse=True)
        bounds.append((min(ids), max(ids)))
    bounds.sort()
    # Globally sorted within the group: the files' id ranges do not overlap.
    assert all(prev[1] < nxt[0] for prev, nxt in itertools.pairwise(bounds))


def test_sort_with_multiple_keys_and_null_placement(catalog: SqlCatalog) -> None:
    table = make_table(catalog, "events", appends=6)
    before = rows(table)

    result = compact(table, "sort", {"sort_columns": "name ASC NULLS LAST, id DESC"})

    assert result.details["sort_order"] == "name ASC NULLS LAST, id DESC NULLS LAST"
    fresh = catalog.load_table("db.events")
    assert rows(fresh).equals(before)
    (data_file,) = data_files(fresh)
    content = read_file(data_file)
    names = content.column("name").to_pylist()
    ids = content.column("id").to_pylist()
    first_null = names.index(None)
    assert all(n is None for n in names[first_null:])  # nulls last
    assert names[:first_null] == sorted(names[:first_null])
    keyed = list(zip(names, ids, strict=True))
    for (n1, i1), (n2, i2) in itertools.pairwise(keyed):
        if n1 == n2:
            assert i1 > i2  # id DESC within equal names


def test_sort_uses_table_sort_order_when_none_given(catalog: SqlCatalog) -> None:
    table = make_table(catalog, "events", appends=6)
    with table.update_sort_order() as update:
        update.desc("x", IdentityTransform())
    result = compact(table, "sort", {})
    assert result.details["sort_order"] == "x DESC NULLS LAST"
    (data_file,) = data_files(catalog.load_table("db.events"))
    xs = read_file(data_file).column("x").to_pylist()
    assert xs == sorted(xs, reverse=True)


def test_sort_without_any_order_is_invalid(catalog: SqlCatalog) -> None:
    table = make_table(catalog, "events", appends=6)
    with pytest.raises(InvalidArgument, match="sort order"):
        compact(table, "sort", {})


# ---------------------------------------------------------------------------------------------
# zorder


def test_zorder_prunes_range_queries_better_than_binpack(catalog: SqlCatalog) -> None:
    rng = np.random.default_rng(7)
    table = catalog.create_table("db.points", schema=SCHEMA)
    for i in range(16):
        table.append(batch(i * 1500, 1500, rng=rng))
    before = rows(table)
    total = sum(f.file_size_in_bytes for f in data_files(table))
    options = {"target_file_size_bytes": str(total // 8)}
    box = "x BETWEEN 0.30 AND 0.40 AND y BETWEEN 0.55 AND 0.65"

    def planned(tbl: Table) -> int:
        return len(list(tbl.scan(row_filter=box).plan_files()))

    binpacked = compact(table, "binpack", options)
    assert binpacked.details["added_files"] >= 6
    after_binpack = catalog.load_table("db.points")
    binpack_files = planned(after_binpack)
    assert rows(after_binpack).equals(before)

    zordered = compact(after_binpack, "zorder", {**options, "zorder_columns": "x,y"})
    assert zordered.details["strategy"] == "zorder"
    assert zordered.details["zorder_columns"] == ["x", "y"]
    assert zordered.details["added_files"] >= 6
    after_zorder = catalog.load_table("db.points")
    assert rows(after_zorder).equals(before)
    zorder_files = planned(after_zorder)

    assert zorder_files < binpack_files
    assert zorder_files <= binpack_files // 2
    # Both layouts answer the query with the same rows.
    expected = before.filter((pa.compute.field("x") >= 0.30) & (pa.compute.field("x") <= 0.40))
    expected = expected.filter((pa.compute.field("y") >= 0.55) & (pa.compute.field("y") <= 0.65))
    assert after_zorder.scan(row_filter=box).to_arrow().num_rows == expected.num_rows


def test_zorder_via_iceberg_sort_order_spelling(catalog: SqlCatalog) -> None:
    table = make_table(catalog, "events", appends=6)
    result = compact(table, "sort", {}, sort_order="zorder(x, y)")
    assert result.details["strategy"] == "zorder"
    assert result.details["zorder_columns"] == ["x", "y"]
    result = compact(catalog.load_table("db.events"), "zorder", {"min_input_files": "1"}, sort_order="y,x")
    assert result.details["zorder_columns"] == ["y", "x"]


def test_zorder_without_columns_is_invalid(catalog: SqlCatalog) -> None:
    table = make_table(catalog, "events", appends=6)
    with pytest.raises(InvalidArgument, match="zorder"):
        compact(table, "zorder", {})


def test_orderable_mapping_preserves_order() -> None:
    cases: list[tuple[pa.Array, list[int]]] = []
    ints = pa.array([-(2**63), -5, -1, 0, 3, 2**63 - 1], pa.int64())
    floats = pa.array([-math.inf, -2.5, -0.0, 0.0, 1e-300, 7.0, math.inf, math.nan], pa.float64())
    strings = pa.array(["", "a", "ab", "abcdefgh", "abcdefghZ", "b", "ba", "é"], pa.string())
    dates = pa.array([dt.date(1960, 1, 1), dt.date(1970, 1, 1), dt.date(2024, 2, 29)], pa.date32())
    stamps = pa.array([dt.datetime(1900, 1, 1), dt.datetime(2000, 1, 1, 0, 0, 1)], pa.timestamp("us"))
    for array in (ints, floats, strings, dates, stamps):
        values, nulls = compaction._orderable_uint64(array)
        assert not nulls.any()
        cases.append((array, values.tolist()))
        assert values.tolist() == sorted(values.tolist())
    float_values = cases[1][1]
    assert float_values[2] == float_values[3]  # -0.0 == 0.0
    string_values = cases[2][1]
    assert string_values[3] == string_values[4]  # only the first 8 bytes count
    values, nulls = compaction._orderable_uint64(pa.array([3, None, 1], pa.int32()))
    assert nulls.tolist() == [False, True, False]
    assert values[2] < values[0]


def test_ranks_and_bit_interleaving() -> None:
    ranks = compaction._normalized_ranks(
        np.array([10, 0, 5, 10], dtype=np.uint64), np.array([False, True, False, False]), bits=4
    )
    assert ranks.tolist() == [15, 0, 7, 15]
    x = np.array([0b10, 0b11, 0b00], dtype=np.uint64)
    y = np.array([0b01, 0b11, 0b10], dtype=np.uint64)
    # Morton order, x's bit before y's bit: x1 y1 x0 y0.
    assert compaction._interleave_bits([x, y], bits=2).tolist() == [0b1001, 0b1111, 0b0100]


def test_output_row_counts_follow_iceberg_rounding() -> None:
    opts = compaction._Options(
        target_file_size_bytes=1000,
        min_file_size_bytes=750,
        max_file_size_bytes=1800,
        min_input_files=5,
        max_file_group_size_bytes=10**9,
        rewrite_all=False,
        dry_run=False,
        row_filter=None,
        sort_text=None,
        zorder_text=None,
    )
    assert compaction._output_row_counts(50, 10.0, opts) == [50]
    assert compaction._output_row_counts(1000, 10.0, opts) == [100] * 10
    # A small remainder (50 rows = 500 bytes < min) is spread over the other files.
    assert compaction._output_row_counts(1050, 10.0, opts) == [105] * 10
    # A remainder above the minimum file size is kept as its own file.
    assert compaction._output_row_counts(1080, 10.0, opts) == [100] * 10 + [80]
    assert sum(compaction._output_row_counts(12345, 3.3, opts)) == 12345


@pytest.mark.parametrize("format_version", ["1", "2"])
def test_all_primitive_types_sort_and_zorder(catalog: SqlCatalog, format_version: str) -> None:
    schema = Schema(
        NestedField(1, "id", LongType()),
        NestedField(
            2, "p", StructType(NestedField(3, "lat", DoubleType()), NestedField(4, "tag", StringType()))
        ),
        NestedField(5, "d", DateType()),
        NestedField(6, "ts", TimestampType()),
        NestedField(7, "dec", DecimalType(10, 2)),
        NestedField(8, "u", UUIDType()),
        NestedField(9, "b", BooleanType()),
        NestedField(10, "raw", BinaryType()),
    )
    table = catalog.create_table("db.typed", schema=schema, properties={"format-version": format_version})
    rng = np.random.default_rng(3)
    for i in range(6):
        records = [
            {
                "id": i * 10 + j,
                "p": {"lat": float(rng.random()), "tag": ["x", "y", None][j % 3]} if j % 4 else None,
                "d": dt.date(2020, 1, 1) + dt.timedelta(days=int(rng.integers(0, 900))),
                "ts": dt.datetime(2020, 1, 1) + dt.timedelta(seconds=int(rng.integers(0, 10**8))),
                "dec": Decimal(int(rng.integers(-10_000, 10_000))) / 100,
                "u": uuid.UUID(int=int(rng.integers(0, 2**62)) << 64).bytes,
                "b": bool(j % 2),
                "raw": bytes(rng.integers(0, 256, size=j % 12, dtype=np.uint8)) if j % 5 else None,
            }
            for j in range(10)
        ]
        table.append(pa.Table.from_pylist(records, schema=table.schema().as_arrow()))
    before = table.scan().to_arrow().sort_by("id")

    result = compact(table, "sort", {}, sort_order="p.lat DESC NULLS FIRST")
    assert result.details["sort_order"] == "p.lat DESC NULLS FIRST"
    (data_file,) = data_files(catalog.load_table("db.typed"))
    lats = [p and p["lat"] for p in read_file(data_file).column("p").to_pylist()]
    assert lats[:18] == [None] * 18  # j % 4 == 0: three null structs per append
    assert lats[18:] == sorted(lats[18:], reverse=True)

    for columns in ("d,ts", "dec,u", "b,p.tag", "raw,p.lat,id"):
        current = catalog.load_table("db.typed")
        result = compact(current, "zorder", {"zorder_columns": columns, "rewrite_all": "true"})
        assert result.snapshot_id is not None, columns
        assert catalog.load_table("db.typed").scan().to_arrow().sort_by("id").equals(before), columns


# ---------------------------------------------------------------------------------------------
# partitions and filters


def test_partitioned_table_keeps_partitions(catalog: SqlCatalog) -> None:
    table = make_table(catalog, "parts", appends=6, partition_spec=by_category())
    before = rows(table)
    assert len(data_files(table)) == 18

    result = compact(table, "binpack", {})

    assert result.details["groups"] == 3
    assert result.details["rewritten_files"] == 18
    assert result.details["added_files"] == 3
    fresh = catalog.load_table("db.parts")
    assert rows(fresh).equals(before)
    seen = set()
    for data_file in data_files(fresh):
        (category,) = data_file.partition
        seen.add(category)
        assert f"category={category}" in data_file.file_path
        assert set(read_file(data_file).column("category").to_pylist()) == {category}
    assert seen == {"a", "b", "c"}
    assert len(list(fresh.scan(row_filter="category = 'b'").plan_files())) == 1


def test_filter_limits_rewritten_files(catalog: SqlCatalog) -> None:
    table = make_table(catalog, "parts", appends=6, partition_spec=by_category())
    before = rows(table)

    result = compact(table, "binpack", {"filter": "category = 'a'"})

    assert result.details["filter"] == "category = 'a'"
    assert result.details["considered_files"] == 6
    assert result.details["rewritten_files"] == 6
    fresh = catalog.load_table("db.parts")
    counts: dict[str, int] = {}
    for data_file in data_files(fresh):
        counts[data_file.partition[0]] = counts.get(data_file.partition[0], 0) + 1
    assert counts == {"a": 1, "b": 6, "c": 6}
    assert rows(fresh).equals(before)

    where = compact(fresh, "binpack", {}, where="category IN ('b')")
    assert where.details["rewritten_files"] == 6


def test_partition_spec_evolution_rewrites_into_current_spec(catalog: SqlCatalog) -> None:
    table = make_table(catalog, "evolving", appends=5)
    with table.update_spec() as update:
        update.add_identity("category")
    for i in range(5):
        table.append(batch(10_000 + i * 50, 50))
    before = rows(table)
    assert {f.spec_id for f in data_files(table)} == {0, 1}

    result = compact(table, "binpack", {})

    assert result.details["groups"] == 4  # the old spec's single partition + 3 categories
    fresh = catalog.load_table("db.evolving")
    assert rows(fresh).equals(before)
    files = data_files(fresh)
    assert {f.spec_id for f in files} == {fresh.metadata.default_spec_id}
    for data_file in files:
        assert set(read_file(data_file).column("category").to_pylist()) == {data_file.partition[0]}


# ---------------------------------------------------------------------------------------------
# dry run


def test_dry_run_commits_nothing(catalog: SqlCatalog) -> None:
    table = make_table(catalog, "events", appends=6)
    snapshot_id = table.metadata.current_snapshot_id
    paths = sorted(f.file_path for f in data_files(table))

    for result in (
        compact(table, "binpack", {}, dry_run=True),
        compact(table, "binpack", {"dry-run": "true"}),
    ):
        assert result.snapshot_id is None
        details = result.details
        json.dumps(details)
        assert details["dry_run"] is True
        assert details["rewritten_files"] == 6
        assert details["added_files"] == 0
        (group,) = details["planned_groups"]
        assert sorted(group["files"]) == paths
        assert group["file_count"] == 6 and group["rows"] == 300
        assert group["estimated_output_files"] == 1
        assert details["estimated_added_files"] == 1
    fresh = catalog.load_table("db.events")
    assert fresh.metadata.current_snapshot_id == snapshot_id
    assert sorted(f.file_path for f in data_files(fresh)) == paths


def test_dry_run_reports_partitions(catalog: SqlCatalog) -> None:
    table = make_table(catalog, "parts", appends=5, partition_spec=by_category())
    result = compact(table, "binpack", {}, dry_run=True)
    groups = result.details["planned_groups"]
    assert [g["partition"] for g in groups] == [{"category": "a"}, {"category": "b"}, {"category": "c"}]
    assert [g["partition_path"] for g in groups] == ["category=a", "category=b", "category=c"]


def test_empty_table_has_nothing_to_do(catalog: SqlCatalog) -> None:
    table = catalog.create_table("db.empty", schema=SCHEMA)
    result = compact(table, "binpack", {})
    assert result.snapshot_id is None
    assert result.details["considered_files"] == 0


# ---------------------------------------------------------------------------------------------
# concurrency


@pytest.mark.parametrize("isolation", ["serializable", "snapshot"])
def test_concurrent_append_between_planning_and_commit_is_kept(
    catalog: SqlCatalog, monkeypatch: pytest.MonkeyPatch, isolation: str
) -> None:
    # serializable (the default): pyiceberg's own retry refuses, compact() rebases in a new attempt;
    # snapshot: pyiceberg's own retry rebases the same attempt.
    properties = {TableProperties.WRITE_DELETE_ISOLATION_LEVEL: isolation}
    table = make_table(catalog, "events", appends=6, properties=properties)
    before = rows(table)
    inputs = {f.file_path for f in data_files(table)}
    other = catalog.load_table("db.events")
    extra = batch(50_000, 25)
    attempts: list[int] = []

    def concurrent_append(tbl: Table, attempt: int) -> None:
        attempts.append(attempt)
        if attempt == 1:
            other.append(extra)

    monkeypatch.setattr(compaction, "_before_commit", concurrent_append)
    result = compact(table, "binpack", {})

    assert result.snapshot_id is not None
    assert result.details["commit_attempts"] == len(attempts) == (2 if isolation == "serializable" else 1)
    fresh = catalog.load_table("db.events")
    after = rows(fresh)
    assert after.num_rows == before.num_rows + extra.num_rows
    assert after.equals(pa.concat_tables([before, extra]).sort_by(SORT_COLUMNS))
    paths = {f.file_path for f in data_files(fresh)}
    assert not paths & inputs
    assert len(paths) == 2  # the compacted file and the concurrently appended one
    snapshot = fresh.current_snapshot()
    assert snapshot is not None and snapshot.summary is not None
    assert snapshot.summary.operation == Operation.REPLACE
    assert snapshot.summary["total-records"] == str(after.num_rows)


def _parquet_files(table: Table) -> set[str]:
    root = Path(table.location().removeprefix("file://"))
    return {f"file://{p}" for p in root.rglob("*.parquet")}


def test_concurrent_rewrite_of_an_input_raises_conflict(
    catalog: SqlCatalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    table = make_table(catalog, "events", appends=6)
    other = catalog.load_table("db.events")
    on_disk_before = _parquet_files(table)

    def concurrent_delete(tbl: Table, attempt: int) -> None:
        other.delete("id < 10")  # copy-on-write: replaces the first input file

    monkeypatch.setattr(compaction, "_before_commit", concurrent_delete)
    with pytest.raises(Conflict, match="removed or rewritten"):
        compact(table, "binpack", {})

    fresh = catalog.load_table("db.events")
    assert fresh.scan().to_arrow().num_rows == 300 - 10
    snapshot = fresh.current_snapshot()
    assert snapshot is not None and snapshot.summary is not None
    assert snapshot.summary.get("lakestack.operation") is None
    # The compaction's own output files were removed again; only the concurrent delete's remain.
    live = {f.file_path for f in data_files(fresh)}
    assert _parquet_files(fresh) - on_disk_before <= live


def test_persistent_concurrent_appends_end_in_conflict_without_losing_data(
    catalog: SqlCatalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    table = make_table(catalog, "events", appends=6)
    other = catalog.load_table("db.events")
    appended: list[int] = []

    def always_append(tbl: Table, attempt: int) -> None:
        other.append(batch(90_000 + attempt * 100, 10))
        appended.append(attempt)

    monkeypatch.setattr(compaction, "_before_commit", always_append)
    with pytest.raises(Conflict, match="3 attempts"):
        compact(table, "binpack", {})
    assert appended == [1, 2, 3]
    fresh = catalog.load_table("db.events")
    assert fresh.scan().to_arrow().num_rows == 300 + 30
    assert len(data_files(fresh)) == 6 + 3


def test_table_dropped_during_compaction_is_not_found(
    catalog: SqlCatalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    table = make_table(catalog, "events", appends=6)
    monkeypatch.setattr(compaction, "_before_commit", lambda tbl, attempt: catalog.drop_table("db.events"))
    with pytest.raises(NotFound, match="dropped"):
        compact(table, "binpack", {})


# ---------------------------------------------------------------------------------------------
# position deletes


class _DeleteManifestWriter(ManifestWriterV2):
    def content(self) -> ManifestContent:
        return ManifestContent.DELETES

    @property
    def _meta(self) -> dict[str, str]:
        return {**super()._meta, "content": "deletes"}


def add_position_deletes(table: Table, deletes: dict[str, list[int]]) -> None:
    """Commit a position-delete file (pyiceberg cannot write merge-on-read deletes itself)."""
    paths = [path for path, positions in deletes.items() for _ in positions]
    positions = [pos for values in deletes.values() for pos in values]
    schema = pa.schema(
        [
            pa.field("file_path", pa.string(), nullable=False, metadata={b"PARQUET:field_id": b"2147483546"}),
            pa.field("pos", pa.int64(), nullable=False, metadata={b"PARQUET:field_id": b"2147483545"}),
        ]
    )
    location = f"{table.location()}/data/deletes-{uuid.uuid4()}.parquet"
    with table.io.new_output(location).create() as out:
        pq.write_table(pa.table([paths, positions], schema=schema), out)
    delete_file = DataFile.from_args(
        content=DataFileContent.POSITION_DELETES,
        file_path=location,
        file_format=FileFormat.PARQUET,
        partition=Record(),
        record_count=len(positions),
        file_size_in_bytes=len(table.io.new_input(location)),
        spec_id=table.spec().spec_id,
    )
    metadata = table.metadata
    parent = table.current_snapshot()
    assert parent is not None
    snapshot_id = metadata.new_snapshot_id()
    sequence_number = metadata.next_sequence_number()
    codec = TableProperties.WRITE_AVRO_COMPRESSION_DEFAULT
    writer = _DeleteManifestWriter(
        spec=table.spec(),
        schema=table.schema(),
        output_file=table.io.new_output(f"{table.location()}/metadata/{uuid.uuid4()}-m0.avro"),
        snapshot_id=snapshot_id,
        avro_compression=codec,
    )
    with writer:
        writer.add(
            ManifestEntry.from_args(
                status=ManifestEntryStatus.ADDED,
                snapshot_id=snapshot_id,
                sequence_number=None,
                file_sequence_number=None,
                data_file=delete_file,
            )
        )
    manifest_list = f"{table.location()}/metadata/snap-{snapshot_id}-0-{uuid.uuid4()}.avro"
    with write_manifest_list(
        format_version=2,
        output_file=table.io.new_output(manifest_list),
        snapshot_id=snapshot_id,
        parent_snapshot_id=parent.snapshot_id,
        sequence_number=sequence_number,
        avro_compression=codec,
    ) as list_writer:
        list_writer.add_manifests([*parent.manifests(table.io), writer.to_manifest_file()])
    snapshot = Snapshot(
        snapshot_id=snapshot_id,
        parent_snapshot_id=parent.snapshot_id,
        sequence_number=sequence_number,
        manifest_list=manifest_list,
        summary=Summary(operation=Operation.DELETE),
        schema_id=metadata.current_schema_id,
    )
    transaction = table.transaction()
    transaction._apply(
        (
            AddSnapshotUpdate(snapshot=snapshot),
            SetSnapshotRefUpdate(
                snapshot_id=snapshot_id,
                parent_snapshot_id=parent.snapshot_id,
                ref_name="main",
                type=SnapshotRefType.BRANCH,
            ),
        ),
        (AssertRefSnapshotId(snapshot_id=parent.snapshot_id, ref="main"),),
    )
    transaction.commit_transaction()


def test_position_deletes_are_applied_when_rewriting(catalog: SqlCatalog) -> None:
    table = make_table(catalog, "events", appends=6)
    files = sorted(data_files(table), key=lambda f: f.file_path)
    add_position_deletes(table, {files[0].file_path: [0, 1, 2], files[3].file_path: [49]})
    before = rows(table)
    assert before.num_rows == 300 - 4  # the fixture works: pyiceberg applies the deletes

    result = compact(table, "binpack", {})

    assert result.details["rows"] == 296
    fresh = catalog.load_table("db.events")
    assert rows(fresh).equals(before)
    (compacted,) = data_files(fresh)
    assert compacted.record_count == 296


def test_concurrent_delete_file_raises_conflict(catalog: SqlCatalog, monkeypatch: pytest.MonkeyPatch) -> None:
    table = make_table(catalog, "events", appends=6)
    other = catalog.load_table("db.events")
    first = sorted(data_files(table), key=lambda f: f.file_path)[0]

    def concurrent_position_delete(tbl: Table, attempt: int) -> None:
        if attempt == 1:
            add_position_deletes(other, {first.file_path: [5]})

    monkeypatch.setattr(compaction, "_before_commit", concurrent_position_delete)
    with pytest.raises(Conflict, match="delete file"):
        compact(table, "binpack", {})
    assert catalog.load_table("db.events").scan().to_arrow().num_rows == 299


# ---------------------------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize(
    ("strategy", "options", "sort_order", "message"),
    [
        ("shuffle", {}, None, "unknown compaction strategy"),
        ("binpack", {"target_size": "10"}, None, "target_size"),
        ("binpack", {"min_input_files": "many"}, None, "must be an integer"),
        ("binpack", {"min_input_files": "0"}, None, "must be >= 1"),
        ("binpack", {"target_file_size_bytes": "-1"}, None, "must be >= 1"),
        ("binpack", {"target_file_size_bytes": "1000", "min_file_size_bytes": "2000"}, None, "min_file_size"),
        ("binpack", {"target_file_size_bytes": "1000", "max_file_size_bytes": "500"}, None, "max_file_size"),
        ("binpack", {"target_file_size_bytes": "1", "target-file-size-bytes": "2"}, None, "twice"),
        ("binpack", {"rewrite_all": "maybe"}, None, "true or false"),
        ("binpack", {"filter": "id >>> 3"}, None, "cannot parse filter"),
        ("binpack", {"filter": "nope = 3"}, None, "invalid filter"),
        ("binpack", {}, "id", "binpack strategy takes no sort order"),
        ("sort", {}, "nope DESC", "unknown column"),
        ("sort", {}, "id SIDEWAYS", "cannot parse sort term"),
        ("sort", {"sort_columns": "name"}, "id", "more than once"),
        ("zorder", {"zorder_columns": "x,x"}, None, "twice"),
        ("zorder", {"zorder_columns": "x DESC"}, None, "no direction"),
        ("zorder", {"zorder_columns": "nope"}, None, "unknown column"),
        ("binpack", {"zorder_columns": "x"}, None, "binpack strategy takes no"),
    ],
)
def test_bad_input_is_invalid_argument(
    catalog: SqlCatalog, strategy: str, options: dict[str, str], sort_order: str | None, message: str
) -> None:
    table = make_table(catalog, "events", appends=6)
    snapshot_id = table.metadata.current_snapshot_id
    with pytest.raises(InvalidArgument, match=message):
        compact(table, strategy, options, sort_order=sort_order)
    assert catalog.load_table("db.events").metadata.current_snapshot_id == snapshot_id


def test_unknown_options_are_all_named(catalog: SqlCatalog) -> None:
    table = make_table(catalog, "events", appends=1)
    with pytest.raises(InvalidArgument) as info:
        compact(
            table, "binpack", {"colour": "red", "partial-progress.enabled": "true", "min-input-files": "2"}
        )
    assert "colour" in info.value.message and "partial-progress.enabled" in info.value.message
    assert "min-input-files" not in info.value.message.split(";")[0]


# ---------------------------------------------------------------------------------------------
# reading: the direct pyarrow path and the field-id projection


def test_plain_files_are_read_directly(catalog: SqlCatalog, monkeypatch: pytest.MonkeyPatch) -> None:
    table = make_table(catalog, "plain", appends=8)
    before = rows(table)

    def no_projection(*args: Any, **kwargs: Any) -> pa.Table:
        raise AssertionError("plain files should not need pyiceberg's projection")

    monkeypatch.setattr(compaction.ArrowScan, "to_table", no_projection)
    compact(table, "binpack", {})
    monkeypatch.undo()
    assert rows(catalog.load_table("db.plain")).equals(before)


def test_evolved_schemas_are_read_by_field_id(catalog: SqlCatalog) -> None:
    """Files written before a rename, a drop and an add: the direct path would see the old names
    and miss the new column, so these go through the projection; every value survives."""
    table = make_table(catalog, "evolved", appends=4)
    with table.update_schema() as update:
        update.rename_column("name", "label")
        update.add_column("extra", LongType())
    with table.update_schema(allow_incompatible_changes=True) as update:
        update.delete_column("y")
    table = catalog.load_table("db.evolved")
    new_rows = batch(1000, 50).rename_columns(["id", "label", "category", "x", "y"]).drop(["y"])
    table.append(new_rows.append_column("extra", pa.array(range(50), pa.int64())))
    before = table.scan().to_arrow().sort_by("id")
    assert before.column("label").null_count < before.num_rows  # old files' names come back by id

    compact(table, "binpack", {})

    after = catalog.load_table("db.evolved").scan().to_arrow().sort_by("id")
    assert after.column_names == ["id", "label", "category", "x", "extra"]
    assert after.equals(before.select(after.column_names))
    assert after.column("extra").to_pylist()[:200] == [None] * 200


def test_files_without_field_ids_are_read_directly_through_the_name_mapping(
    catalog: SqlCatalog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Files another engine wrote (no Parquet field ids), registered with add_files."""
    table = catalog.create_table("db.imported", schema=SCHEMA)
    paths = []
    for n in range(6):
        path = tmp_path / f"imported-{n}.parquet"
        pq.write_table(batch(n * 40, 40).cast(ARROW_SCHEMA.remove_metadata()), path)
        paths.append(str(path))
    table.add_files(paths)
    table = catalog.load_table("db.imported")
    before = rows(table)
    used: list[bool] = []
    read_plain = compaction._read_plain_files

    def spy(*args: Any) -> pa.Table | None:
        result = read_plain(*args)
        used.append(result is not None)
        return result

    monkeypatch.setattr(compaction, "_read_plain_files", spy)
    compact(table, "binpack", {})
    assert used == [True]
    assert rows(catalog.load_table("db.imported")).equals(before)
