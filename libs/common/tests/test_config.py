from pathlib import Path
from typing import ClassVar

import pytest
from pydantic import ValidationError

from lakestack_common.config import CONFIG_FILE_ENV, ServiceSettings
from lakestack_common.topology import ServiceInfo

DEMO = ServiceInfo("demo_svc", 50999)


class DemoSettings(ServiceSettings):
    service: ClassVar[ServiceInfo] = DEMO
    batch_size: int = 100


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CONFIG_FILE_ENV, raising=False)
    for key in list(__import__("os").environ):
        if key.startswith("LAKESTACK_DEMO_SVC_"):
            monkeypatch.delenv(key)


def test_defaults_come_from_the_service() -> None:
    s = DemoSettings()
    assert s.port == 50999
    assert s.data_dir == Path("data/demo_svc")
    assert s.host == "0.0.0.0"
    assert not s.auth_enabled and not s.tls_enabled


def test_env_vars_use_the_service_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAKESTACK_DEMO_SVC_PORT", "6001")
    monkeypatch.setenv("LAKESTACK_DEMO_SVC_BATCH_SIZE", "7")
    monkeypatch.setenv("LAKESTACK_DEMO_SVC_AUTH_TOKENS", '{"t1": ["*"], "t2": ["/a.B/Get*"]}')
    s = DemoSettings()
    assert (s.port, s.batch_size) == (6001, 7)
    assert s.auth_tokens == {"t1": ["*"], "t2": ["/a.B/Get*"]}


def test_toml_table_and_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "lakestack.toml"
    config.write_text('[demo_svc]\nport = 7000\nbatch_size = 5\ndata_dir = "/srv/demo"\n[other]\nport = 1\n')
    monkeypatch.setenv(CONFIG_FILE_ENV, str(config))
    s = DemoSettings()
    assert (s.port, s.batch_size, s.data_dir) == (7000, 5, Path("/srv/demo"))
    monkeypatch.setenv("LAKESTACK_DEMO_SVC_PORT", "7001")  # env beats the file
    assert DemoSettings().port == 7001
    assert DemoSettings(port=7002).port == 7002  # explicit beats env


def test_port_zero_means_any_free_port() -> None:
    assert DemoSettings(port=0).port == 0


def test_token_list_shorthand_grants_everything() -> None:
    assert DemoSettings(auth_tokens=["a", "b"]).auth_tokens == {"a": ["*"], "b": ["*"]}


def test_invalid_values_are_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAKESTACK_DEMO_SVC_PORT", "not-a-port")
    with pytest.raises(ValidationError):
        DemoSettings()
    monkeypatch.delenv("LAKESTACK_DEMO_SVC_PORT")
    with pytest.raises(ValidationError):
        DemoSettings(log_format="xml")


def test_free_ports_are_distinct() -> None:
    from lakestack_common.topology import free_ports

    for _ in range(20):
        ports = free_ports(6)
        assert len(set(ports)) == 6
