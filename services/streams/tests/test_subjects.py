"""Subject, pattern and name rules (NATS semantics): example tables plus hypothesis properties."""

from __future__ import annotations

import re
import string

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from lakestack_streams.subjects import (
    MAX_NAME_LENGTH,
    MAX_SUBJECT_LENGTH,
    SubjectError,
    SubjectFilter,
    is_literal,
    literal_prefix,
    matches,
    validate_name,
    validate_pattern,
    validate_subject,
)

QUOTE_LIMIT = 256  # inputs up to this length are quoted in full

# ---- example tables ---------------------------------------------------------------------------

VALID_SUBJECTS = [
    "a",
    "a.b",
    "orders.eu.created",
    "a.b*c",
    "a.*b",
    "a.b>",
    ">a.b",
    "**.b",
    "a.>>",
    "$KV.bucket.key",
    "obj:x.C.1",
    "émoji.🚀.中文",
    "a-b_c.d=e/f",
    "x" * MAX_SUBJECT_LENGTH,
    ".".join(["t"] * 512),  # 1023 chars
]

# (input, fragment the error message must contain)
INVALID_SUBJECTS = [
    ("", "must not be empty"),
    ("a..b", "empty token (double"),
    (".a", "empty token (leading"),
    ("a.", "empty token (trailing"),
    (".", "empty token"),
    ("a b", "whitespace ' '"),
    (" a", "whitespace"),
    ("a\tb", "whitespace '\\t'"),
    ("a.b\n", "whitespace '\\n'"),
    ("a\rb", "whitespace"),
    ("a\x00b", "control character '\\x00'"),
    ("a\x7fb", "control character '\\x7f'"),
    ("a\u00a0b", "whitespace"),
    ("a\u2028b", "whitespace"),
    ("a\u200bb", "invisible format character"),
    ("a.*", "publish subjects may not contain wildcards"),
    ("a.>", "publish subjects may not contain wildcards"),
    ("*", "publish subjects may not contain wildcards"),
    (">", "publish subjects may not contain wildcards"),
    ("*.b", "publish subjects may not contain wildcards"),
    (">.a", "publish subjects may not contain wildcards"),
    ("a.>.b", "publish subjects may not contain wildcards"),
    ("x" * (MAX_SUBJECT_LENGTH + 1), f"at most {MAX_SUBJECT_LENGTH} characters"),
]

VALID_PATTERNS = [
    *VALID_SUBJECTS,
    "*",
    ">",
    "a.*",
    "a.>",
    "*.b",
    "*.*",
    "a.*.c",
    "*.*.east.>",
    "a.*.>",
    "*.>",
]

INVALID_PATTERNS = [
    ("", "must not be empty"),
    ("a..b", "empty token (double"),
    (".a", "empty token (leading"),
    ("a.", "empty token (trailing"),
    ("a.>.", "empty token (trailing"),
    ("a b", "whitespace"),
    ("a.*\t", "whitespace"),
    ("a\n.>", "whitespace"),
    (">.a", "'>' may only be the last token"),
    ("a.>.b", "'>' may only be the last token"),
    (">.>", "'>' may only be the last token"),
    ("x" * (MAX_SUBJECT_LENGTH + 1), f"at most {MAX_SUBJECT_LENGTH} characters"),
]


@pytest.mark.parametrize("subject", VALID_SUBJECTS)
def test_valid_subjects(subject: str) -> None:
    validate_subject(subject)
    validate_pattern(subject)  # every subject is also a (literal) pattern
    assert is_literal(subject)


@pytest.mark.parametrize(("subject", "fragment"), INVALID_SUBJECTS)
def test_invalid_subjects(subject: str, fragment: str) -> None:
    with pytest.raises(SubjectError) as info:
        validate_subject(subject)
    message = str(info.value)
    assert fragment in message
    assert isinstance(info.value, ValueError)
    if subject and len(subject) <= QUOTE_LIMIT:
        assert repr(subject) in message  # the offending input is quoted


@pytest.mark.parametrize("pattern", VALID_PATTERNS)
def test_valid_patterns(pattern: str) -> None:
    validate_pattern(pattern)


@pytest.mark.parametrize(("pattern", "fragment"), INVALID_PATTERNS)
def test_invalid_patterns(pattern: str, fragment: str) -> None:
    with pytest.raises(SubjectError) as info:
        validate_pattern(pattern)
    message = str(info.value)
    assert fragment in message
    if pattern and len(pattern) <= QUOTE_LIMIT:
        assert repr(pattern) in message


def test_long_input_is_quoted_shortened() -> None:
    subject = "y" * 1_000_000
    with pytest.raises(SubjectError) as info:
        validate_subject(subject)
    assert len(str(info.value)) < 500
    assert "1000000" in str(info.value)


