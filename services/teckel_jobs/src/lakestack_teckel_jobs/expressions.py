"""Teckel expressions (the SQL-ish strings of ``Column``, ``Expression`` and ``Condition``) as
Polars expressions.

Polars' own SQL expression parser (``pl.sql_expr``) does the heavy lifting: operators, ``CASE``,
``CAST``, ``LIKE``/``RLIKE``, ``<=>``, ``IN``, ``BETWEEN``, typed literals, ``COUNT(*)``, aliases
with ``AS`` and most functions. What it cannot know is handled here, on a small token stream so
that string literals and quoted identifiers are never touched:

* qualified column references ``<asset>.<column>``: rewritten to the column that carries the
  asset's column in the frame at hand (after a join it may have been renamed);
* naming: an unaliased expression that is not a plain column is named by its text, as Spark
  does (Polars would name ``upper(name)`` "name", colliding with the column itself);
* top-level splitting (``AND`` conjuncts, call arguments) that respects parentheses, ``CASE ...
  END`` and ``BETWEEN x AND y``;
* Spark/SQL type names (``castColumns``, ``schemaEnforce``, ``parse``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from lakestack_teckel_jobs.spec_errors import StepFailed

# ---- tokens -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Token:
    kind: str  # "word" (bare identifier or keyword), "quoted" (`x` or "x"), "string" ('x'), "space", "op"
    text: str  # as written
    value: str = ""  # identifier without its quotes

    @property
    def is_name(self) -> bool:
        return self.kind in ("word", "quoted")

    def keyword(self) -> str:
        return self.text.upper() if self.kind == "word" else ""


_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NUMBER = re.compile(r"\d+(?:\.\d*)?(?:[eE][+-]?\d+)?")
_OPERATORS = ("<=>", "==", "!=", "<>", "<=", ">=", "||", "->", "=>")


def tokenize(text: str, extra_names: Sequence[str] = ()) -> list[Token]:
    """Split ``text`` into tokens. ``extra_names`` are identifiers that may contain ``-`` (asset
    names such as ``raw-orders``), recognised when followed by ``.``."""
    tokens: list[Token] = []
    dashed = sorted((n for n in extra_names if "-" in n), key=len, reverse=True)
    i = 0
    while i < len(text):
        char = text[i]
        if char.isspace():
            j = i
            while j < len(text) and text[j].isspace():
                j += 1
            tokens.append(Token("space", text[i:j]))
            i = j
        elif char == "'":
            j = i + 1
            while j < len(text):
                if text[j] == "'" and text[j + 1 : j + 2] == "'":
                    j += 2
                elif text[j] == "'":
                    break
                else:
                    j += 1
            tokens.append(Token("string", text[i : j + 1]))
            i = j + 1
        elif char in '`"':
            j = text.find(char, i + 1)
            while j != -1 and text[j + 1 : j + 2] == char:  # doubled quote inside
                j = text.find(char, j + 2)
            end = len(text) if j == -1 else j + 1
            tokens.append(Token("quoted", text[i:end], text[i + 1 : end - 1].replace(char * 2, char)))
            i = end
        else:
            name = next(
                (n for n in dashed if text.startswith(n + ".", i) and not _is_word_char(text, i - 1)), None
            )
            word = _WORD.match(text, i)
            number = _NUMBER.match(text, i)
            if name is not None:
                tokens.append(Token("word", name, name))
                i += len(name)
            elif word:
                tokens.append(Token("word", word.group(), word.group()))
                i = word.end()
            elif number:
                tokens.append(Token("op", number.group()))
                i = number.end()
            else:
                op = next((o for o in _OPERATORS if text.startswith(o, i)), char)
                tokens.append(Token("op", op))
                i += len(op)
    return tokens


def _is_word_char(text: str, index: int) -> bool:
    return index >= 0 and (text[index].isalnum() or text[index] in "_.")


def _render(tokens: Sequence[Token]) -> str:
    return "".join(token.text for token in tokens)


def quote(name: str) -> str:
    """``name`` as a backtick-quoted identifier."""
    return "`" + name.replace("`", "``") + "`"


def _solid(tokens: Sequence[Token]) -> list[Token]:
    return [token for token in tokens if token.kind != "space"]


def split_top_level(text: str, separator: str) -> list[str]:
    """Split at top-level ``,`` (``separator=","``) or ``AND`` (``separator="AND"``): not inside
    parentheses or ``CASE ... END``, and not the ``AND`` of ``BETWEEN x AND y``."""
    parts: list[list[Token]] = [[]]
    depth = 0
    pending_between = 0
    for token in tokenize(text):
        word = token.keyword()
        if token.text == "(" or word == "CASE":
            depth += 1
        elif token.text == ")" or (word == "END" and depth > 0):
            depth -= 1
        elif depth == 0 and word == "BETWEEN":
            pending_between += 1
        elif depth == 0 and separator == "AND" and word == "AND" and pending_between:
            pending_between -= 1
        elif depth == 0 and (token.text == separator if separator == "," else word == separator):
            parts.append([])
            continue
        parts[-1].append(token)
    return [_render(part).strip() for part in parts]


def split_alias(text: str) -> tuple[str, str | None]:
    """``"upper(name) AS n"`` -> ``("upper(name)", "n")``; no top-level alias -> ``(text, None)``."""
    tokens = _solid(tokenize(text))
    if len(tokens) >= 3 and tokens[-2].keyword() == "AS" and tokens[-1].is_name:
        depth = 0
        for token in tokens[:-2]:
            depth += (token.text == "(") - (token.text == ")")
        if depth == 0:
            body = text[: text.rstrip().rfind(tokens[-1].text)]
            body = body.rstrip()
            return body[: len(body) - 2].rstrip(), tokens[-1].value
    return text.strip(), None


def parse_call(text: str) -> tuple[str, list[str]] | None:
    """``"lag(salary, 2)"`` -> ``("lag", ["salary", "2"])``; ``None`` unless the whole text is one
    function call."""
    tokens = _solid(tokenize(text))
    if len(tokens) < 3 or tokens[0].kind != "word" or tokens[1].text != "(" or tokens[-1].text != ")":
        return None
    depth = 0
    for index, token in enumerate(tokens[1:], 1):
        depth += (token.text == "(") - (token.text == ")")
        if depth == 0 and index != len(tokens) - 1:
            return None  # e.g. "sum(a) + sum(b)": the first call closes before the end
    inner = text[text.index("(") + 1 : text.rstrip().rfind(")")]
    arguments = [] if not inner.strip() else split_top_level(inner, ",")
    return tokens[0].text.lower(), arguments


# ---- scope and parsing --------------------------------------------------------------------------


@dataclass(frozen=True)
class Scope:
    """What an expression sees. ``qualifiers`` maps an asset name usable as ``<asset>.<col>`` to
    ``{column: column in this frame}``, or to ``None`` when its columns keep their names."""

    asset: str = ""  # the asset being built, for messages
    qualifiers: Mapping[str, Mapping[str, str] | None] = field(default_factory=dict)


def resolve_qualified(text: str, scope: Scope) -> str:
    """Rewrite ``<asset>.<column>`` references to the (quoted) column that holds them."""
    if not scope.qualifiers:
        return text
    tokens = tokenize(text, list(scope.qualifiers))
    out: list[Token] = []
    i = 0
    while i < len(tokens):
        token = tokens[i]
        previous = out[-1].text if out else ""
        if (
            token.is_name
            and token.value in scope.qualifiers
            and previous != "."
            and i + 2 < len(tokens)
            and tokens[i + 1].text == "."
            and tokens[i + 2].is_name
        ):
            mapping = scope.qualifiers[token.value]
            column = tokens[i + 2].value
            if mapping is not None:
                if column not in mapping:
                    raise StepFailed(
                        "E-COL-001",
                        f'column "{column}" of "{token.value}" referenced as "{token.value}.{column}" '
                        f'does not exist in asset "{scope.asset}"',
                    )
                column = mapping[column]
            out.append(Token("quoted", quote(column), column))
            i += 3
            continue
        out.append(token)
        i += 1
    return _render(out)


def invalid(text: str, scope: Scope, reason: str) -> StepFailed:
    reason = first_paragraph(reason)
    return StepFailed("E-EXPR-001", f'invalid expression "{text}" in asset "{scope.asset}": {reason}')


def first_paragraph(message: str) -> str:
    """Polars messages carry a resolved plan and hints after a blank line; keep the statement."""
    return message.strip().split("\n\n", 1)[0].strip()


def sql(text: str, scope: Scope) -> pl.Expr:
    """``pl.sql_expr`` of ``text`` after resolving qualified names; parse errors -> E-EXPR-001."""
    if not isinstance(text, str) or not text.strip():
        raise invalid(str(text), scope, "empty expression")
    resolved = resolve_qualified(text, scope)
    try:
        return pl.sql_expr(resolved)
    except (pl.exceptions.PolarsError, ValueError, TypeError) as exc:
        raise invalid(text, scope, str(exc)) from exc


def parse_expr(text: str, scope: Scope) -> pl.Expr:
    """An expression with its output name: the alias if given, the column's name for a plain
    column, else the expression's text (as Spark names unaliased expressions)."""
    if not isinstance(text, str):
        text = str(text)
    star = _star(text, scope)
    if star is not None:
        return star
    body, alias = split_alias(text)
    expr = sql(text, scope)
    if alias is not None or expr.meta.is_column():
        return expr
    return expr.alias(body)


