"""Run the foundation benchmarks and record them in bench/RESULTS.md.

    make bench                                              # everything, full counts
    .tools/bin/uv run --frozen python bench/run.py --quick  # smoke run, small counts (~1.5 min)
    .tools/bin/uv run --frozen python bench/run.py --only rpc

Every ``bench/bench_<name>.py`` is a benchmark module (see ``benchlib``), run in ``ORDER``.
Results print as a table and, for full runs, replace the module's block of RESULTS.md: a
subsection of the foundation section (``<!-- bench:foundation:NAME:... -->``), or, for a module
that sets ``SECTION`` (and ``SECTION_HEADING``), its own top-level ``<!-- bench:SECTION:... -->``
section; everything outside the markers is left alone.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import importlib.metadata
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

from benchlib import Report  # noqa: E402

RESULTS = BENCH_DIR / "RESULTS.md"
SECTION = "foundation"
RESULTS_HEADER = """# Benchmark results

Each section below is written by the script it names, between its `<!-- bench:...:start -->` and
`<!-- bench:...:end -->` markers; a run replaces only its own section. Write anything else outside
the markers.
"""


# ---------------------------------------------------------------------------------------------
# Modules


def discover() -> dict[str, ModuleType]:
    found = [importlib.import_module(path.stem) for path in sorted(BENCH_DIR.glob("bench_*.py"))]
    found = [m for m in found if hasattr(m, "run") and hasattr(m, "NAME")]
    found.sort(key=lambda m: (getattr(m, "ORDER", 100), m.NAME))
    return {m.NAME: m for m in found}


# ---------------------------------------------------------------------------------------------
# Machine facts


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _ram() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    return "unknown"


def _nproc() -> str:
    try:
        out = subprocess.run(["nproc"], capture_output=True, text=True, timeout=5, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        out = str(len(os.sched_getaffinity(0)))
    return out


def _cpu_quota() -> str | None:
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
    except (OSError, ValueError):
        return None
    return None if quota == "max" else f"cgroup quota {int(quota) / int(period):g} CPUs"


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _git_head() -> str:
    try:  # read-only
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=BENCH_DIR,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def cpu_times() -> list[int] | None:
    """The aggregate ``cpu`` line of /proc/stat (user nice system idle iowait irq softirq steal ...)."""
    try:
        line = Path("/proc/stat").read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return None
    return [int(x) for x in line[1:9]] if line and line[0] == "cpu" else None


def load_during(before: list[int] | None, after: list[int] | None) -> str:
    """Busy and steal share of the machine's CPU time between two ``cpu_times()`` readings."""
    if before is None or after is None:
        return "unknown"
    delta = [b - a for a, b in zip(before, after, strict=True)]
    total = sum(delta)
    if total <= 0:
        return "unknown"
    idle = delta[3] + delta[4]
    return f"CPU busy {100 * (total - idle) / total:.0f}%, steal {100 * delta[7] / total:.1f}%"


def machine_facts() -> list[tuple[str, str]]:
    try:
        from google.protobuf.internal import api_implementation

        protobuf_impl = api_implementation.Type()
    except Exception:
        protobuf_impl = "?"
    cpus = _nproc()
    quota = _cpu_quota()
    return [
        ("CPU", _cpu_model()),
        ("nproc", cpus + (f" ({quota})" if quota else "")),
        ("RAM", _ram()),
        ("OS", f"{platform.system()} {platform.release()} {platform.machine()}"),
        ("Python", platform.python_version()),
        ("grpcio", _version("grpcio")),
        ("protobuf", f"{_version('protobuf')} ({protobuf_impl})"),
        ("numpy", _version("numpy")),
        ("lz4", _version("lz4")),
        ("commit", _git_head()),
    ]


# ---------------------------------------------------------------------------------------------
# Output


def _escape(cell: str) -> str:
    return cell.replace("|", "\\|")


