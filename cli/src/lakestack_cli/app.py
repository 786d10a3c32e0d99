"""`lakestack up | status | down`: the whole stack as local processes, for laptops and tests;
`lakestack streams | lakehouse | jobs | das | vector | events ...`: each service by hand."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from lakestack_cli.commands import das, events, jobs, lakehouse, streams, vector
from lakestack_cli.stack import (
    NATS,
    Member,
    StackState,
    Supervisor,
    member_status,
    pid_alive,
    plan,
    stop_recorded,
)
from lakestack_common import topology

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
console = Console(highlight=False)
COLORS = {
    "nats": "magenta",
    "lakehouse": "cyan",
    "teckel_jobs": "green",
    "das": "yellow",
    "vector_core": "blue",
    "streams": "red",
}

app.add_typer(streams.app, name="streams")
app.add_typer(lakehouse.app, name="lakehouse")
app.add_typer(jobs.app, name="jobs")
app.add_typer(das.app, name="das")
app.add_typer(vector.app, name="vector")
app.add_typer(events.app, name="events")

DataDir = Annotated[Path, typer.Option("--data-dir", "-d", help="where every service keeps its data")]


def _endpoint_table(members: list[Member], statuses: dict[str, str]) -> Table:
    table = Table(title="Lakestack")
    for column in ("service", "endpoint", "health", "pid"):
        table.add_column(column)
    for m in members:
        status = statuses.get(m.name, "?")
        style = "green" if status == "SERVING" else "red"
        scheme = "nats" if m.is_nats else "grpc"
        table.add_row(m.name, f"{scheme}://{m.address}", f"[{style}]{status}[/{style}]", str(m.pid or ""))
    return table


def _print_line(name: str, line: str) -> None:
    color = COLORS.get(name, "white")
    console.print(f"[{color}]{name:>11}[/{color}] | ", end="")
    console.out(line, highlight=False)


async def _up(members: list[Member], data_dir: Path, log_format: str, follow: bool, wait_s: float) -> int:
    supervisor = Supervisor(members, data_dir, log_format=log_format, on_line=_print_line if follow else None)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await supervisor.start()
    with console.status("starting the stack...") as spinner:

        def progress(member: Member, status: str) -> None:
            spinner.update(f"{member.name} is {status}")

        waiting = asyncio.create_task(supervisor.wait_serving(wait_s, progress))
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({waiting, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if not waiting.done():  # Ctrl-C / SIGTERM while starting: the user's choice, not a failure
        waiting.cancel()
        console.print("stopping...")
        await supervisor.stop()
        console.print("stopped")
        return 0
    if waiting.exception() is not None:
        console.print(f"[red]lakestack up failed:[/red] {waiting.exception()}")
        await supervisor.stop()
        return 1
    stopping.cancel()
    console.print(_endpoint_table(members, {m.name: "SERVING" for m in members}))
    console.print("[bold]all services SERVING[/bold]; Ctrl-C (or `lakestack down`) stops the stack")
    exited = asyncio.create_task(supervisor.wait_any_exit())
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({exited, stopping}, return_when=asyncio.FIRST_COMPLETED)
    code = 0
    if exited.done():
        console.print(f"[red]{exited.result()} exited; stopping the stack[/red]")
        code = 1
    stopping.cancel()
    exited.cancel()
    console.print("stopping...")
    await supervisor.stop()
    console.print("stopped")
    return code


def _detach(argv: list[str], data_dir: Path, timeout: float) -> int:
    """Run the supervisor in its own session, logging to a file; return once the stack serves."""
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir / "lakestack-up.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "lakestack_cli", *argv],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    async def wait_until_serving() -> tuple[StackState, dict[str, str]] | None:
        # One event loop for every probe: grpc.aio binds to the first loop that uses it.
        deadline = time.monotonic() + timeout + 10
        while time.monotonic() < deadline and process.poll() is None:
            state = StackState.load(data_dir)
            if state is not None:
                statuses = await _probe(state.members)
                if all(v == "SERVING" for v in statuses.values()):
                    return state, statuses
            await asyncio.sleep(0.3)
        return None

    with console.status("starting the stack in the background..."):
        serving = asyncio.run(wait_until_serving())
    if serving is not None:
        state, statuses = serving
        console.print(_endpoint_table(state.members, statuses))
        console.print(f"running in the background (logs in {data_dir / 'logs'}); `lakestack down` stops it")
        return 0
    if process.poll() is not None:
        console.print(f"[red]lakestack up failed[/red] (exit {process.returncode}); see {log_path}")
    else:
        console.print(f"[red]not serving after {timeout:.0f}s[/red]; see {log_path}")
        stop_recorded(data_dir)
    return 1


async def _probe(members: list[Member]) -> dict[str, str]:
    results = await asyncio.gather(*(member_status(m) for m in members))
    return {m.name: r for m, r in zip(members, results, strict=True)}


@app.command()
def up(
    data_dir: DataDir = Path("data"),
    only: Annotated[list[str] | None, typer.Option("--only", help="start only these services")] = None,
    nats: Annotated[bool, typer.Option(help="also start nats-server (JetStream)")] = True,
    free_ports: Annotated[
        bool, typer.Option("--free-ports", help="pick free ports instead of the defaults")
    ] = False,
    nats_port: Annotated[int, typer.Option(help="nats-server port")] = topology.NATS_PORT,
    log_format: Annotated[str, typer.Option(help="text or json")] = "text",
    detach: Annotated[
        bool, typer.Option("--detach", help="return once SERVING; logs go to <data>/logs")
    ] = False,
    follow: Annotated[bool, typer.Option(help="stream the services' logs here", hidden=True)] = True,
    timeout: Annotated[float, typer.Option(help="seconds to wait for SERVING")] = 120.0,
) -> None:
    """Start nats-server and the five services, wait until all are SERVING, then stream their logs."""
    known = {s.name for s in topology.SERVICES}
    unknown = set(only or ()) - known
    if unknown:
        raise typer.BadParameter(f"unknown service(s) {sorted(unknown)}; choose from {sorted(known)}")
    data_dir = data_dir.resolve()
    existing = StackState.load(data_dir)
    if existing is not None and (
        pid_alive(existing.supervisor_pid) or any(pid_alive(m.pid) for m in existing.members)
    ):
        console.print(f"[red]a stack is already running from {data_dir}[/red]; run `lakestack down` first")
        raise typer.Exit(1)
    if detach:
        argv = [
            "up",
            "--data-dir",
            str(data_dir),
            "--no-follow",
            "--log-format",
            log_format,
            "--nats-port",
            str(nats_port),
            "--timeout",
            str(timeout),
        ]
        argv += ["--nats" if nats else "--no-nats"] + (["--free-ports"] if free_ports else [])
        for name in only or ():
            argv += ["--only", name]
        raise typer.Exit(_detach(argv, data_dir, timeout))
    members = plan(only, nats, free_ports, nats_port)
    raise typer.Exit(asyncio.run(_up(members, data_dir, log_format, follow, timeout)))


@app.command()
def status(data_dir: DataDir = Path("data")) -> None:
    """Health of each service (grpc.health.v1) of the stack started from DATA_DIR, or the defaults."""
    state = StackState.load(data_dir.resolve())
    members = (
        state.members
        if state
        else [Member(NATS, topology.NATS_PORT)] + [Member(s.name, s.port) for s in topology.SERVICES]
    )

    statuses = asyncio.run(_probe(members))
    console.print(_endpoint_table(members, statuses))
    raise typer.Exit(0 if all(s == "SERVING" for s in statuses.values()) else 1)


@app.command()
def down(data_dir: DataDir = Path("data")) -> None:
    """Stop the stack started from DATA_DIR (in another shell or with --detach)."""
    rows = stop_recorded(data_dir.resolve())
    if not rows:
        console.print("no running stack recorded in", data_dir)
        return
    table = Table(title="stopped")
    table.add_column("process")
    table.add_column("outcome")
    for name, outcome in rows:
        table.add_row(name, outcome)
    console.print(table)


def main() -> None:
    app()
