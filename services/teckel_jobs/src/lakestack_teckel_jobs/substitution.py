"""Text-level resolution of a Teckel document before it is parsed (spec §12 and §13).

* Variables: ``${NAME}`` and ``${NAME:default}``, resolved from the request's variables, then
  the environment, then the default; ``$$`` is a literal ``$`` (so ``$${X}`` stays ``${X}``).
  One pass over the raw text, no nesting.
* Secrets: ``{{secrets.alias}}``, resolved from ``TECKEL_SECRET__<ALIAS>`` (upper case, ``-`` as
  ``_``), after variables, as the reference implementation does.

Unlike the reference, which stops at the first unresolved name, every unresolved variable and
secret is reported (``E-VAR-001`` / ``E-SECRET-001``) with its line and column.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

from lakestack_teckel_jobs.spec_errors import PipelineInvalid, SpecError, location_of

VARIABLE = re.compile(r"\$\$|\$\{([^}:]+)(?::([^}]*))?\}")
SECRET = re.compile(r"\{\{secrets\.([a-zA-Z][a-zA-Z0-9_-]*)\}\}")
SECRET_ENV_PREFIX = "TECKEL_SECRET__"


def secret_env_name(alias: str) -> str:
    return SECRET_ENV_PREFIX + alias.upper().replace("-", "_")


def _substitute(
    text: str, pattern: re.Pattern[str], value_of: Callable[[re.Match[str]], str | SpecError]
) -> str:
    """Replace every match of ``pattern`` by ``value_of(match)``; a SpecError (its location filled
    in) is collected instead, and all of them are raised together."""
    errors: list[SpecError] = []

    def replace(match: re.Match[str]) -> str:
        value = value_of(match)
        if isinstance(value, SpecError):
            errors.append(SpecError(value.code, value.message, location_of(text, match.start())))
            return match.group(0)
        return value

    resolved = pattern.sub(replace, text)
    if errors:
        raise PipelineInvalid(errors)
    return resolved


def substitute_variables(text: str, variables: Mapping[str, str], environ: Mapping[str, str]) -> str:
    def value_of(match: re.Match[str]) -> str | SpecError:
        if match.group(0) == "$$":
            return "$"
        name, default = match.group(1), match.group(2)
        for source in (variables, environ):
            if name in source:
                return source[name]
        if default is not None:
            return default
        return SpecError("E-VAR-001", f'unresolved variable "{name}" with no default')

    return _substitute(text, VARIABLE, value_of)


def resolve_secrets(text: str, environ: Mapping[str, str]) -> str:
    def value_of(match: re.Match[str]) -> str | SpecError:
        alias = match.group(1)
        value = environ.get(secret_env_name(alias))
        if value is None:
            return SpecError(
                "E-SECRET-001", f'unresolved secret "{alias}" (set {secret_env_name(alias)} on the server)'
            )
        return value

    return _substitute(text, SECRET, value_of)


def resolve_text(text: str, variables: Mapping[str, str], environ: Mapping[str, str]) -> str:
    """Variables, then secrets; raises :class:`PipelineInvalid` listing every unresolved name."""
    errors: list[SpecError] = []
    try:
        text = substitute_variables(text, variables, environ)
    except PipelineInvalid as exc:
        errors += exc.errors
    try:
        text = resolve_secrets(text, environ)
    except PipelineInvalid as exc:
        errors += exc.errors
    if errors:
        raise PipelineInvalid(errors)
    return text
