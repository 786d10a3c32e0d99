"""Individual deployment: each service installs alone into an empty virtualenv from its own folder
(with the two shared libraries it depends on) and starts with no other service and no NATS.

The install is ``uv pip install ./libs/protos ./libs/common ./services/<name>`` into a new
``python -m venv``: the same thing as ``pip install`` of those folders (each one built into a wheel
by its own build backend, installed non-editable with the dependencies its pyproject declares),
with third-party versions pinned to uv.lock (``uv export``) so that a new upstream release cannot
change what is tested. It runs offline from the uv cache when the cache can answer, and goes to
the package index otherwise. (Plain pip works too, but takes minutes per service here.)
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from lakestack_common import topology
from lakestack_common.clients import check_health
from lakestack_common.topology import free_port

ROOT = Path(__file__).resolve().parents[1]
INSTALL_TIMEOUT_S = 600  # hang protection only
# Where each named module would be imported from in the venv (None: not installed).
PROBE = (
    "import importlib.util, json, sys; "
    "print(json.dumps({n: getattr(importlib.util.find_spec(n), 'origin', None) for n in sys.argv[1:]}))"
)

SERVICE_FOLDERS = {
    "lakehouse": "services/lakehouse",
    "teckel_jobs": "services/teckel_jobs",
    "das": "services/das",
    "vector_core": "services/vector_core",
    "streams": "services/streams",
}


def uv() -> str:
    found = ROOT / ".tools" / "bin" / "uv"
    path = str(found) if found.exists() else shutil.which("uv")
    if not path:
        pytest.fail("uv not found (.tools/bin/uv or PATH): run `make bootstrap`")
    return path


@pytest.fixture(scope="module")
def constraints(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every third-party package of uv.lock at its locked version."""
    out = tmp_path_factory.mktemp("lock") / "constraints.txt"
    exported = subprocess.run(
        [uv(), "export", "--frozen", "--no-hashes", "--no-emit-workspace", "--all-packages", "--no-dev",
         "--no-header", "--no-annotate", "--output-file", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert exported.returncode == 0, exported.stderr
    return out


def install(venv: Path, folders: list[str], constraints: Path) -> str:
    """Installs ``folders`` into ``venv``; answers how (offline or from the index)."""
    base = [
        uv(),
        "pip",
        "install",
        "--python",
        str(venv / "bin" / "python"),
        "--constraint",
        str(constraints),
    ]
    base += [str(ROOT / f) for f in folders]
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "UV_PROJECT_ENVIRONMENT")}
    attempts = [("offline, from the uv cache", ["--offline"]), ("from the package index", [])]
    errors = []
    for how, extra in attempts:
        done = subprocess.run(
            base + extra, cwd=venv.parent, env=env, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S
        )
        if done.returncode == 0:
            return how
        errors.append(f"{how}: {done.stderr[-3000:]}")
    pytest.fail("install failed:\n" + "\n".join(errors))


async def wait_serving(address: str, process: subprocess.Popen[bytes], timeout_s: float = 120.0) -> str:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    status = "UNREACHABLE"
    while loop.time() < deadline and process.poll() is None:
        status = await check_health(address, timeout_s=2.0)
        if status == "SERVING":
            return status
        await asyncio.sleep(0.3)
    return status if process.poll() is None else f"exited with {process.returncode}"


@pytest.mark.parametrize("service", [s.name for s in topology.SERVICES])
def test_service_installs_alone_into_an_empty_venv_and_serves(
    service: str, constraints: Path, tmp_path: Path
) -> None:
    info = next(s for s in topology.SERVICES if s.name == service)
    venv = tmp_path / "venv"
    made = subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], capture_output=True)
    assert made.returncode == 0, made.stderr
    how = install(venv, ["libs/protos", "libs/common", SERVICE_FOLDERS[service]], constraints)
    print(f"{service}: installed {how}")

    # Only this service's package is there, installed (not a link to the source tree).
    packages = [f"lakestack_{s.name}" for s in topology.SERVICES] + ["lakestack_cli"]
    found = subprocess.run(
        [str(venv / "bin" / "python"), "-c", PROBE, *packages], capture_output=True, text=True
    )
    assert found.returncode == 0, found.stderr
    origins = json.loads(found.stdout)
    assert (origins.pop(f"lakestack_{service}") or "").startswith(str(venv)), found.stdout
    assert set(origins.values()) == {None}, f"other Lakestack packages installed: {origins}"

    # Its console script starts alone: no other service, no NATS, nothing from the stack's env.
    port = free_port()
    prefix = f"LAKESTACK_{service.upper()}_"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LAKESTACK_", "VIRTUAL_ENV"))}
    env.update(
        {
            prefix + "HOST": "127.0.0.1",
            prefix + "PORT": str(port),
            prefix + "DATA_DIR": str(tmp_path / "data"),
        }
    )
    log = tmp_path / "service.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(venv / "bin" / info.script)], cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        status = asyncio.run(wait_serving(f"127.0.0.1:{port}", process))
        assert status == "SERVING", f"{service}: {status}\n{log.read_text(errors='replace')[-3000:]}"
        process.send_signal(signal.SIGTERM)
        code = process.wait(60)
        assert code == 0, (
            f"{service} exited with {code} on SIGTERM\n{log.read_text(errors='replace')[-3000:]}"
        )
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(30)