def _star(text: str, scope: Scope) -> pl.Expr | None:
    """``*`` or ``<asset>.*``: every column (of a single-input step)."""
    tokens = _solid(tokenize(text, list(scope.qualifiers)))
    if [t.text for t in tokens] == ["*"]:
        return pl.all()
    if (
        len(tokens) == 3
        and tokens[0].value in scope.qualifiers
        and [t.text for t in tokens[1:]] == [".", "*"]
    ):
        mapping = scope.qualifiers[tokens[0].value]
        return pl.all() if mapping is None else pl.col(list(mapping.values()))
    return None


def parse_value(text: str, scope: Scope) -> pl.Expr:
    """An expression whose name does not matter (a branch value, a function argument)."""
    return sql(text, scope)


def parse_condition(
    text: str, scope: Scope, frame: pl.LazyFrame | None = None, *, what: str = "condition"
) -> pl.Expr:
    """A ``Condition``; with ``frame``, checked to be boolean over it (spec 8.2: E-EXPR-001)."""
    expr = sql(text, scope)
    if frame is not None:
        dtype = frame.select(expr.alias("c")).collect_schema()["c"]
        if dtype not in (pl.Boolean, pl.Null):
            raise StepFailed(
                "E-EXPR-001",
                f'{what} "{text}" in asset "{scope.asset}" must be a boolean expression, is {dtype}',
            )
    return expr


