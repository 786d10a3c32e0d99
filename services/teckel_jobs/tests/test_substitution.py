"""Variable and secret substitution on the raw Teckel document (spec §12, §13)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lakestack_common.errors import InvalidArgument
from lakestack_teckel_jobs.spec_errors import Location, PipelineInvalid, location_of
from lakestack_teckel_jobs.substitution import (
    resolve_secrets,
    resolve_text,
    secret_env_name,
    substitute_variables,
)


def test_variables_come_from_the_request_then_the_environment_then_the_default() -> None:
    text = "path: ${BASE}/in.csv\nfilter: ${COND:1=1}\nout: ${OUT:data/out}"
    resolved = substitute_variables(text, {"BASE": "/req"}, {"BASE": "/env", "OUT": "/env/out"})
    assert resolved == "path: /req/in.csv\nfilter: 1=1\nout: /env/out"


def test_an_empty_default_and_dotted_names() -> None:
    assert substitute_variables("a: '${X:}' b: ${db.host}", {"db.host": "h"}, {}) == "a: '' b: h"


def test_double_dollar_escapes_a_literal_dollar() -> None:
    assert substitute_variables("q: $${NOT_A_VAR} and $$5", {}, {}) == "q: ${NOT_A_VAR} and $5"


def test_substitution_is_a_single_pass() -> None:
    # A value that looks like a variable is not expanded again.
    assert substitute_variables("v: ${A}", {"A": "${B}", "B": "no"}, {}) == "v: ${B}"


def test_every_unresolved_variable_is_reported_with_its_location() -> None:
    text = "version: '3.0'\ninput:\n  - path: ${MISSING}\n    name: ${ALSO_MISSING}\n"
    with pytest.raises(PipelineInvalid) as caught:
        substitute_variables(text, {}, {})
    errors = caught.value.errors
    assert [e.code for e in errors] == ["E-VAR-001", "E-VAR-001"]
    assert errors[0].message == 'unresolved variable "MISSING" with no default'
    assert errors[0].location == Location(3, 11)
    assert errors[1].location == Location(4, 11)
    assert isinstance(caught.value, InvalidArgument)
    assert "Validation failed with 2 error(s)" in str(caught.value)
    assert '[E-VAR-001] unresolved variable "ALSO_MISSING" with no default (line 4, column 11)' in str(
        caught.value
    )


def test_secrets_come_from_teckel_secret_variables() -> None:
    assert secret_env_name("api-token") == "TECKEL_SECRET__API_TOKEN"
    text = "headers: {Authorization: 'Bearer {{secrets.api-token}}'}"
    assert resolve_secrets(text, {"TECKEL_SECRET__API_TOKEN": "s3cr3t"}) == (
        "headers: {Authorization: 'Bearer s3cr3t'}"
    )
    with pytest.raises(PipelineInvalid) as caught:
        resolve_secrets("a: {{secrets.db}}\nb: {{secrets.other}}", {})
    assert [(e.code, e.location) for e in caught.value.errors] == [
        ("E-SECRET-001", Location(1, 4)),
        ("E-SECRET-001", Location(2, 4)),
    ]
    assert "TECKEL_SECRET__DB" in caught.value.errors[0].message


def test_resolve_text_reports_variables_and_secrets_together() -> None:
    with pytest.raises(PipelineInvalid) as caught:
        resolve_text("a: ${NOPE}\nb: {{secrets.gone}}", {}, {})
    assert [e.code for e in caught.value.errors] == ["E-VAR-001", "E-SECRET-001"]
    assert resolve_text("a: ${V}/{{secrets.k}}", {"V": "x"}, {"TECKEL_SECRET__K": "y"}) == "a: x/y"


@given(st.text(alphabet=st.characters(blacklist_characters="$"), max_size=200))
def test_text_without_dollars_or_secrets_is_unchanged(text: str) -> None:
    if "{{secrets." in text:
        return
    assert resolve_text(text, {"A": "b"}, {}) == text


@given(st.text(max_size=100), st.integers(min_value=0, max_value=100))
def test_location_of_counts_lines_and_columns_from_one(text: str, offset: int) -> None:
    offset = min(offset, len(text))
    location = location_of(text, offset)
    lines = text[:offset].split("\n")
    assert location == Location(len(lines), len(lines[-1]) + 1)