def markdown_table(columns: list[str], rows: list[list[str]]) -> str:
    lines = [
        "| " + " | ".join(_escape(c) for c in columns) + " |",
        "|" + "|".join("---" if i < 2 else "---:" for i in range(len(columns))) + "|",
    ]
    lines += ["| " + " | ".join(_escape(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def section_key(module: ModuleType) -> str:
    """The RESULTS.md block a module writes: its own section if it names one, else a foundation
    subsection."""
    own = getattr(module, "SECTION", None)
    return str(own) if own else f"{SECTION}:{module.NAME}"


def report_markdown(
    report: Report, facts: list[tuple[str, str]], when: str, elapsed_s: float, load: str
) -> str:
    parts = [
        f"### {report.title} (`--only {report.name}`)",
        "",
        f"Measured {when} in {elapsed_s:.0f} s ({load} over the run). Machine: "
        + "; ".join(f"{k} {v}" for k, v in facts)
        + ". Its cores are shared with other work (see busy/steal): "
        "judge differences against the noise figures in the notes.",
        "",
        f"Parameters: {report.parameters}",
    ]
    for table in report.tables:
        parts += ["", f"**{table.title}**", "", markdown_table(table.columns, table.rows)]
    if report.notes:
        parts += ["", *(f"- {note}" for note in report.notes)]
    return "\n".join(parts)


def print_report(report: Report, facts: list[tuple[str, str]]) -> None:
    try:
        from rich import box
        from rich.console import Console
        from rich.table import Table as RichTable
    except ImportError:
        print(f"\n== {report.title} ==\n{report.parameters}")
        for table in report.tables:
            print(f"\n{table.title}")
            widths = [max(len(str(x)) for x in col) for col in zip(table.columns, *table.rows, strict=True)]
            for row in [table.columns, *table.rows]:
                print(
                    "  ".join(
                        str(c).rjust(w) if i > 1 else str(c).ljust(w)
                        for i, (c, w) in enumerate(zip(row, widths, strict=True))
                    )
                )
        for note in report.notes:
            print(f"- {note}")
        return
    console = Console(width=max(120, Console().width))
    console.rule(f"[bold]{report.title}")
    console.print(report.parameters, style="dim")
    for table in report.tables:
        rich_table = RichTable(title=table.title, box=box.SIMPLE_HEAVY, title_justify="left")
        for i, column in enumerate(table.columns):
            rich_table.add_column(column, justify="left" if i < 2 else "right")
        for row in table.rows:
            rich_table.add_row(*row)
        console.print(rich_table)
    for note in report.notes:
        console.print(f"- {note}", style="dim")


# ---------------------------------------------------------------------------------------------
# RESULTS.md


def _markers(key: str) -> tuple[str, str]:
    return f"<!-- bench:{key}:start -->", f"<!-- bench:{key}:end -->"


def _replace_block(text: str, key: str, body: str) -> str | None:
    start, end = _markers(key)
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
    if not pattern.search(text):
        return None
    return pattern.sub(lambda _: f"{start}\n{body}\n{end}", text, count=1)


def _foundation_skeleton(names: list[str]) -> str:
    start, end = _markers(SECTION)
    blocks = []
    for name in names:
        s, e = _markers(f"{SECTION}:{name}")
        blocks.append(f"{s}\n_`{name}` not run yet._\n{e}")
    intro = (
        "## Foundation: gRPC bootstrap and NdArray codec\n\n"
        "Written by `bench/run.py` (`make bench`); see bench/README.md for what is measured and how "
        "to read it. Each benchmark's subsection is replaced when it runs."
    )
    return "\n".join([start, intro, "", "\n\n".join(blocks), end])


def update_results(path: Path, sections: dict[str, str], foundation_names: list[str]) -> None:
    """``sections`` maps a block key (see ``section_key``) to its new body."""
    text = path.read_text() if path.exists() else RESULTS_HEADER
    if _markers(SECTION)[0] not in text:
        text = text.rstrip("\n") + "\n\n" + _foundation_skeleton(foundation_names) + "\n"
    for key, body in sections.items():
        updated = _replace_block(text, key, body)
        if updated is None:
            s, e = _markers(key)
            if key.startswith(f"{SECTION}:"):  # a new foundation benchmark: at the end of that section
                end = _markers(SECTION)[1]
                updated = text.replace(end, f"\n{s}\n{body}\n{e}\n{end}", 1)
            else:  # a new section of its own: at the end of the file
                updated = text.rstrip("\n") + f"\n\n{s}\n{body}\n{e}\n"
        text = updated
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(text)
    tmp.replace(path)


# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    modules = discover()
    parser = argparse.ArgumentParser(description="Lakestack foundation benchmarks")
    parser.add_argument("--quick", action="store_true", help="small counts, a smoke run (~1.5 min)")
    parser.add_argument(
        "--only", action="append", choices=sorted(modules), metavar="NAME", help=f"one of {sorted(modules)}"
    )
    write = parser.add_mutually_exclusive_group()
    write.add_argument("--write", action="store_true", help="update RESULTS.md even with --quick")
    write.add_argument("--no-write", action="store_true", help="do not touch RESULTS.md")
    args = parser.parse_args(argv)

    selected = args.only or list(modules)
    facts = machine_facts()
    print("machine: " + "; ".join(f"{k} {v}" for k, v in facts), file=sys.stderr)
    sections: dict[str, str] = {}
    for name in selected:
        module = modules[name]
        print(f"--- {module.TITLE} ({'quick' if args.quick else 'full'})", file=sys.stderr)
        started, cpu_before = time.monotonic(), cpu_times()
        report: Report = module.run(args.quick, lambda msg: print(f"  {msg}", file=sys.stderr, flush=True))
        elapsed = time.monotonic() - started
        load = load_during(cpu_before, cpu_times())
        print(f"  {name}: {elapsed:.0f} s, {load}", file=sys.stderr)
        when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
        if args.quick:
            when += " (--quick: small counts, smoke run only)"
        print_report(report, facts)
        body = report_markdown(report, facts, when, elapsed, load)
        heading = getattr(module, "SECTION_HEADING", None)
        if getattr(module, "SECTION", None) and heading:
            body = f"{heading}\n\nWritten by `bench/run.py --only {name}`; see bench/README.md.\n\n{body}"
        sections[section_key(module)] = body

    if args.no_write or (args.quick and not args.write):
        print("\nRESULTS.md not updated (--quick/--no-write).", file=sys.stderr)
    else:
        foundation = [n for n, m in modules.items() if section_key(m).startswith(f"{SECTION}:")]
        update_results(RESULTS, sections, foundation)
        print(f"\nupdated {RESULTS.relative_to(BENCH_DIR.parent)} ({', '.join(sections)})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