@pytest.mark.parametrize(
    ("pattern", "literal"),
    [("a", True), ("a.b*c", True), ("a.*", False), ("a.>", False), ("*", False), (">", False)],
)
def test_is_literal(pattern: str, literal: bool) -> None:
    assert is_literal(pattern) is literal


MATCH_TABLE = [
    ("a.*", "a.b", True),
    ("a.*", "a.b.c", False),
    ("a.*", "a", False),
    ("a.>", "a.b", True),
    ("a.>", "a.b.c", True),
    ("a.>", "a", False),
    ("a.>", "b.c", False),
    ("*.b", "x.b", True),
    ("*.b", "x.c", False),
    ("*.b", "b", False),
    ("*.b", "x.y.b", False),
    (">", "a", True),
    (">", "a.b.c", True),
    (">", "x" * MAX_SUBJECT_LENGTH, True),
    ("*", "a", True),
    ("*", "a.b", False),
    ("a.b", "a.b", True),
    ("a.b", "a.c", False),
    ("a.b", "a.b.c", False),
    ("a.b*c", "a.bxc", False),  # `*` inside a token is a literal character
    ("a.b*c", "a.b*c", True),
    ("*.*.east.>", "time.us.east.atlanta", True),
    ("*.*.east.>", "time.us.east", False),
    ("a.*.>", "a.b.c", True),
    ("a.*.>", "a.b", False),
    ("time.us.>", "time.us", False),
]


@pytest.mark.parametrize(("pattern", "subject", "expected"), MATCH_TABLE)
def test_matches_table(pattern: str, subject: str, expected: bool) -> None:
    validate_pattern(pattern)
    validate_subject(subject)
    assert matches(pattern, subject) is expected
    assert SubjectFilter([pattern]).accepts(subject) is expected


@pytest.mark.parametrize(
    ("pattern", "prefix"),
    [
        ("orders.*.eu", "orders."),
        ("orders.>", "orders."),
        ("a.b", "a.b"),
        ("*", ""),
        (">", ""),
        ("a.b.*", "a.b."),
        ("a.b*c.>", "a.b*c."),
        ("*.x.>", ""),
    ],
)
def test_literal_prefix(pattern: str, prefix: str) -> None:
    assert literal_prefix(pattern) == prefix


def test_filter_basics() -> None:
    empty = SubjectFilter([])
    assert empty.patterns == ()
    assert empty.accepts("anything.at.all")
    assert SubjectFilter().accepts("x")

    f = SubjectFilter(["a.b", "c.*", "a.b", "d.>", "c.*"])
    assert f.patterns == ("a.b", "c.*", "d.>")  # deduped, first-seen order
    assert f.accepts("a.b")
    assert f.accepts("c.x")
    assert f.accepts("d.x.y")
    assert not f.accepts("a")
    assert not f.accepts("c.x.y")
    assert not f.accepts("d")
    assert f == SubjectFilter(["a.b", "c.*", "d.>"])
    assert hash(f) == hash(SubjectFilter(["a.b", "c.*", "d.>"]))
    assert "c.*" in repr(f)

    literal_only = SubjectFilter(["k.a", "k.b"])
    assert literal_only.accepts("k.b")
    assert not literal_only.accepts("k.c")


def test_filter_validates_patterns() -> None:
    with pytest.raises(SubjectError, match=r"'a\.>\.b'"):
        SubjectFilter(["ok", "a.>.b"])
    with pytest.raises(SubjectError, match="empty"):
        SubjectFilter(["a..b"])
    with pytest.raises(TypeError):
        SubjectFilter("a.b")  # a bare string is a bug, not a list of one-letter patterns


VALID_NAMES = ["orders", "ORDERS_v2", "a", "obj:photos", "kv-bucket_1", "0", "x" * MAX_NAME_LENGTH, "-:_"]

INVALID_NAMES = [
    ("", "must not be empty"),
    ("x" * (MAX_NAME_LENGTH + 1), f"at most {MAX_NAME_LENGTH}"),
    ("a.b", "'.' separates subject tokens"),
    (".", "'.' separates subject tokens"),
    ("..", "'.' separates subject tokens"),
    ("a*", "wildcards"),
    (">", "wildcards"),
    ("a b", "whitespace"),
    ("a\tb", "whitespace"),
    ("a\n", "whitespace"),
    ("a/b", "path separators"),
    ("..\\x", "'.' separates"),
    ("a\\b", "path separators"),
    ("a\x00", "control character"),
    ("a\x7f", "control character"),
    ("café", "non-ASCII"),
    ("流", "non-ASCII"),
    ("a$b", "only ASCII letters, digits"),
    ("a=b", "only ASCII letters, digits"),
]