def parse_aggregate(text: str, scope: Scope, frame: pl.LazyFrame, keys: Sequence[pl.Expr]) -> pl.Expr:
    """An ``agg`` entry, checked to aggregate over ``frame`` grouped by ``keys``. Polars gives a
    non-aggregating expression one list per group, which is how it is recognised. One over
    grouping columns only takes the group's value (SQL allows ``SELECT dept ... GROUP BY dept``);
    any other -> E-AGG-001 (spec 8.3)."""
    expr = parse_expr(text, scope)
    probe = "__teckel_probe"
    group_keys = list(keys) or [pl.lit(0).alias("__teckel_all")]
    grouped = frame.group_by(group_keys).agg(expr.alias(probe)).collect_schema()[probe]
    single = frame.select(expr.alias(probe)).collect_schema()[probe]
    if grouped == single or grouped != pl.List(single):
        return expr
    key_names = {key.meta.output_name() for key in keys}
    roots = expr.meta.root_names()
    if roots and set(roots) <= key_names:
        return expr.first()
    by = ", ".join(sorted(key_names)) or "nothing"
    raise StepFailed(
        "E-AGG-001",
        f'"{text}" in asset "{scope.asset}" is not an aggregate expression '
        f'and is not in the "by" list ({by})',
    )


def parse_column(text: str, scope: Scope) -> pl.Expr:
    """A ``Column`` field: a name (quoted or not, possibly qualified) or an expression."""
    return parse_expr(text, scope)


