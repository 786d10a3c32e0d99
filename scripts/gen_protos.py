"""Regenerate (or check) the Python code for every contract under protos/.

The .proto files keep their real import paths (``com/rawlabs/...``, ``waymaker/streams/...``)
so they stay byte-compatible with the public contracts; the generated modules are moved under
the ``lakestack_protos`` package and their imports rewritten, so nothing we ship claims a
top-level name such as ``com`` or ``core`` on PyPI.

    python scripts/gen_protos.py            # regenerate libs/protos/src/lakestack_protos
    python scripts/gen_protos.py --check    # exit 1 if the committed code is stale
"""

from __future__ import annotations

import argparse
import filecmp
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTO_ROOT = ROOT / "protos"
PACKAGE = "lakestack_protos"
TARGET = ROOT / "libs" / "protos" / "src" / PACKAGE
# Files in TARGET that are hand-written, not generated.
KEEP = {"__init__.py", "py.typed"}


def proto_files() -> list[Path]:
    return sorted(p.relative_to(PROTO_ROOT) for p in PROTO_ROOT.rglob("*.proto"))


def top_level_packages() -> list[str]:
    return sorted({p.parts[0] for p in proto_files() if len(p.parts) > 1})


def run_protoc(out: Path) -> None:
    scripts_dir = Path(sysconfig.get_path("scripts"))
    mypy_plugin = shutil.which("protoc-gen-mypy") or str(scripts_dir / "protoc-gen-mypy")
    mypy_grpc_plugin = shutil.which("protoc-gen-mypy_grpc") or str(scripts_dir / "protoc-gen-mypy_grpc")
    cmd = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"--plugin=protoc-gen-mypy={mypy_plugin}",
        f"--plugin=protoc-gen-mypy_grpc={mypy_grpc_plugin}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_out={out}",
        f"--mypy_grpc_out={out}",
        *[str(p) for p in proto_files()],
    ]
    subprocess.run(cmd, check=True, cwd=PROTO_ROOT)


def rewrite_imports(out: Path) -> None:
    tops = "|".join(re.escape(t) for t in top_level_packages())
    from_import = re.compile(rf"^(\s*)from ((?:{tops})(?:\.\w+)*) import ", re.MULTILINE)
    dotted = re.compile(rf"(?<![\w.])((?:{tops})(?:\.\w+)*\.\w+_pb2(?:_grpc)?)\b")
    for path in out.rglob("*.py*"):
        text = path.read_text()
        text = from_import.sub(rf"\1from {PACKAGE}.\2 import ", text)
        text = dotted.sub(rf"{PACKAGE}.\1", text)
        path.write_text(text)


def add_package_markers(out: Path) -> None:
    for directory in [out, *(d for d in out.rglob("*") if d.is_dir())]:
        init = directory / "__init__.py"
        if directory != out and not init.exists():
            init.write_text("")


def generate(out: Path) -> None:
    run_protoc(out)
    rewrite_imports(out)
    add_package_markers(out)
    for name in KEEP:
        if (TARGET / name).exists():
            shutil.copy2(TARGET / name, out / name)


def differences(a: Path, b: Path) -> list[str]:
    files_a = {p.relative_to(a) for p in a.rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    files_b = {p.relative_to(b) for p in b.rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    diffs = [f"missing: {p}" for p in sorted(files_a - files_b)]
    diffs += [f"extra: {p}" for p in sorted(files_b - files_a)]
    diffs += [
        f"stale: {p}" for p in sorted(files_a & files_b) if not filecmp.cmp(a / p, b / p, shallow=False)
    ]
    return diffs


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--check", action="store_true", help="fail if the generated code is stale")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / PACKAGE
        out.mkdir()
        generate(out)
        if args.check:
            diffs = differences(out, TARGET)
            for line in diffs:
                print(f"gen_protos: {line}", file=sys.stderr)
            if diffs:
                print("gen_protos: generated code is stale; run `make protos` and commit.", file=sys.stderr)
                return 1
            print(f"gen_protos: {len(proto_files())} contracts up to date")
            return 0
        for child in TARGET.iterdir():
            if child.name not in KEEP:
                shutil.rmtree(child) if child.is_dir() else child.unlink()
        for child in out.iterdir():
            if child.name not in KEEP:
                shutil.move(str(child), TARGET / child.name)
    print(f"gen_protos: generated {len(proto_files())} contracts into {TARGET.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
