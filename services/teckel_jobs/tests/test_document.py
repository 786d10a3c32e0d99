"""The Teckel document parser and validator: every rule with its code, location and hints."""

from __future__ import annotations

from pathlib import Path

import pytest

from lakestack_teckel_jobs.document import DEFAULT_POLICY, Policy, parse, parse_step
from lakestack_teckel_jobs.explain import explain
from lakestack_teckel_jobs.spec_errors import PipelineInvalid, SpecError

HEADER = 'version: "3.0"\n'
ONE_INPUT = "input:\n  - name: src\n    format: csv\n    path: in.csv\n"
ONE_OUTPUT = "output:\n  - name: src\n    format: parquet\n    path: out\n"


def errors_of(
    text: str, policy: Policy = DEFAULT_POLICY, variables: dict[str, str] | None = None
) -> list[SpecError]:
    with pytest.raises(PipelineInvalid) as caught:
        parse(text, variables or {}, {}, policy)
    return caught.value.errors


def codes(text: str, policy: Policy = DEFAULT_POLICY) -> list[str]:
    return [error.code for error in errors_of(text, policy)]


def test_a_valid_pipeline_builds_inputs_steps_outputs_and_waves() -> None:
    pipeline = parse(
        HEADER
        + ONE_INPUT
        + "transformation:\n"
        + "  - name: positive\n    where: {from: src, filter: 'x > 0'}\n"
        + "  - name: top\n    orderBy: {from: positive, columns: [{column: x, direction: desc}]}\n"
        + "output:\n  - name: top\n    format: parquet\n    path: out\n    mode: overwrite\n",
        {},
        {},
    )
    assert list(pipeline.inputs) == ["src"]
    assert list(pipeline.steps) == ["positive", "top"]
    assert pipeline.steps["top"].params["columns"] == [{"column": "x", "direction": "desc"}]
    assert [(o.key, o.name, o.mode) for o in pipeline.outputs] == [("output_top", "top", "overwrite")]
    assert pipeline.schedule.waves == [["src"], ["positive"], ["top"], ["output_top"]]


def test_defaults_are_filled_in() -> None:
    pipeline = parse(
        HEADER
        + "input:\n  - {name: a, format: csv, path: a.csv}\n  - {name: b, format: csv, path: b.csv}\n"
        + "transformation:\n  - name: u\n    union: {sources: [a, b]}\n"
        + "output:\n  - {name: u, format: csv, path: u.csv}\n",
        {},
        {},
    )
    assert pipeline.steps["u"].params == {
        "sources": ["a", "b"],
        "all": True,
        "byName": False,
        "allowMissingColumns": False,
    }
    assert pipeline.outputs[0].mode == "error"


def test_every_error_is_reported_with_code_path_and_line() -> None:
    found = errors_of(
        'version: "1.0"\n'
        "input:\n"
        "  - name: 1orders\n"  # line 3
        "    format: csvv\n"
        "    path: x\n"
        "transformation:\n"
        "  - name: t1\n"
        "    where: {from: ordrs, filter: 'x > 0'}\n"  # line 8
        "output:\n"
        "  - name: t1\n"
        "    format: parquet\n"
        "    path: out\n"
        "    mode: upsert\n"  # line 13
    )
    assert [e.code for e in found] == ["E-VERSION-001", "E-NAME-002", "E-FMT-001", "E-MODE-001", "E-REF-001"]
    version, name, fmt, mode, ref = found
    assert version.message == 'unsupported version "1.0", expected "2.0" or "3.0"'
    assert name.message == 'invalid AssetRef "1orders" -- must start with a letter'
    assert (name.path, name.location and name.location.line) == ("input[0].name", 3)
    assert fmt.message == 'unsupported input format "csvv" (did you mean "csv"?)'
    assert mode.message == 'unknown write mode "upsert", expected: error|overwrite|append|ignore'
    assert (mode.location and mode.location.line) == 13
    assert ref.message == 'asset "t1" references undefined asset "ordrs"'
    assert ref.path == "transformation[0].where.from"
    assert ref.location is not None and (ref.location.line, ref.location.column) == (8, 19)


