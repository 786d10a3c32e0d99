"""The service subcommands (`lakestack streams|events|jobs|lakehouse|das|vector ...`) as a user
runs them: the real `lakestack` script in a subprocess against real services started in this
test's event loop (which keeps serving while the subprocess runs)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lakestack_cli.commands.das import Where, parse_where
from lakestack_common import topology
from lakestack_common.platform_events import streams_publisher
from lakestack_common.server import GrpcServer
from lakestack_common.testing import channel_to, running

LAKESTACK = str(Path(sys.executable).parent / "lakestack")
# Generous bounds so that a broken command fails the test instead of hanging it (not timing checks).
PROCESS_TIMEOUT_S = 120


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)

    def json_lines(self) -> list[Any]:
        return [json.loads(line) for line in self.stdout.splitlines() if line.strip()]


def environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAKESTACK_")}
    return {**env, "COLUMNS": "200", "NO_COLOR": "1", **extra}


async def lakestack(*args: str, stdin: bytes | None = None, env: dict[str, str] | None = None) -> Result:
    process = await asyncio.create_subprocess_exec(
        LAKESTACK,
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env or environment(),
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(stdin or b""), PROCESS_TIMEOUT_S)
    assert process.returncode is not None
    return Result(process.returncode, stdout.decode(), stderr.decode())


def address(server: GrpcServer) -> str:
    return f"127.0.0.1:{server.port}"


def ok(result: Result) -> Result:
    assert result.code == 0, f"exit {result.code}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    return result


# ---- streams and events ---------------------------------------------------------------------


@pytest.fixture
async def streams(tmp_path: Path) -> AsyncIterator[GrpcServer]:
    from lakestack_streams.app import StreamsService
    from lakestack_streams.settings import StreamsSettings

    async with running(StreamsService(StreamsSettings(data_dir=tmp_path / "streams"))) as server:
        yield server


async def test_streams_create_pub_sub_ls_info(streams: GrpcServer) -> None:
    a = address(streams)
    created = ok(await lakestack("streams", "create", "orders", "--subjects", "orders.>", "-a", a))
    assert "created stream orders" in created.stdout
    again = await lakestack("streams", "create", "orders", "-a", a)
    assert again.code == 1 and "already_exists" in again.stderr
    ok(await lakestack("streams", "create", "orders", "--exist-ok", "-a", a))

    first = ok(
        await lakestack("streams", "pub", "orders", "orders.a", '{"n": 1}', "-H", "k=v", "--json", "-a", a)
    )
    assert first.json() == {"stream": "orders", "subject": "orders.a", "seq": 1}
    # The group's options apply to its commands; - reads the payload from stdin.
    second = ok(
        await lakestack("streams", "--address", a, "--json", "pub", "orders", "orders.b", "-", stdin=b"two")
    )
    assert second.json()["seq"] == 2
    third = ok(await lakestack("streams", "pub", "orders", "orders.a", "three", "-a", a))
    assert "seq 3" in third.stdout
    rejected = await lakestack("streams", "pub", "orders", "payments.x", "p", "-a", a)
    assert rejected.code == 1 and "subject_rejected" in rejected.stderr

    messages = ok(await lakestack("streams", "sub", "orders", "--count", "3", "--json", "-a", a)).json_lines()
    assert [(m["seq"], m["subject"], m["payload"]) for m in messages] == [
        (1, "orders.a", '{"n": 1}'),
        (2, "orders.b", "two"),
        (3, "orders.a", "three"),
    ]
    assert messages[0]["headers"] == {"k": "v"}
    filtered = ok(
        await lakestack("streams", "sub", "orders", "--subject", "orders.a", "--no-follow", "-a", a)
    )
    lines = filtered.stdout.splitlines()
    assert len(lines) == 2 and "orders.a" in lines[0] and lines[1].endswith("three")
    from_two = ok(
        await lakestack("streams", "sub", "orders", "--from-seq", "2", "--no-follow", "--json", "-a", a)
    )
    assert [m["seq"] for m in from_two.json_lines()] == [2, 3]

    listed = ok(await lakestack("streams", "ls", "--json", "-a", a)).json()
    orders = next(s for s in listed if s["config"]["name"] == "orders")
    assert orders["stats"]["msg_count"] == 3 and orders["config"]["subjects_filter"] == ["orders.>"]
    table = ok(await lakestack("streams", "ls", "-a", a)).stdout
    assert "orders" in table and "orders.>" in table
    info = ok(await lakestack("streams", "info", "orders", "--json", "-a", a)).json()
    assert info["stats"]["last_seq"] == 3
    missing = await lakestack("streams", "info", "nope", "-a", a)
    assert missing.code == 1 and "no_such_stream" in missing.stderr and "Traceback" not in missing.stderr


async def test_streams_sub_prints_messages_as_they_arrive(streams: GrpcServer) -> None:
    a = address(streams)
    ok(await lakestack("streams", "create", "live", "-a", a))
    ok(await lakestack("streams", "pub", "live", "x.1", "before", "-a", a))
    process = await asyncio.create_subprocess_exec(
        LAKESTACK, "streams", "sub", "live", "--count", "2", "--json", "-a", a,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=environment(),
    )  # fmt: skip
    assert process.stdout is not None
    first = json.loads(await asyncio.wait_for(process.stdout.readline(), PROCESS_TIMEOUT_S))
    assert first["payload"] == "before"
    # The subscriber is live: a message published now reaches it, and --count 2 ends it.
    ok(await lakestack("streams", "pub", "live", "x.2", "after", "-a", a))
    second = json.loads(await asyncio.wait_for(process.stdout.readline(), PROCESS_TIMEOUT_S))
    assert (second["seq"], second["payload"]) == (2, "after")
    assert await asyncio.wait_for(process.wait(), PROCESS_TIMEOUT_S) == 0

    # Ctrl-C ends a following subscriber quietly (exit 130).
    follower = await asyncio.create_subprocess_exec(
        LAKESTACK, "streams", "sub", "live", "-a", a,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=environment(),
    )  # fmt: skip
    assert follower.stdout is not None and follower.stderr is not None
    for _ in range(2):
        await asyncio.wait_for(follower.stdout.readline(), PROCESS_TIMEOUT_S)
    follower.send_signal(signal.SIGINT)
    assert await asyncio.wait_for(follower.wait(), PROCESS_TIMEOUT_S) == 130
    assert "Traceback" not in (await follower.stderr.read()).decode()

    # Both temporary consumers are gone.
    from lakestack_common.clients import StreamsClient
    from lakestack_protos.waymaker.streams import waymaker_streams_pb2 as pb

    async with StreamsClient(channel_to(streams)) as client:
        consumers = await client.streams.ListConsumers(pb.ListConsumersRequest(stream="live"))
    assert list(consumers.consumers) == []


async def test_events_tail(streams: GrpcServer) -> None:
    a = address(streams)
    # Before any event: the tail creates the events stream and finds nothing.
    empty = ok(await lakestack("events", "tail", "--no-follow", "-a", a))
    assert empty.stdout.strip() == ""
    publisher = streams_publisher("lakehouse", a)
    await publisher.start()
    publisher.emit("table_created", table="db.events")
    publisher.emit("table_committed", table="db.events", snapshot_id=7, records=3, source="cli-test")
    await publisher.close(drain_s=30)
    assert publisher.published == 2

    events = ok(await lakestack("events", "tail", "--count", "2", "--json", "-a", a)).json_lines()
    assert [(e["service"], e["event"]) for e in events] == [
        ("lakehouse", "table_created"),
        ("lakehouse", "table_committed"),
    ]
    assert events[1]["data"] == {"table": "db.events", "snapshot_id": 7, "records": 3, "source": "cli-test"}
    assert events[1]["subject"] == "lakestack.events.lakehouse.table_committed" and events[1]["schema"] == 1
    rows = ok(await lakestack("events", "tail", "--count", "2", "-a", a)).stdout.splitlines()
    assert rows[0].split() == ["time", "service", "event", "data"]
    assert "lakehouse" in rows[2] and "table_committed" in rows[2] and "snapshot_id=7" in rows[2]
    only = ok(
        await lakestack(
            "events",
            "tail",
            "--subject",
            "lakestack.events.*.table_created",
            "--no-follow",
            "--json",
            "-a",
            a,
        )
    )
    assert [e["event"] for e in only.json_lines()] == ["table_created"]


# ---- teckel-jobs ----------------------------------------------------------------------------


@pytest.fixture
async def teckel(tmp_path: Path) -> AsyncIterator[GrpcServer]:
    from lakestack_teckel_jobs.app import TeckelJobsService
    from lakestack_teckel_jobs.settings import TeckelJobsSettings

    settings = TeckelJobsSettings(data_dir=tmp_path / "teckel", max_concurrency=1)
    async with running(TeckelJobsService(settings)) as server:
        yield server


def csv_pipeline(source: Path, target: Path) -> str:
    return f"""
