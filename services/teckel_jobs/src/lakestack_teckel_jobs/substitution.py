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
from collections.abc import Mapping

from lakestack_teckel_jobs.spec_errors import PipelineInvalid, SpecError, location_of

VARIABLE = re.compile(r"\$\$|\$\{([^}:]+)(?::([^}]*))?\}")
SECRET = re.compile(r"\{\{secrets\.([a-zA-Z][a-zA-Z0-9_-]*)\}\}")
SECRET_ENV_PREFIX = "TECKEL_SECRET__"


def secret_env_name(alias: str) -> str:
    return SECRET_ENV_PREFIX + alias.upper().replace("-", "_")


def substitute_variables(text: str, variables: Mapping[str, str], environ: Mapping[str, str]) -> str:
    errors: list[SpecError] = []

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, default = match.group(1), match.group(2)
        if name in variables:
            return variables[name]
        if name in environ:
            return environ[name]
        if default is not None:
            return default
        errors.append(
            SpecError(
                "E-VAR-001",
                f'unresolved variable "{name}" with no default',
                location_of(text, match.start()),
            )
        )
        return match.group(0)

    resolved = VARIABLE.sub(replace, text)
    if errors:
        raise PipelineInvalid(errors)
    return resolved


def resolve_secrets(text: str, environ: Mapping[str, str]) -> str:
    errors: list[SpecError] = []

    def replace(match: re.Match[str]) -> str:
        alias = match.group(1)
        value = environ.get(secret_env_name(alias))
        if value is None:
            errors.append(
                SpecError(
                    "E-SECRET-001",
                    f'unresolved secret "{alias}" (set {secret_env_name(alias)} on the server)',
                    location_of(text, match.start()),
                )
            )
            return match.group(0)
        return value

    resolved = SECRET.sub(replace, text)
    if errors:
        raise PipelineInvalid(errors)
    return resolved


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
