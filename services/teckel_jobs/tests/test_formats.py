"""Reading inputs and staging/committing outputs (formats.py, format_options.py)."""

from __future__ import annotations

import os
from datetime import date, datetime
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from lakestack_teckel_jobs import document, format_options, formats
from lakestack_teckel_jobs.formats import CatalogConfig, OutputRequest
from lakestack_teckel_jobs.spec_errors import PipelineInvalid, StepFailed

FRAME = pl.DataFrame({"id": [1, 2, 3], "name": ["ann", "bob", None]})


def code_of(excinfo: pytest.ExceptionInfo[StepFailed]) -> str:
    return excinfo.value.spec_code


def listing(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))


# ---- reading ------------------------------------------------------------------------------------


def test_csv_header_defaults_to_false_as_the_spec_says(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text("id,name\n1,ann\n")
    without = formats.scan("csv", str(tmp_path / "t.csv"), {}, None).collect()
    assert without.columns == ["column_0", "column_1"] and without.height == 2
    with_header = formats.scan("csv", str(tmp_path / "t.csv"), {"header": "true"}, None).collect()
    assert with_header.to_dicts() == [{"id": 1, "name": "ann"}]


def test_csv_options_separator_nulls_and_no_inference(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text("id|amount\n1|NA\n2|2.5\n")
    options = {"header": True, "sep": "|", "nullValue": "NA"}
    typed = formats.scan("csv", str(tmp_path / "t.csv"), options, None).collect()
    assert typed.schema == pl.Schema({"id": pl.Int64, "amount": pl.Float64})
    assert typed["amount"].to_list() == [None, 2.5]
    strings = formats.scan("csv", str(tmp_path / "t.csv"), {**options, "inferSchema": False}, None).collect()
    assert strings.schema == pl.Schema({"id": pl.String, "amount": pl.String})


def test_unknown_option_is_refused_with_a_hint(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text("a\n1\n")
    with pytest.raises(StepFailed) as caught:
        formats.scan("csv", str(tmp_path / "t.csv"), {"headr": True}, None)
    assert code_of(caught) == "E-X-OPT-001" and 'did you mean "header"' in str(caught.value)
    with pytest.raises(StepFailed) as caught:
        formats.scan("csv", str(tmp_path / "t.csv"), {"header": "yes"}, None)
    assert code_of(caught) == "E-X-OPT-002"


def test_backslash_escape_is_refused_rather_than_misread(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text('a\n"x\\"y"\n')
    with pytest.raises(StepFailed, match="escape"):
        formats.scan("csv", str(tmp_path / "t.csv"), {"escape": "\\"}, None)


def test_json_reads_an_array_document_and_json_lines(tmp_path: Path) -> None:
    (tmp_path / "array.json").write_text('[{"a": 1}, {"a": 2}]')
    (tmp_path / "lines.json").write_text('{"a": 3}\n{"a": 4}\n')
    assert formats.scan("json", str(tmp_path / "array.json"), {}, None).collect()["a"].to_list() == [1, 2]
    assert formats.scan("ndjson", str(tmp_path / "lines.json"), {}, None).collect()["a"].to_list() == [3, 4]
    both = formats.scan("json", str(tmp_path), {}, None).collect()
    assert sorted(both["a"].to_list()) == [1, 2, 3, 4]


def test_directory_inputs_skip_hidden_and_underscore_files(tmp_path: Path) -> None:
    folder = tmp_path / "parts"
    folder.mkdir()
    FRAME.write_parquet(folder / "part-0.parquet")
    FRAME.write_parquet(folder / ".part-9.teckel-x.tmp.parquet")
    (folder / "_SUCCESS").write_text("")
    assert formats.scan("parquet", str(folder), {}, None).collect().height == 3
    FRAME.write_csv(folder / "a.csv")
    FRAME.write_csv(folder / ".hidden.csv")
    assert formats.scan("csv", str(folder), {"header": True}, None).collect().height == 3


def test_missing_input_unknown_format_and_empty_directory(tmp_path: Path) -> None:
    with pytest.raises(StepFailed) as caught:
        formats.scan("parquet", str(tmp_path / "nope.parquet"), {}, None)
    assert code_of(caught) == "E-IO-001" and "does not exist" in str(caught.value)
    with pytest.raises(StepFailed) as caught:
        formats.scan("xml", str(tmp_path), {}, None)
    assert code_of(caught) == "E-FMT-001"
    with pytest.raises(StepFailed) as caught:
        formats.scan("csv", str(tmp_path), {}, None)
    assert code_of(caught) == "E-IO-001" and "no csv files" in str(caught.value)
    with pytest.raises(StepFailed) as caught:
        formats.scan("csv", str(tmp_path / "*.csv"), {}, None)
    assert code_of(caught) == "E-IO-001" and "matches no files" in str(caught.value)


def test_inspect_reports_arrow_type_names_nullability_and_rows(tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    FRAME.write_parquet(path)
    found = formats.inspect("parquet", str(path), {}, None)
    assert found.row_count == 3
    assert [(f.name, f.data_type, f.nullable) for f in found.fields] == [
        ("id", "Int64", True),
        ("name", "Utf8", True),
    ]
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([pa.field("k", pa.int32(), nullable=False)])
    pq.write_table(pa.table({"k": [1]}, schema=schema), tmp_path / "req.parquet")
    required = formats.inspect("parquet", str(tmp_path / "req.parquet"), {}, None)
    assert [(f.data_type, f.nullable) for f in required.fields] == [("Int32", False)]


def test_arrow_type_names() -> None:
    assert formats.arrow_type_name(pl.Datetime("us", "UTC")) == 'Timestamp(Microsecond, Some("UTC"))'
    assert formats.arrow_type_name(pl.Datetime("ns")) == "Timestamp(Nanosecond, None)"
    assert formats.arrow_type_name(pl.Decimal(10, 2)) == "Decimal128(10, 2)"
    assert formats.arrow_type_name(pl.List(pl.Float64)) == "List(Float64)"
    assert formats.arrow_type_name(pl.Date) == "Date32"
    assert formats.arrow_type_name(pl.Struct({"a": pl.Boolean})) == "Struct(a Boolean)"


# ---- writing ------------------------------------------------------------------------------------


def test_single_file_output_is_invisible_until_commit(tmp_path: Path) -> None:
    target = tmp_path / "out.parquet"
    staged = formats.stage(FRAME.lazy(), "parquet", str(target), "error", {}, None, tag="job1")
    assert staged is not None and staged.rows == 3
    assert not target.exists()
    assert [name for name in listing(tmp_path) if ".teckel-job1" in name]
    staged.commit()
    assert listing(tmp_path) == ["out.parquet"]
    assert_frame_equal(pl.read_parquet(target), FRAME)


def test_abort_leaves_nothing_behind(tmp_path: Path) -> None:
    staged = formats.stage(FRAME.lazy(), "csv", str(tmp_path / "out"), "error", {}, None, tag="j")
    assert staged is not None
    staged.abort()
    assert listing(tmp_path) == []


def test_error_mode_refuses_an_existing_destination(tmp_path: Path) -> None:
    target = tmp_path / "out.csv"
    target.write_text("old")
    with pytest.raises(StepFailed) as caught:
        formats.stage(FRAME.lazy(), "csv", str(target), "error", {}, None, tag="j")
    assert str(caught.value) == f'[E-IO-002] output destination "{target}" already exists (mode=error)'
    assert target.read_text() == "old" and listing(tmp_path) == ["out.csv"]


def test_error_mode_loses_a_race_without_clobbering(tmp_path: Path) -> None:
    target = tmp_path / "out.parquet"
    staged = formats.stage(FRAME.lazy(), "parquet", str(target), "error", {}, None, tag="j")
    assert staged is not None
    target.write_bytes(b"someone else's")
    with pytest.raises(StepFailed, match="E-IO-002"):
        staged.commit()
    assert target.read_bytes() == b"someone else's" and listing(tmp_path) == ["out.parquet"]


def test_ignore_mode_skips_an_existing_destination(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    target.write_text("old")
    assert formats.stage(FRAME.lazy(), "json", str(target), "ignore", {}, None, tag="j") is None
    assert target.read_text() == "old"


def test_directory_output_append_and_overwrite(tmp_path: Path) -> None:
    target = tmp_path / "table"
    for mode in ("error", "append"):
        staged = formats.stage(FRAME.lazy(), "parquet", str(target), mode, {}, None, tag=mode)
        assert staged is not None
        staged.commit()
    parts = listing(target)
    assert len(parts) == 2 and all(p.startswith("part-") and p.endswith(".parquet") for p in parts)
    assert formats.scan("parquet", str(target), {}, None).collect().height == 6
    staged = formats.stage(FRAME.head(1).lazy(), "parquet", str(target), "overwrite", {}, None, tag="o")
    assert staged is not None and staged.rows == 1
    staged.commit()
    assert formats.scan("parquet", str(target), {}, None).collect().height == 1
    assert listing(tmp_path) == ["table"]


def test_csv_output_options_round_trip(tmp_path: Path) -> None:
    target = tmp_path / "out.csv"
    options = {"header": True, "sep": ";", "nullValue": "NULL"}
    staged = formats.stage(FRAME.lazy(), "csv", str(target), "overwrite", options, None, tag="j")
    assert staged is not None and staged.rows == 3
    staged.commit()
    assert target.read_text().splitlines() == ["id;name", "1;ann", "2;bob", "3;NULL"]
    assert_frame_equal(formats.scan("csv", str(target), options, None).collect(), FRAME)


def test_append_to_a_single_file_keeps_the_old_rows_first(tmp_path: Path) -> None:
    target = tmp_path / "out.parquet"
    FRAME.write_parquet(target)
    staged = formats.stage(FRAME.tail(1).lazy(), "parquet", str(target), "append", {}, None, tag="j")
    assert staged is not None and staged.rows == 4
    staged.commit()
    assert pl.read_parquet(target)["id"].to_list() == [1, 2, 3, 3]


def test_append_to_a_single_file_refuses_if_it_changed_meanwhile(tmp_path: Path) -> None:
    target = tmp_path / "out.csv"
    FRAME.write_csv(target, include_header=False)
    staged = formats.stage(FRAME.lazy(), "csv", str(target), "append", {}, None, tag="j")
    assert staged is not None
    with target.open("a") as fh:
        fh.write("9,zed\n")
    with pytest.raises(StepFailed) as caught:
        staged.commit()
    assert code_of(caught) == "E-X-IO-005"
    staged.abort()
    assert target.read_text().endswith("9,zed\n") and listing(tmp_path) == ["out.csv"]


def test_stage_many_runs_all_outputs_and_cleans_up_when_one_cannot(tmp_path: Path) -> None:
    (tmp_path / "taken.csv").write_text("x")
    frame = FRAME.lazy()
    good = OutputRequest(frame, "parquet", str(tmp_path / "a"), "error", {})
    with pytest.raises(StepFailed, match="E-IO-002"):
        formats.stage_many(
            [good, OutputRequest(frame, "csv", str(tmp_path / "taken.csv"), "error", {})], None, tag="j"
        )
    assert listing(tmp_path) == ["taken.csv"]
    second = OutputRequest(frame.filter(pl.col("id") > 1), "json", str(tmp_path / "b.json"), "error", {})
    staged = formats.stage_many([good, second], None, tag="j")
    assert [s.rows for s in staged if s] == [3, 2]


def test_two_outputs_may_not_share_a_destination(tmp_path: Path) -> None:
    request = OutputRequest(FRAME.lazy(), "parquet", str(tmp_path / "a"), "overwrite", {})
    with pytest.raises(StepFailed) as caught:
        formats.stage_many([request, request], None, tag="j")
    assert code_of(caught) == "E-X-IO-003"
    assert listing(tmp_path) == []


def test_unknown_mode(tmp_path: Path) -> None:
    with pytest.raises(StepFailed) as caught:
        formats.stage(FRAME.lazy(), "csv", str(tmp_path / "x"), "upsert", {}, None, tag="j")
    assert code_of(caught) == "E-MODE-001" and "expected: error|overwrite|append|ignore" in str(caught.value)


def test_remove_staging_drops_staged_data_and_restores_a_set_aside_directory(tmp_path: Path) -> None:
    target = tmp_path / "table"
    staged = formats.stage(FRAME.lazy(), "parquet", str(target), "error", {}, None, tag="dead")
    assert staged is not None
    # A commit that died between setting the old directory aside and renaming the new one in.
    aside = tmp_path / ".table.teckel-dead.old"
    aside.mkdir()
    (aside / "part-old.parquet").write_bytes(b"old")
    formats.remove_staging(str(target), "dead")
    assert listing(tmp_path) == ["table"] and listing(target) == ["part-old.parquet"]


def test_empty_frame_writes_a_schema_only_file(tmp_path: Path) -> None:
    target = tmp_path / "empty.parquet"
    staged = formats.stage(FRAME.clear().lazy(), "parquet", str(target), "error", {}, None, tag="j")
    assert staged is not None and staged.rows == 0
    staged.commit()
    assert pl.read_parquet(target).schema == FRAME.schema


def test_object_store_outputs_are_refused_clearly(tmp_path: Path) -> None:
    with pytest.raises(StepFailed) as caught:
        formats.stage(FRAME.lazy(), "parquet", "s3://bucket/x", "error", {}, None, tag="j")
    assert code_of(caught) == "E-X-IO-004"


# ---- Iceberg ------------------------------------------------------------------------------------


@pytest.fixture
def catalog(tmp_path: Path) -> CatalogConfig:
    (tmp_path / "warehouse").mkdir()
    return CatalogConfig(uri=f"sqlite:///{tmp_path / 'catalog.db'}", warehouse=str(tmp_path / "warehouse"))


def test_iceberg_write_then_read_append_overwrite(catalog: CatalogConfig) -> None:
    frame = pl.DataFrame({"id": [1, 2], "day": [date(2026, 1, 1), None], "at": [datetime(2026, 1, 1), None]})
    staged = formats.stage(frame.lazy(), "iceberg", "sales.orders", "error", {}, catalog, tag="j")
    assert staged is not None and staged.rows == 2
    with pytest.raises(StepFailed, match="E-IO-001"):
        formats.scan("iceberg", "sales.orders", {}, catalog)  # nothing is visible before the commit
    staged.commit()
    assert_frame_equal(formats.scan("iceberg", "sales.orders", {}, catalog).collect(), frame)
    with pytest.raises(StepFailed, match="E-IO-002"):
        formats.stage(frame.lazy(), "iceberg", "sales.orders", "error", {}, catalog, tag="j")
    assert formats.stage(frame.lazy(), "iceberg", "sales.orders", "ignore", {}, catalog, tag="j") is None
    for mode, expected in (("append", 4), ("overwrite", 2)):
        again = formats.stage(frame.lazy(), "iceberg", "sales.orders", mode, {}, catalog, tag="j")
        assert again is not None
        again.commit()
        assert formats.inspect("iceberg", "sales.orders", {}, catalog).row_count == expected


def test_iceberg_needs_a_catalog_and_an_identifier(catalog: CatalogConfig) -> None:
    with pytest.raises(StepFailed) as caught:
        formats.scan("iceberg", "sales.orders", {}, None)
    assert code_of(caught) == "E-FMT-002"
    with pytest.raises(StepFailed) as caught:
        formats.scan("iceberg", "/data/orders", {}, catalog)
    assert code_of(caught) == "E-X-PATH-002"


# ---- validation-time checks ---------------------------------------------------------------------


def test_option_problems_are_reported_when_the_document_is_validated() -> None:
    text = """
version: "3.0"
input:
  - name: orders
    format: csv
    path: /data/orders.csv
    options: {headr: true, sep: "||"}
output:
  - name: orders
    format: parquet
    path: /data/out
    options: {compression: zip}
"""
    with pytest.raises(PipelineInvalid) as caught:
        document.parse(text, {}, {})
    codes = [(e.code, e.path) for e in caught.value.errors]
    assert codes == [
        ("E-X-OPT-001", "input[0].options.headr"),
        ("E-X-OPT-002", "input[0].options.sep"),
        ("E-X-OPT-002", "output[0].options.compression"),
    ]


def test_format_options_accept_grpc_strings() -> None:
    assert format_options.problems("csv", "read", {"header": "TRUE", "skipRows": "2", "sep": "\t"}) == []
    assert format_options.flag({"header": "true"}, "header", False) is True
    assert format_options.flag({"header": False}, "header", True) is False