def test_the_message_lists_every_error_numbered() -> None:
    with pytest.raises(PipelineInvalid) as caught:
        parse('version: "9"\ninput: []\noutput: []\n', {}, {})
    text = str(caught.value)
    assert text.startswith("Validation failed with 3 error(s):\n  1. [E-VERSION-001]")
    assert '  2. [E-LIST-001] "input" must contain at least one element' in text
    assert '  3. [E-LIST-001] "output" must contain at least one element' in text


def test_did_you_mean_for_keys_operations_references_and_enums() -> None:
    found = errors_of(
        HEADER
        + ONE_INPUT
        + "transformaton: []\n"
        + "transformation:\n"
        + "  - name: j\n    selct: {from: src, columns: [a]}\n"
        + "  - name: k\n    join: {left: src, right: [{name: srcc, type: innr, on: ['src.id = srcc.id']}]}\n"
        + "  - name: w\n    where: {from: src, filtr: 'a > 1', filter: 'a > 1'}\n"
        + ONE_OUTPUT
    )
    messages = [str(e) for e in found]
    assert any(
        'unknown key "transformaton" in the document (did you mean "transformation"?)' in m for m in messages
    )
    assert any(
        '[E-OP-002] unknown operation "selct" in transformation "j" (did you mean "select"?)' in m
        for m in messages
    )
    assert any(
        '[E-ENUM-001] invalid join type "innr", expected: inner|left|right|outer|cross|left_semi|left_anti '
        '(did you mean "inner"?)' in m
        for m in messages
    )
    assert any(
        'unknown key "filtr" in "where" of transformation "w" (did you mean "filter"?)' in m for m in messages
    )


def test_reference_hint_for_a_misspelt_asset() -> None:
    found = errors_of(
        HEADER
        + ONE_INPUT
        + "transformation:\n  - name: t\n    where: {from: scr, filter: 'a'}\n"
        + ONE_OUTPUT
    )
    assert [str(e).split(" (transformation")[0] for e in found] == [
        '[E-REF-001] asset "t" references undefined asset "scr" (did you mean "src"?)'
    ]


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ("  - name: t\n    select: {from: src, columns: []}\n", "E-LIST-001"),
        ("  - name: t\n    where: {from: src}\n", "E-REQ-001"),
        ("  - name: t\n", "E-OP-001"),
        ("  - name: t\n    where: {from: src, filter: a}\n    limit: {from: src, count: 1}\n", "E-OP-001"),
        (
            "  - name: t\n    orderBy: {from: src, columns: [{column: a, direction: ascending}]}\n",
            "E-ENUM-001",
        ),
        (
            "  - name: t\n    join: {left: src, right: [{name: src, type: inner, on: ['id = id']}]}\n",
            "E-JOIN-001",
        ),
        (
            "  - name: t\n    join: {left: src, right: [{name: src, type: cross, on: ['a.x = b.y']}]}\n",
            "E-JOIN-001",
        ),
        ("  - name: t\n    limit: {from: src, count: many}\n", "E-X-TYPE-001"),
        ("  - name: src\n    limit: {from: src, count: 1}\n", "E-NAME-001"),
        ("  - name: t\n    limit: {from: t, count: 1}\n", "E-CYCLE-001"),
        ("  - name: t\n    union: {sources: [src]}\n", "E-LIST-001"),
        (
            "  - name: t\n    merge: {target: src, source: src, on: ['a.x = b.x'], "
            "whenMatched: [{action: upsert}]}\n",
            "E-ENUM-001",
        ),
        ("  - name: t\n    split: {from: src, condition: 'a > 1', pass: 1p, fail: f}\n", "E-NAME-002"),
    ],
)
def test_transformation_rules(body: str, code: str) -> None:
    assert code in codes(HEADER + ONE_INPUT + "transformation:\n" + body + ONE_OUTPUT)