@pytest.mark.parametrize("name", VALID_NAMES)
def test_valid_names(name: str) -> None:
    validate_name("stream", name)


@pytest.mark.parametrize(("name", "fragment"), INVALID_NAMES)
def test_invalid_names(name: str, fragment: str) -> None:
    with pytest.raises(SubjectError) as info:
        validate_name("consumer", name)
    message = str(info.value)
    assert fragment in message
    if len(name) <= QUOTE_LIMIT:
        assert message.startswith(f"invalid consumer name {name!r}: ")
    else:
        assert message.startswith("invalid consumer name ")


# ---- hypothesis strategies --------------------------------------------------------------------

# Printable characters: no '.', no whitespace, no control/format/surrogate/private/unassigned.
TOKEN_CHARS = st.characters(
    exclude_categories=("Cc", "Cf", "Cs", "Co", "Cn", "Zs", "Zl", "Zp"),
    exclude_characters=".",
).filter(lambda ch: not ch.isspace())
TOKENS = st.text(TOKEN_CHARS, min_size=1, max_size=8).filter(lambda t: t not in ("*", ">"))
TOKEN_LISTS = st.lists(TOKENS, min_size=1, max_size=6)
SUBJECTS = TOKEN_LISTS.map(".".join)

# A tiny alphabet makes random patterns and subjects collide often enough to be interesting.
SMALL_TOKENS = st.sampled_from(["a", "b", "c", "a*", ">b"])
SMALL_SUBJECTS = st.lists(SMALL_TOKENS, min_size=1, max_size=4).map(".".join)


@st.composite
def small_patterns(draw: st.DrawFn) -> str:
    tokens = draw(st.lists(st.one_of(SMALL_TOKENS, st.just("*")), min_size=1, max_size=4))
    if draw(st.booleans()):
        tokens = [*tokens[: draw(st.integers(0, len(tokens) - 1))], ">"]
    return ".".join(tokens)


@st.composite
def derived_patterns(draw: st.DrawFn) -> tuple[str, str]:
    """(pattern, subject): a pattern built from the subject's tokens, wildcards and other tokens."""
    tokens = draw(TOKEN_LISTS)
    pattern = [draw(st.sampled_from([t, t, "*"]) | TOKENS) for t in tokens]
    if draw(st.booleans()):
        pattern = [*pattern[: draw(st.integers(0, len(pattern)))], ">"]
    return ".".join(pattern), ".".join(tokens)


@st.composite
def pattern_and_instance(draw: st.DrawFn) -> tuple[str, str]:
    """(pattern, subject) where the subject is built to match the pattern."""
    tokens = draw(st.lists(st.one_of(TOKENS, st.just("*")), min_size=1, max_size=5))
    if draw(st.booleans()):
        tokens = [*tokens[: draw(st.integers(0, len(tokens) - 1))], ">"]
    subject: list[str] = []
    for token in tokens:
        if token == "*":
            subject.append(draw(TOKENS))
        elif token == ">":
            subject.extend(draw(st.lists(TOKENS, min_size=1, max_size=3)))
        else:
            subject.append(token)
    return ".".join(tokens), ".".join(subject)


def reference_matches(pattern: str, subject: str) -> bool:
    """Independent matcher: translate the pattern into an anchored regex."""
    parts = []
    for token in pattern.split("."):
        if token == "*":
            parts.append(r"[^.]+")
        elif token == ">":
            parts.append(r"[^.]+(?:\.[^.]+)*")
        else:
            parts.append(re.escape(token))
    return re.fullmatch(r"\.".join(parts), subject, flags=re.DOTALL) is not None


# ---- properties -------------------------------------------------------------------------------


@given(TOKEN_LISTS)
def test_generated_subjects_are_valid(tokens: list[str]) -> None:
    subject = ".".join(tokens)
    validate_subject(subject)
    validate_pattern(subject)
    assert is_literal(subject)
    assert literal_prefix(subject) == subject


@given(SUBJECTS, st.data())
def test_forbidden_character_anywhere_is_rejected(subject: str, data: st.DataObject) -> None:
    bad = data.draw(st.sampled_from([" ", "\t", "\n", "\r", "\x00", "\x1f", "\x7f", "\u00a0", "\u200b"]))
    at = data.draw(st.integers(0, len(subject)))
    broken = subject[:at] + bad + subject[at:]
    with pytest.raises(SubjectError):
        validate_subject(broken)
    with pytest.raises(SubjectError):
        validate_pattern(broken)


@given(SUBJECTS, SUBJECTS)
def test_literal_pattern_matches_exactly_itself(pattern: str, subject: str) -> None:
    """(1) A literal pattern matches itself and nothing else."""
    assert matches(pattern, pattern)
    assert matches(pattern, subject) is (pattern == subject)