@dataclass(frozen=True)
class SortKey:
    expr: pl.Expr
    descending: bool
    nulls_last: bool


def parse_sort(item: Any, scope: Scope) -> SortKey:
    """A SortColumn: ``"salary"``, ``"salary desc nulls first"`` or ``{column, direction, nulls}``.
    Teckel's default is nulls last for both directions (spec 8.4)."""
    if isinstance(item, Mapping):
        column = item.get("column")
        direction = str(item.get("direction") or "asc").lower()
        nulls = str(item.get("nulls") or "last").lower()
        if not isinstance(column, str) or not column.strip():
            raise StepFailed("E-REQ-001", f'a sort column of asset "{scope.asset}" has no "column"')
    else:
        column, direction, nulls = _sort_words(str(item))
    if direction not in ("asc", "desc"):
        raise StepFailed("E-ENUM-001", f'invalid direction "{direction}", expected: asc|desc')
    if nulls not in ("first", "last"):
        raise StepFailed("E-ENUM-001", f'invalid nulls "{nulls}", expected: first|last')
    return SortKey(parse_expr(column, scope), direction == "desc", nulls == "last")


def _sort_words(text: str) -> tuple[str, str, str]:
    tokens = tokenize(text)
    solid = _solid(tokens)
    words = [t.keyword() for t in solid]
    direction, nulls = "asc", "last"
    if len(words) >= 3 and words[-2] == "NULLS" and words[-1] in ("FIRST", "LAST"):
        nulls = words[-1].lower()
        solid, words = solid[:-2], words[:-2]
    if len(words) >= 2 and words[-1] in ("ASC", "DESC"):
        direction = words[-1].lower()
        solid = solid[:-1]
    if len(solid) == len(_solid(tokens)):
        return text.strip(), direction, nulls
    end = text.rfind(solid[-1].text) + len(solid[-1].text)
    return text[:end].strip(), direction, nulls


# ---- types ---------------------------------------------------------------------------------------

_SIMPLE_TYPES: dict[str, pl.DataType] = {
    "string": pl.String(),
    "str": pl.String(),
    "text": pl.String(),
    "varchar": pl.String(),
    "char": pl.String(),
    "tinyint": pl.Int8(),
    "byte": pl.Int8(),
    "smallint": pl.Int16(),
    "short": pl.Int16(),
    "int": pl.Int32(),
    "integer": pl.Int32(),
    "bigint": pl.Int64(),
    "long": pl.Int64(),
    "float": pl.Float32(),
    "real": pl.Float32(),
    "double": pl.Float64(),
    "boolean": pl.Boolean(),
    "bool": pl.Boolean(),
    "date": pl.Date(),
    # Naive (UTC) like Polars SQL's TIMESTAMP literals and current_timestamp(), so casted
    # columns compare with them; a time zone would make every such comparison an error.
    "timestamp": pl.Datetime("us"),
    "timestamp_ltz": pl.Datetime("us"),
    "timestamp_ntz": pl.Datetime("us"),
    "time": pl.Time(),
    "binary": pl.Binary(),
    "decimal": pl.Decimal(10, 0),  # Spark's default precision and scale
    "numeric": pl.Decimal(10, 0),
}


def parse_type(text: str) -> pl.DataType:
    """A Spark/SQL type name (case-insensitive): ``int``, ``decimal(10,2)``, ``array<string>``,
    ``struct<a: int, b: string>``, ``map<string, int>`` (a list of key/value structs, as Polars
    has no map type). Unknown -> E-TYPE-001."""
    parser = _TypeParser(str(text))
    dtype = parser.parse()
    if parser.rest():
        raise parser.error()
    return dtype