def test_merge_action_message_matches_the_reference() -> None:
    found = errors_of(
        HEADER
        + ONE_INPUT
        + "transformation:\n  - name: t\n    merge: {target: src, source: src, on: ['a.x = b.x'], "
        + "whenMatched: [{action: upsert}]}\n"
        + ONE_OUTPUT
    )
    assert (
        found[0].message
        == 'invalid merge action "upsert", expected: update|insert|delete (did you mean "insert"?)'
    )


def test_cycles_are_found() -> None:
    text = (
        HEADER
        + ONE_INPUT
        + "transformation:\n"
        + "  - name: a\n    where: {from: b, filter: x}\n"
        + "  - name: b\n    where: {from: a, filter: x}\n"
        + ONE_OUTPUT
    )
    found = errors_of(text)
    assert [e.code for e in found] == ["E-CYCLE-001"]
    assert found[0].message == "circular dependency detected in the pipeline DAG"


def test_split_becomes_two_where_assets() -> None:
    pipeline = parse(
        HEADER
        + ONE_INPUT
        + "transformation:\n  - name: s\n    split: {from: src, condition: 'x > 0', pass: good, fail: bad}\n"
        + "output:\n  - {name: bad, format: csv, path: bad.csv}\n",
        {},
        {},
    )
    assert {name: (s.op.key, s.params["filter"]) for name, s in pipeline.steps.items()} == {
        "good": ("where", "x > 0"),
        "bad": ("where", "NOT(x > 0)"),
    }


def test_two_outputs_of_one_asset_both_survive() -> None:
    pipeline = parse(
        HEADER
        + ONE_INPUT
        + "output:\n  - {name: src, format: csv, path: a.csv}\n  - {name: src, format: parquet, path: b}\n",
        {},
        {},
    )
    assert [o.key for o in pipeline.outputs] == ["output_src", "output_src_2"]


def test_unknown_top_level_keys_are_rejected_but_extensions_allowed() -> None:
    assert codes(HEADER + ONE_INPUT + ONE_OUTPUT + "inputs: []\n") == ["E-X-KEY-001"]
    parse(HEADER + ONE_INPUT + ONE_OUTPUT + "x-team: data\n", {}, {})


def test_yaml_1_2_booleans_keep_on_a_key() -> None:
    pipeline = parse(
        HEADER
        + "input:\n  - {name: a, format: csv, path: a.csv}\n  - {name: b, format: csv, path: b.csv}\n"
        + "transformation:\n  - name: j\n    join:\n      left: a\n      right:\n"
        + "        - name: b\n          type: left\n          on: ['a.id = b.id']\n"
        + "output:\n  - {name: j, format: csv, path: j.csv}\n",
        {},
        {},
    )
    assert pipeline.steps["j"].params["right"][0]["on"] == ["a.id = b.id"]


def test_syntax_errors_have_a_position() -> None:
    found = errors_of("version: '3.0'\ninput: [\n")
    assert found[0].code == "E-X-YAML-001"
    assert found[0].location is not None


def test_variables_and_defaults_and_unresolved_ones() -> None:
    pipeline = parse(
        HEADER + "input:\n  - {name: src, format: csv, path: '${BASE}/in.csv'}\n"
        "output:\n  - {name: src, format: csv, path: '${OUT:out}/o.csv'}\n",
        {"BASE": "/data"},
        {},
    )
    assert (pipeline.inputs["src"].path, pipeline.outputs[0].path) == ("/data/in.csv", "out/o.csv")
    assert [e.code for e in errors_of(HEADER + "input: ${A}\noutput: ${B}\n")] == ["E-VAR-001", "E-VAR-001"]