@given(TOKEN_LISTS, st.data())
def test_star_for_any_token_still_matches(tokens: list[str], data: st.DataObject) -> None:
    """(2) Replacing any one token with `*` keeps the match (and only that many tokens)."""
    index = data.draw(st.integers(0, len(tokens) - 1))
    pattern = ".".join([*tokens[:index], "*", *tokens[index + 1 :]])
    subject = ".".join(tokens)
    validate_pattern(pattern)
    assert not is_literal(pattern)
    assert matches(pattern, subject)
    assert not matches(pattern, subject + ".extra")


@given(TOKEN_LISTS, st.data())
def test_tail_wildcard_needs_at_least_one_token(tokens: list[str], data: st.DataObject) -> None:
    """(3) Replacing a suffix of >= 1 tokens with `>` matches; an empty suffix does not."""
    keep = data.draw(st.integers(0, len(tokens) - 1))
    subject = ".".join(tokens)
    pattern = ".".join([*tokens[:keep], ">"])
    validate_pattern(pattern)
    assert matches(pattern, subject)
    assert not matches(subject + ".>", subject)
    assert matches(subject + ".>", subject + ".x")


@settings(max_examples=300)
@given(small_patterns(), SMALL_SUBJECTS)
def test_matches_agrees_with_regex_reference_small(pattern: str, subject: str) -> None:
    """(4) `matches` == regex reference, on a tiny alphabet where collisions are frequent."""
    validate_pattern(pattern)
    validate_subject(subject)
    assert matches(pattern, subject) is reference_matches(pattern, subject)


@settings(max_examples=300)
@given(derived_patterns())
def test_matches_agrees_with_regex_reference_derived(case: tuple[str, str]) -> None:
    """(4) `matches` == regex reference, on patterns derived from the subject (full alphabet)."""
    pattern, subject = case
    validate_pattern(pattern)
    assert matches(pattern, subject) is reference_matches(pattern, subject)


@given(st.lists(small_patterns(), max_size=5), st.lists(SMALL_SUBJECTS, min_size=1, max_size=10))
def test_filter_accepts_iff_any_pattern_matches(patterns: list[str], subjects: list[str]) -> None:
    """(5) SubjectFilter.accepts == any(matches), and an empty filter accepts everything."""
    subject_filter = SubjectFilter(patterns)
    assert subject_filter.patterns == tuple(dict.fromkeys(patterns))
    for subject in subjects:
        expected = any(matches(p, subject) for p in patterns) if patterns else True
        assert subject_filter.accepts(subject) is expected


@given(pattern_and_instance())
def test_matching_subjects_start_with_literal_prefix(case: tuple[str, str]) -> None:
    """(6) Every subject matched by a pattern starts with the pattern's literal prefix."""
    pattern, subject = case
    validate_pattern(pattern)
    validate_subject(subject)
    assert matches(pattern, subject)
    assert reference_matches(pattern, subject)
    assert subject.startswith(literal_prefix(pattern))


@given(small_patterns(), SMALL_SUBJECTS)
def test_literal_prefix_implication_small(pattern: str, subject: str) -> None:
    """(6) Same, over random pairs: a match implies the prefix (the converse need not hold)."""
    if matches(pattern, subject):
        assert subject.startswith(literal_prefix(pattern))


NAME_CHARS = string.ascii_letters + string.digits + "_-:"
NAMES = st.text(NAME_CHARS, min_size=1, max_size=MAX_NAME_LENGTH)
FORBIDDEN_NAME_CHARS = st.one_of(
    st.sampled_from([".", "*", ">", " ", "\t", "\n", "/", "\\", "\x00", "\x7f", "é", "\u00a0", "$"]),
    st.characters(exclude_characters=NAME_CHARS, exclude_categories=("Cs",)),
)


@given(NAMES)
def test_generated_names_are_valid(name: str) -> None:
    """(7) Names over the allowed alphabet (1..255 chars) are accepted."""
    validate_name("stream", name)


@given(NAMES, FORBIDDEN_NAME_CHARS, st.data())
def test_one_forbidden_character_rejects_a_name(name: str, bad: str, data: st.DataObject) -> None:
    """(7) Inserting any one forbidden character anywhere makes the name invalid."""
    assume(len(name) < MAX_NAME_LENGTH)
    at = data.draw(st.integers(0, len(name)))
    broken = name[:at] + bad + name[at:]
    with pytest.raises(SubjectError) as info:
        validate_name("kv bucket", broken)
    message = str(info.value)
    assert message.startswith(f"invalid kv bucket name {broken!r}: ")
    assert f"at index {at}" in message
