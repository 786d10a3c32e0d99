"""Service settings: pydantic-settings with `LAKESTACK_<SERVICE>_*` environment variables and an
optional TOML file.

Precedence, highest first: explicit keyword arguments, environment variables, the TOML file,
defaults. The TOML file is named by ``LAKESTACK_CONFIG`` (or ``--config`` on a service's command
line); each service reads its own table, e.g. ``[lakehouse]`` or ``[teckel_jobs]``::

    [streams]
    port = 6000
    data_dir = "/var/lib/lakestack/streams"
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from lakestack_common.topology import ServiceInfo

CONFIG_FILE_ENV = "LAKESTACK_CONFIG"


class TomlTableSource(PydanticBaseSettingsSource):
    """Reads one table (the service's name) of the TOML file named by ``LAKESTACK_CONFIG``."""

    def __init__(self, settings_cls: type[BaseSettings], table: str) -> None:
        super().__init__(settings_cls)
        self._data = self._load(table)

    @staticmethod
    def _load(table: str) -> dict[str, Any]:
        path = os.environ.get(CONFIG_FILE_ENV)
        if not path:
            return {}
        with Path(path).open("rb") as fh:
            document = tomllib.load(fh)
        section = document.get(table, {})
        if not isinstance(section, dict):
            raise ValueError(f"{path}: [{table}] must be a table")
        return section

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return {k: v for k, v in self._data.items() if k in self.settings_cls.model_fields}


class ServiceSettings(BaseSettings):
    """Settings every service has. A subclass names its service (``service = topology.STREAMS``),
    which gives it the ``LAKESTACK_STREAMS_`` env prefix, the ``[streams]`` TOML table, its
    default port and ``./data/streams``."""

    service: ClassVar[ServiceInfo] = ServiceInfo("service", 0)

    model_config = SettingsConfigDict(extra="ignore", env_nested_delimiter="__")

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        # pydantic-settings reads the prefix from model_config when settings are built.
        cls.model_config = {**cls.model_config, "env_prefix": env_prefix(cls.service.name)}

    host: str = "0.0.0.0"
    # Defaults come from `service` (see _service_defaults); port 0 = any free port (tests).
    port: int = 0
    data_dir: Path = Path("data")
    log_level: str = "INFO"
    log_format: str = Field("text", pattern="^(text|json)$")

    # Seconds in-flight calls get to finish after SIGTERM before they are cancelled.
    grace_period_s: float = 10.0
    max_message_bytes: int = 64 * 1024 * 1024
    max_concurrent_rpcs: int | None = None

    # TLS: serve TLS when both cert and key are set; require client certs when client_ca is set.
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_client_ca_file: Path | None = None

    # Bearer-token auth: token -> list of allowed method patterns (fnmatch on the full method
    # path, e.g. "/teckel.v1.TeckelService/Get*" or "*"). Empty = auth disabled.
    auth_tokens: dict[str, list[str]] = Field(default_factory=dict)
    # Platform events (docs/events.md), published to the streams service at
    # LAKESTACK_STREAMS_ADDRESS when that is set; events_token if streams requires a token.
    events_enabled: bool = True
    events_buffer: int = Field(10_000, ge=1)
    events_token: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _service_defaults(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = {**data}
            data.setdefault("port", cls.service.port)
            data.setdefault("data_dir", Path("data") / cls.service.name)
        return data

    @field_validator("auth_tokens", mode="before")
    @classmethod
    def _tokens_from_list(cls, value: Any) -> Any:
        # Allow a plain list of tokens (full access) as a shorthand.
        if isinstance(value, list | tuple):
            return {str(token): ["*"] for token in value}
        return value

    @property
    def auth_enabled(self) -> bool:
        return bool(self.auth_tokens)

    @property
    def tls_enabled(self) -> bool:
        return self.tls_cert_file is not None and self.tls_key_file is not None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml = TomlTableSource(settings_cls, cls.service.name)
        return (init_settings, env_settings, toml, file_secret_settings)


def env_prefix(service_name: str) -> str:
    """``teckel_jobs`` -> ``LAKESTACK_TECKEL_JOBS_``."""
    return f"LAKESTACK_{service_name.upper()}_"