def test_hooks_are_refused_unless_enabled() -> None:
    text = HEADER + ONE_INPUT + ONE_OUTPUT + "hooks:\n  preExecution:\n    - {name: hi, command: 'echo hi'}\n"
    found = errors_of(text)
    assert [e.code for e in found] == ["E-X-HOOK-002"]
    assert "disabled" in found[0].message and "hooks_enabled" in found[0].message
    pipeline = parse(text, {}, {}, Policy(hooks_enabled=True))
    assert [(h.name, h.command) for h in pipeline.pre_hooks] == [("hi", "echo hi")]


def test_paths_outside_the_allowed_roots_are_refused(tmp_path: Path) -> None:
    policy = Policy(allowed_roots=(tmp_path,))
    inside = f"{tmp_path}/in.csv"
    text = HEADER + f"input:\n  - {{name: src, format: csv, path: '{inside}'}}\n"
    parse(text + f"output:\n  - {{name: src, format: csv, path: '{tmp_path}/o.csv'}}\n", {}, {}, policy)
    found = errors_of(
        text + f"output:\n  - {{name: src, format: csv, path: '{tmp_path}/../o.csv'}}\n", policy
    )
    assert [e.code for e in found] == ["E-X-PATH-001"]


def test_streaming_sections_are_refused_with_a_reason() -> None:
    found = errors_of(HEADER + ONE_INPUT + ONE_OUTPUT + "streamingInput:\n  - {name: k, format: kafka}\n")
    assert [e.code for e in found] == ["E-X-STREAM-001"]


def test_source_json_accepts_document_and_serde_shapes() -> None:
    step = parse_step('{"where": {"from": "src", "filter": "x > 0"}}', "a")
    assert (step.name, step.op.key, step.dependencies) == ("a", "where", ["src"])
    serde = parse_step('{"GroupBy": {"from": "s", "by": ["k"], "agg": ["sum(v) AS v"]}}', "g")
    assert (serde.op.key, serde.params["by"]) == ("group", ["k"])
    joined = parse_step(
        '{"join": {"left": "a", "right": [{"name": "b", "join_type": "left", "on": ["a.i = b.i"]}]}}', "j"
    )
    assert joined.params["right"][0]["type"] == "left"
    with pytest.raises(PipelineInvalid, match="E-OP-002"):
        parse_step('{"wher": {"from": "s"}}', "x")


def test_explain_matches_the_reference_format() -> None:
    text = (
        'version: "2.0"\n'
        "input:\n"
        "  - {name: orders, format: csv, path: orders.csv}\n"
        "  - {name: customers, format: csv, path: customers.csv}\n"
        "transformation:\n"
        "  - name: enriched\n"
        "    join:\n"
        "      left: orders\n"
        "      right:\n"
        "        - {name: customers, type: inner, on: ['orders.customer_id = customers.id']}\n"
        "output:\n"
        "  - {name: enriched, format: parquet, path: output/enriched, mode: overwrite}\n"
    )
    assert explain(parse(text, {}, {})) == (
        "=== Pipeline Execution Plan ===\n"
        "\n"
        "--- Inputs ---\n"
        "  [orders] format=csv, path=orders.csv\n"
        "  [customers] format=csv, path=customers.csv\n"
        "\n"
        "--- Transformations ---\n"
        "  [enriched] JOIN (from: orders, customers)\n"
        "\n"
        "--- Outputs ---\n"
        "  [output_enriched] from=enriched, format=parquet, mode=Overwrite, path=output/enriched\n"
        "\n"
        "Total: 2 inputs, 1 transformations, 1 outputs\n"
        "Execution waves: 3\n"
        "  Wave 0: orders, customers\n"
        "  Wave 1: enriched\n"
        "  Wave 2: output_enriched"
    )


def test_explain_without_transformations_omits_the_section() -> None:
    plan = explain(parse(HEADER + ONE_INPUT + ONE_OUTPUT, {}, {}))
    assert "--- Transformations ---" not in plan
    assert plan.endswith(
        "Total: 1 inputs, 0 transformations, 1 outputs\nExecution waves: 2\n"
        "  Wave 0: src\n  Wave 1: output_src"
    )
