"""Teckel specification errors: a code (``E-REF-001``), a message and where in the document.

Validation collects every error it can find instead of stopping at the first, and the whole list
travels in one :class:`PipelineInvalid` (INVALID_ARGUMENT on the wire). Each error renders as
``[E-REF-001] asset "x" references undefined asset "y" (did you mean "z"?) at line 12, column 9``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from lakestack_common.errors import InvalidArgument


@dataclass(frozen=True)
class Location:
    line: int  # 1-based
    column: int  # 1-based

    def __str__(self) -> str:
        return f"line {self.line}, column {self.column}"


@dataclass(frozen=True)
class SpecError:
    code: str
    message: str
    location: Location | None = None
    path: str = ""  # where in the document, e.g. "transformation[2].where.from"

    def __str__(self) -> str:
        where = [part for part in (self.path, str(self.location) if self.location else "") if part]
        suffix = f" ({'; '.join(where)})" if where else ""
        return f"[{self.code}] {self.message}{suffix}"


class PipelineInvalid(InvalidArgument):
    """A document that breaks the specification; carries every error found."""

    def __init__(self, errors: list[SpecError]) -> None:
        self.errors = list(errors)
        count = len(self.errors)
        lines = "\n".join(f"  {n}. {error}" for n, error in enumerate(self.errors, 1))
        super().__init__(f"Validation failed with {count} error(s):\n{lines}")


def location_of(text: str, offset: int) -> Location:
    """The 1-based line and column of character ``offset`` in ``text``."""
    line = text.count("\n", 0, offset) + 1
    column = offset - (text.rfind("\n", 0, offset) + 1) + 1
    return Location(line, column)


class StepFailed(InvalidArgument):
    """A step that cannot run on this data: a bad expression, a missing column, an unreadable
    input, an output that already exists. Renders as ``[E-EXPR-001] ...``, like the reference."""

    def __init__(self, code: str, message: str) -> None:
        self.spec_code = code  # ``code`` is the gRPC status every LakestackError carries
        super().__init__(f"[{code}] {message}")


def did_you_mean(word: str, candidates: Iterable[str], max_distance: int = 3) -> str:
    """`` (did you mean "x"?)`` for the closest candidate within ``max_distance`` edits, else ""."""
    best: tuple[int, str] | None = None
    for candidate in candidates:
        if candidate == word:
            continue
        distance = _edit_distance(word.lower(), candidate.lower())
        if distance <= max_distance and (best is None or distance < best[0]):
            best = (distance, candidate)
    return f' (did you mean "{best[1]}"?)' if best else ""


def _edit_distance(a: str, b: str) -> int:
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, 1):
        current = [i]
        for j, char_b in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char_a != char_b)))
        previous = current
    return previous[-1]
