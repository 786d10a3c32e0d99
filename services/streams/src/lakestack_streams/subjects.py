"""Subject and name rules of the streams service (pure domain code: no gRPC, no I/O).

Subjects follow NATS so that clients, filters and habits carry over unchanged:

* A subject is a non-empty string of at most 1024 characters made of tokens separated by `.`;
  no token may be empty (no leading, trailing or doubled dots).
* No whitespace, control (Cc), invisible format (Cf) or lone surrogate (Cs) characters anywhere;
  any other character is allowed inside a token.
* `*` and `>` are wildcards only as *whole* tokens (`a.b*c` is a literal subject):
  `*` matches exactly one token, `>` matches one or more trailing tokens and may only be the
  last token of a pattern (`a.>` matches `a.b` and `a.b.c`, not `a`). Publish subjects may
  not contain wildcard tokens; filter patterns may.

Names of streams, consumers, KV/object buckets and hash/set/queue stores are stricter than NATS
names: 1..255 characters from `[A-Za-z0-9_:-]` (`:` for the object store's `obj:<bucket>`).
Names become file names and subject tokens, so `.`, wildcards, path separators, whitespace,
control and non-ASCII characters are all rejected.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

__all__ = [
    "MAX_NAME_LENGTH",
    "MAX_SUBJECT_LENGTH",
    "SubjectError",
    "SubjectFilter",
    "SubjectTransform",
    "is_literal",
    "literal_prefix",
    "matches",
    "validate_name",
    "validate_pattern",
    "validate_subject",
]

MAX_SUBJECT_LENGTH = 1024
MAX_NAME_LENGTH = 255

_SEP = "."
_ONE = "*"
_TAIL = ">"
_WILDCARDS = frozenset((_ONE, _TAIL))

# ASCII fast path: space, C0 controls and DEL are the only forbidden ASCII characters.
_ASCII_FORBIDDEN = re.compile(r"[\x00-\x20\x7f]")
_FORBIDDEN_CATEGORIES = {
    "Cc": "control character",
    "Cf": "invisible format character",
    "Cs": "lone surrogate",
}
_NAME_OK = re.compile(r"[A-Za-z0-9_:\-]+")
_QUOTE_LIMIT = 256  # every name of legal length is quoted in full


class SubjectError(ValueError):
    """A subject, pattern or name breaks the rules; the message quotes the offending input."""


def _quote(text: str) -> str:
    """`repr` of the input, shortened when it is very long (e.g. a 1 MB subject)."""
    if len(text) <= _QUOTE_LIMIT:
        return repr(text)
    return f"{text[:_QUOTE_LIMIT]!r}... ({len(text)} chars)"


def _describe_char(ch: str) -> str:
    return f"{ch!r} (U+{ord(ch):04X})"


def _forbidden_char(text: str) -> tuple[int, str] | None:
    """(index, description) of the first whitespace/control/format/surrogate character, if any."""
    if text.isascii():
        found = _ASCII_FORBIDDEN.search(text)
        if found is None:
            return None
        index = found.start()
        ch = text[index]
        return index, ("whitespace " if ch.isspace() else "control character ") + _describe_char(ch)
    for index, ch in enumerate(text):
        if ch.isspace():
            return index, "whitespace " + _describe_char(ch)
        what = _FORBIDDEN_CATEGORIES.get(unicodedata.category(ch))
        if what is not None:
            return index, f"{what} {_describe_char(ch)}"
    return None


def _check(text: str, what: str, *, wildcards: bool) -> list[str]:
    """Validate `text` as a subject (`wildcards=False`) or pattern; return its tokens."""
    if not isinstance(text, str):
        raise SubjectError(f"{what} must be a string, got {type(text).__name__} {text!r}")
    if not text:
        raise SubjectError(f"{what} must not be empty")
    if len(text) > MAX_SUBJECT_LENGTH:
        raise SubjectError(
            f"{what} {_quote(text)} is {len(text)} characters long; "
            f"at most {MAX_SUBJECT_LENGTH} characters are allowed"
        )
    bad = _forbidden_char(text)
    if bad is not None:
        index, description = bad
        raise SubjectError(f"{what} {_quote(text)} contains {description} at index {index}")
    tokens = text.split(_SEP)
    last = len(tokens) - 1
    if "" in tokens:
        position = tokens.index("")
        where = "leading" if position == 0 else "trailing" if position == last else "double"
        raise SubjectError(
            f"{what} {_quote(text)} has an empty token ({where} '.'); tokens are separated by single dots"
        )
    for position, token in enumerate(tokens):
        if token in _WILDCARDS:
            if not wildcards:
                raise SubjectError(
                    f"{what} {_quote(text)} contains wildcard token {token!r}; "
                    "publish subjects may not contain wildcards"
                )
            if token == _TAIL and position != last:
                raise SubjectError(
                    f"{what} {_quote(text)} has '>' as token {position + 1} of {len(tokens)}; "
                    "'>' may only be the last token"
                )
    return tokens


def validate_subject(subject: str) -> None:
    """Raise SubjectError unless `subject` is a concrete (wildcard-free) publish subject."""
    _check(subject, "subject", wildcards=False)


def validate_pattern(pattern: str) -> None:
    """Raise SubjectError unless `pattern` is a valid filter (`*` anywhere, `>` only last)."""
    _check(pattern, "subject pattern", wildcards=True)


def is_literal(pattern: str) -> bool:
    """True when `pattern` has no wildcard token (so it matches exactly one subject)."""
    return not any(token in _WILDCARDS for token in pattern.split(_SEP))


def _match_tokens(pattern_tokens: list[str] | tuple[str, ...], subject_tokens: list[str]) -> bool:
    count = len(pattern_tokens)
    if pattern_tokens[-1] == _TAIL:
        # `>` takes the remaining tokens and needs at least one of them.
        if len(subject_tokens) < count:
            return False
        count -= 1
    elif len(subject_tokens) != count:
        return False
    for index in range(count):
        token = pattern_tokens[index]
        if token != _ONE and token != subject_tokens[index]:
            return False
    return True


def matches(pattern: str, subject: str) -> bool:
    """NATS matching of a validated pattern against a validated subject."""
    if pattern == subject:
        return True
    return _match_tokens(pattern.split(_SEP), subject.split(_SEP))


class SubjectFilter:
    """A set of patterns; a subject is accepted when any pattern matches it.

    An empty filter accepts every subject. Literal patterns are looked up in a set and wildcard
    patterns are pre-split, so `accepts` does one set lookup plus one split of the subject.
    """

    __slots__ = ("_literals", "_wildcards", "patterns")

    patterns: tuple[str, ...]

    def __init__(self, patterns: Iterable[str] = ()) -> None:
        if isinstance(patterns, str):
            raise TypeError("SubjectFilter takes a list of patterns, not a single string")
        unique = tuple(dict.fromkeys(patterns))
        literals: set[str] = set()
        wildcards: list[tuple[str, ...]] = []
        for pattern in unique:
            tokens = _check(pattern, "subject pattern", wildcards=True)
            if any(token in _WILDCARDS for token in tokens):
                wildcards.append(tuple(tokens))
            else:
                literals.add(pattern)
        self.patterns = unique
        self._literals = frozenset(literals)
        self._wildcards = tuple(wildcards)

    def accepts(self, subject: str) -> bool:
        if not self.patterns or subject in self._literals:
            return True
        if not self._wildcards:
            return False
        tokens = subject.split(_SEP)
        return any(_match_tokens(pattern, tokens) for pattern in self._wildcards)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SubjectFilter):
            return NotImplemented
        return self.patterns == other.patterns

    def __hash__(self) -> int:
        return hash(self.patterns)

    def __repr__(self) -> str:
        return f"SubjectFilter({list(self.patterns)!r})"


def literal_prefix(pattern: str) -> str:
    """The part of `pattern` before its first wildcard token, for a prefix range scan.

    `orders.*.eu` -> `orders.`, `orders.>` -> `orders.`, `a.b` -> `a.b`, `*` -> ``. Every subject
    matched by `pattern` starts with this string.
    """
    tokens = pattern.split(_SEP)
    for index, token in enumerate(tokens):
        if token in _WILDCARDS:
            return "".join(t + _SEP for t in tokens[:index])
    return pattern


def _name_problem(name: str) -> str | None:
    if not name:
        return "must not be empty"
    if len(name) > MAX_NAME_LENGTH:
        return f"is {len(name)} characters long; at most {MAX_NAME_LENGTH} are allowed"
    if _NAME_OK.fullmatch(name):
        return None
    for index, ch in enumerate(name):
        if _NAME_OK.fullmatch(ch):
            continue
        at = f"{_describe_char(ch)} at index {index}"
        if ch == ".":
            reason = f"contains {at}; '.' separates subject tokens"
        elif ch in _WILDCARDS:
            reason = f"contains {at}; '*' and '>' are subject wildcards"
        elif ch in "/\\":
            reason = f"contains {at}; names become file names, so path separators are not allowed"
        elif ch.isspace():
            reason = f"contains whitespace {at}"
        elif unicodedata.category(ch) == "Cc":
            reason = f"contains control character {at}"
        elif not ch.isascii():
            reason = f"contains non-ASCII character {at}"
        else:
            reason = f"contains {at}"
        return reason + "; only ASCII letters, digits, '_', '-' and ':' are allowed"
    return None  # unreachable: the full match failed, so some character is not allowed


def validate_name(kind: str, name: str) -> None:
    """Raise SubjectError unless `name` is a valid name for a `kind` (stream, consumer, ...)."""
    if not isinstance(name, str):
        raise SubjectError(f"invalid {kind} name {name!r}: must be a string, got {type(name).__name__}")
    problem = _name_problem(name)
    if problem is not None:
        raise SubjectError(f"invalid {kind} name {_quote(name)}: {problem}")


_WILDCARD_REF = re.compile(r"^(?:\{\{\s*wildcard\s*\(\s*(\d+)\s*\)\s*\}\}|\$(\d+))$")


class SubjectTransform:
    """A NATS subject mapping from `source_pattern` to `destination`.

    Destination tokens are literals, `{{wildcard(n)}}` (legacy `$n`: the subject token that
    matched the n-th `*` of the source, counting from 1) or a final `>` (the tokens the source's
    `>` matched). Other NATS mapping functions (partition, split, slice, random) are rejected.
    `apply` returns None for a subject the source pattern does not match.
    """

    __slots__ = ("_dest", "_source", "destination", "source_pattern")

    def __init__(self, source_pattern: str, destination: str) -> None:
        source = _check(source_pattern or _TAIL, "transform source pattern", wildcards=True)
        stars = sum(token == _ONE for token in source)
        tokens = _check(destination, "transform destination", wildcards=True)
        compiled: list[str | int] = []
        for index, token in enumerate(tokens):
            ref = _WILDCARD_REF.match(token)
            if ref:
                n = int(ref.group(1) or ref.group(2))
                if not 1 <= n <= stars:
                    raise SubjectError(
                        f"transform destination {_quote(destination)}: wildcard({n}) refers to a '*' "
                        f"the source pattern {_quote(source_pattern)} does not have ({stars} of them)"
                    )
                compiled.append(n)
            elif token == _TAIL:
                if index != len(tokens) - 1 or source[-1] != _TAIL:
                    raise SubjectError(
                        f"transform destination {_quote(destination)}: '>' must be its last token and "
                        "the source pattern must end with '>'"
                    )
                compiled.append(0)  # 0: the tokens matched by the source's '>'
            elif token == _ONE or "{{" in token or "$" in token:
                raise SubjectError(
                    f"transform destination {_quote(destination)}: unsupported token {_quote(token)}; "
                    "use literals, {{wildcard(n)}} / $n, or a final '>'"
                )
            else:
                compiled.append(token)
        self.source_pattern = source_pattern or _TAIL
        self.destination = destination
        self._source = tuple(source)
        self._dest = tuple(compiled)

    def apply(self, subject: str) -> str | None:
        tokens = subject.split(_SEP)
        if not _match_tokens(self._source, tokens):
            return None
        stars = [tokens[i] for i, token in enumerate(self._source) if token == _ONE]
        tail = tokens[len(self._source) - 1 :] if self._source[-1] == _TAIL else []
        out: list[str] = []
        for token in self._dest:
            if isinstance(token, str):
                out.append(token)
            elif token == 0:
                out.extend(tail)
            else:
                out.append(stars[token - 1])
        return _SEP.join(out)