class _TypeParser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def error(self) -> StepFailed:
        return StepFailed("E-TYPE-001", f'unknown data type "{self.text}"')

    def rest(self) -> str:
        return self.text[self.pos :].strip()

    def _skip(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def _word(self) -> str:
        self._skip()
        match = re.compile(r"[A-Za-z_][A-Za-z0-9_]*").match(self.text, self.pos)
        if not match:
            raise self.error()
        self.pos = match.end()
        return match.group()

    def _accept(self, char: str) -> bool:
        self._skip()
        if self.text.startswith(char, self.pos):
            self.pos += len(char)
            return True
        return False

    def _expect(self, char: str) -> None:
        if not self._accept(char):
            raise self.error()

    def _int(self) -> int:
        self._skip()
        match = re.compile(r"\d+").match(self.text, self.pos)
        if not match:
            raise self.error()
        self.pos = match.end()
        return int(match.group())

    def parse(self) -> pl.DataType:
        word = self._word().lower()
        if word in ("array", "list"):
            self._expect("<")
            inner = self.parse()
            self._expect(">")
            return pl.List(inner)
        if word == "map":
            self._expect("<")
            key = self.parse()
            self._expect(",")
            value = self.parse()
            self._expect(">")
            return pl.List(pl.Struct({"key": key, "value": value}))
        if word == "struct":
            self._expect("<")
            fields: dict[str, pl.DataType] = {}
            while True:
                self._skip()
                if self._accept("`"):
                    end = self.text.index("`", self.pos)
                    name = self.text[self.pos : end]
                    self.pos = end + 1
                else:
                    name = self._word()
                self._expect(":")
                fields[name] = self.parse()
                if not self._accept(","):
                    break
            self._expect(">")
            return pl.Struct(fields)
        if word in ("decimal", "numeric", "dec") and self._accept("("):
            precision = self._int()
            scale = self._int() if self._accept(",") else 0
            self._expect(")")
            return pl.Decimal(precision, scale)
        if word in ("varchar", "char", "time", "timestamp") and self._accept("("):
            self._int()  # length or precision: Polars strings are unbounded, times are ns
            self._expect(")")
        if word == "interval":
            # "interval day to second" and friends: all durations in Polars
            units = ("year", "month", "day", "hour", "minute", "second", "to")
            while self.rest() and self.rest().split()[0].lower() in units:
                self._word()
            return pl.Duration("us")
        dtype = _SIMPLE_TYPES.get(word)
        if dtype is None:
            raise self.error()
        return dtype


_TRUE = ("true", "t", "yes", "y", "1")
_FALSE = ("false", "f", "no", "n", "0")


def cast(expr: pl.Expr, source: pl.DataType, target: pl.DataType) -> pl.Expr:
    """Spark's lenient cast: a value that cannot be converted becomes null (spec 8.14). Strings
    to booleans and temporals are parsed, since Polars' ``cast`` does not parse strings."""
    if source == target:
        return expr
    if source == pl.String:
        if target == pl.Boolean:
            lowered = expr.str.strip_chars().str.to_lowercase()
            return (
                pl.when(lowered.is_in(_TRUE))
                .then(pl.lit(True))
                .when(lowered.is_in(_FALSE))
                .then(pl.lit(False))
                .otherwise(pl.lit(None, pl.Boolean))
            )
        if target == pl.Date:
            stripped = expr.str.strip_chars()
            return pl.coalesce(
                stripped.str.to_date(strict=False), stripped.str.to_datetime(strict=False).dt.date()
            )
        if isinstance(target, pl.Datetime):
            parsed = expr.str.strip_chars().str.to_datetime(strict=False, time_unit=target.time_unit)
            if target.time_zone:
                return parsed.dt.replace_time_zone(target.time_zone, ambiguous="null", non_existent="null")
            return parsed
        if target == pl.Time:
            return expr.str.strip_chars().str.to_time(strict=False)
        if isinstance(target, (pl.List, pl.Struct)):
            return expr.str.json_decode(target)
    if isinstance(source, pl.Datetime) and isinstance(target, pl.Datetime):
        if source.time_zone and not target.time_zone:
            return expr.dt.convert_time_zone("UTC").dt.replace_time_zone(None).cast(target, strict=False)
        if target.time_zone and not source.time_zone:
            return expr.dt.replace_time_zone(target.time_zone).cast(target, strict=False)
    return expr.cast(target, strict=False)