version: "3.0"
input:
  - name: orders
    format: csv
    path: {source}
    options: {{header: true}}
transformation:
  - name: big
    where: {{from: orders, filter: "amount > 10"}}
output:
  - name: big
    format: csv
    path: {target}
    options: {{header: true}}
"""


async def test_jobs_submit_wait_ls_get(teckel: GrpcServer, tmp_path: Path) -> None:
    a = address(teckel)
    source = tmp_path / "orders.csv"
    source.write_text("id,amount\n1,5\n2,20\n3,40\n")
    document = tmp_path / "pipeline.yaml"
    document.write_text(csv_pipeline(source, tmp_path / "big.csv"))

    done = ok(await lakestack("jobs", "submit", str(document), "--wait", "--json", "-a", a)).json()
    assert done["status"] == "completed", done
    assert (tmp_path / "big.csv").read_text().splitlines() == ["id,amount", "2,20", "3,40"]

    listed = ok(await lakestack("jobs", "ls", "--json", "-a", a)).json()
    assert [j["id"] for j in listed] == [done["id"]]
    got = ok(await lakestack("jobs", "get", done["id"], "--json", "-a", a)).json()
    assert got["status"] == "completed" and got["duration_ms"] >= 0
    waited = ok(await lakestack("jobs", "wait", done["id"], "-a", a))
    assert "completed" in waited.stdout

    # Without --wait: the job id; then `jobs wait` follows it (mode=error: the output now exists).
    submitted = ok(await lakestack("jobs", "submit", str(document), "--json", "-a", a)).json()
    failed = await lakestack("jobs", "wait", submitted["job_id"], "-a", a)
    assert failed.code == 1
    assert f"job {submitted['job_id']} failed" in failed.stderr and "E-IO-002" in failed.stderr
    invalid = await lakestack("jobs", "submit", "-", "-a", a, stdin=b"version: '3.0'\n")
    assert invalid.code == 1 and "INVALID_ARGUMENT" in invalid.stderr


# ---- lakehouse ------------------------------------------------------------------------------


@pytest.fixture
async def lakehouse(tmp_path: Path) -> AsyncIterator[GrpcServer]:
    import pyarrow as pa
    from pyiceberg.catalog.sql import SqlCatalog

    from lakestack_lakehouse.app import LakehouseService
    from lakestack_lakehouse.settings import LakehouseSettings

    root = tmp_path / "lakehouse"
    root.mkdir()
    catalog = SqlCatalog(
        "lakestack", uri=f"sqlite:///{root / 'catalog.db'}", warehouse=f"file://{root / 'warehouse'}"
    )
    catalog.create_namespace("db")
    catalog.create_namespace("empty")
    rows = pa.table({"id": pa.array([1, 2, 3], pa.int64()), "name": ["a", "b", "c"]})
    events = catalog.create_table("db.events", schema=rows.schema)
    for _ in range(3):
        events.append(rows)
    async with running(LakehouseService(LakehouseSettings(data_dir=root))) as server:
        yield server


async def test_lakehouse_tables_health_compact_pipelines(lakehouse: GrpcServer) -> None:
    a = address(lakehouse)
    listed = ok(await lakestack("lakehouse", "tables", "--json", "-a", a)).json()
    assert "db.events" in listed["tables"] and {"db", "empty"} <= set(listed["namespaces"])
    shown = ok(await lakestack("lakehouse", "tables", "db", "-a", a)).stdout
    assert "events" in shown and "db.events" in shown

    health = ok(await lakestack("lakehouse", "health", "db.events", "--json", "-a", a)).json()
    assert health["data_file_count"] == 3 and health["total_records"] == 9
    assert "recommendation" in ok(await lakestack("lakehouse", "health", "db.events", "-a", a)).stdout

    compacted = ok(
        await lakestack(
            "lakehouse", "compact", "db.events", "--option", "min_input_files=2", "--json", "-a", a
        )
    ).json()
    assert compacted["operation"] == "compact" and isinstance(compacted["details"], dict)
    after = ok(await lakestack("lakehouse", "health", "db.events", "--json", "-a", a)).json()
    assert after["data_file_count"] == 1 and after["total_records"] == 9

    schema = ok(await lakestack("lakehouse", "schema", "db.events", "--json", "-a", a)).json()
    assert [c["name"] for c in schema["columns"]] == ["id", "name"]
    assert ok(await lakestack("lakehouse", "pipelines", "--json", "-a", a)).json() == []
    assert ok(await lakestack("lakehouse", "pipelines", "ls", "--json", "-a", a)).json() == []

    missing = await lakestack("lakehouse", "health", "db.nope", "-a", a)
    assert missing.code == 1 and "db.nope" in missing.stderr and "Traceback" not in missing.stderr
    bad = await lakestack("lakehouse", "compact", "db.events", "--strategy", "shuffle", "-a", a)
    assert bad.code == 2 and "binpack" in bad.stderr  # a usage error, before any call


async def test_lakehouse_pipeline_from_a_stream(streams: GrpcServer, tmp_path: Path) -> None:
    from lakestack_lakehouse.app import LakehouseService
    from lakestack_lakehouse.settings import LakehouseSettings

    s = address(streams)
    ok(await lakestack("streams", "create", "clicks", "--subjects", "clicks.>", "-a", s))
    for i in range(5):
        ok(
            await lakestack(
                "streams", "pub", "clicks", "clicks.web", json.dumps({"id": i, "page": f"p{i}"}), "-a", s
            )
        )
    settings = LakehouseSettings(data_dir=tmp_path / "lakehouse", streams_address=s)
    async with running(LakehouseService(settings)) as server:
        a = address(server)
        started = ok(
            await lakestack(
                "lakehouse", "pipelines", "start", "db.clicks", "--stream", "clicks", "--create-sink",
                "--start", "all", "--name", "clicks", "--json", "-a", a,
            )
        ).json()  # fmt: skip
        pipeline = started["pipeline_id"]
        assert started["sink"] == "db.clicks" and started["spec"]["source_stream"] == "clicks"
        for _ in range(600):  # until the first batch is committed
            status = ok(
                await lakestack("lakehouse", "pipelines", "status", pipeline, "--json", "-a", a)
            ).json()
            if status["rows_processed"] >= 5:
                break
            await asyncio.sleep(0.1)
        assert status["rows_processed"] == 5, status
        listed = ok(await lakestack("lakehouse", "pipelines", "-a", a)).stdout
        assert pipeline in listed and "running" in listed
        stopped = ok(await lakestack("lakehouse", "pipelines", "stop", pipeline, "--json", "-a", a)).json()
        assert stopped["status"] == "stopped" and stopped["rows_processed"] == 5
        health = ok(await lakestack("lakehouse", "health", "db.clicks", "--json", "-a", a)).json()
        assert health["total_records"] == 5


# ---- vector-core ----------------------------------------------------------------------------


@pytest.fixture
async def vector_core(tmp_path: Path) -> AsyncIterator[GrpcServer]:
    from lakestack_vector_core.app import VectorCoreService
    from lakestack_vector_core.settings import VectorCoreSettings

    async with running(
        VectorCoreService(VectorCoreSettings(data_dir=tmp_path / "vectors", max_top_k=50))
    ) as server:
        yield server


async def test_vector_search(vector_core: GrpcServer) -> None:
    from lakestack_vector_core.client import VectorClient

    a = address(vector_core)
    data = np.eye(4, dtype=np.float32) + 0.01
    async with VectorClient(channel_to(vector_core, timeout_s=None)) as client:
        await client.upsert(["north", "east", "south", "west"], data, namespace="compass", check=True)

    found = ok(
        await lakestack("vector", "search", "compass", "[0, 0, 1, 0]", "--top-k", "2", "--json", "-a", a)
    )
    matches = found.json()["matches"]
    assert matches[0]["id"] == "south" and len(matches) == 2
    assert matches[0]["score"] > matches[1]["score"]
    table = ok(await lakestack("vector", "search", "compass", "0.9,0.1,0,0", "-a", a)).stdout
    assert "north" in table and "1 " in table
    ok(await lakestack("vector", "upsert", "compass", "up", "-a", a, "--", "-1,-1,-1,-1"))
    info = ok(await lakestack("vector", "info", "compass", "--json", "-a", a)).json()
    assert info["vectors"] == 5

    too_many = await lakestack("vector", "search", "compass", "[0,0,1,0]", "--top-k", "500", "-a", a)
    assert too_many.code == 1 and too_many.stderr.startswith("vector-core: ")
    wrong_dim = await lakestack("vector", "search", "compass", "[1, 2]", "-a", a)
    assert wrong_dim.code == 1 and "dimension" in wrong_dim.stderr


# ---- das ------------------------------------------------------------------------------------


@pytest.fixture
async def das(tmp_path: Path) -> AsyncIterator[GrpcServer]:
    from lakestack_das.app import DasService
    from lakestack_das.settings import DasSettings

    async with running(DasService(DasSettings(data_dir=tmp_path / "das"))) as server:
        yield server


async def test_das_register_ls_query(das: GrpcServer, tmp_path: Path) -> None:
    a = address(das)
    database = tmp_path / "shop.db"
    with sqlite3.connect(database) as conn:
        conn.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, customer TEXT, amount REAL, placed TEXT)")
        conn.executemany(
            "INSERT INTO orders VALUES (?, ?, ?, ?)",
            [(i, f"c{i % 3}", i * 10.0, f"2024-01-{i:02d}") for i in range(1, 11)],
        )
    das_id = ok(
        await lakestack("das", "register", "sqlite", "-o", f"database={database}", "-a", a)
    ).stdout.strip()
    assert das_id

    tables = ok(await lakestack("das", "ls", das_id, "--json", "-a", a)).json()
    assert [t["table"] for t in tables] == ["orders"]
    assert [c["name"] for c in tables[0]["columns"]] == ["id", "customer", "amount", "placed"]

    rows = ok(
        await lakestack(
            "das", "query", das_id, "orders", "--where", "amount>=50", "--where", "customer like c%",
            "--columns", "id,amount", "--limit", "3", "--json", "-a", a,
        )
    ).json_lines()  # fmt: skip
    assert rows == [{"id": 5, "amount": 50.0}, {"id": 6, "amount": 60.0}, {"id": 7, "amount": 70.0}]
    text = ok(await lakestack("das", "query", das_id, "orders", "-w", "customer='c1'", "-a", a)).stdout
    assert "(4 rows)" in text and "2024-01-10" in text
    unknown = await lakestack("das", "query", "no-such-id", "orders", "-a", a)
    assert unknown.code == 1 and unknown.stderr.startswith("das: NOT_FOUND")


def test_where_parses_and_rechecks_like_sql() -> None:
    assert parse_where("amount >= 10") == Where("amount", parse_where("a>=1").op, 10, "10")
    assert parse_where("name like 'a%'").text == "a%"
    assert parse_where("code='007'").value == "007"
    keeps = parse_where("amount > 10").keeps
    assert keeps({"amount": 11}) and not keeps({"amount": 10}) and not keeps({"amount": None})
    assert keeps({"other": 1})  # not fetched: nothing to check here
    assert parse_where("deleted = null").keeps({"deleted": None})
    assert not parse_where("name ilike 'A_C'").keeps({"name": "abcd"})
    assert parse_where("name not like 'a%'").keeps({"name": "ba"})


# ---- errors ---------------------------------------------------------------------------------


async def test_a_service_that_is_down_is_one_line_and_exit_2() -> None:
    port = topology.free_port()
    down = await lakestack("streams", "ls", "--address", f"127.0.0.1:{port}")
    assert down.code == 2
    assert down.stderr.strip() == f"streams at 127.0.0.1:{port} is unreachable"
    assert down.stdout == ""
    # The default address comes from LAKESTACK_<SERVICE>_ADDRESS, as for the services.
    env = environment(LAKESTACK_TECKEL_JOBS_ADDRESS=f"127.0.0.1:{port}")
    jobs = await lakestack("jobs", "ls", "--json", env=env)
    assert (jobs.code, jobs.stderr.strip()) == (2, f"teckel-jobs at 127.0.0.1:{port} is unreachable")
    events = await lakestack("events", "tail", "--address", f"127.0.0.1:{port}")
    assert events.code == 2 and "Traceback" not in events.stderr
