"""`lakestack lakehouse ...`: tables, schemas, health, compaction and ingest pipelines."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Any

import typer

from lakestack_cli.commands.common import (
    UNARY_TIMEOUT_S,
    AddressOption,
    GroupOptions,
    JsonOption,
    Target,
    connect,
    emit_json,
    group,
    human_bytes,
    out,
    pairs,
    run,
    table,
    target,
    to_dict,
    with_parsed_json,
)
from lakestack_common.clients import LakehouseClient
from lakestack_common.topology import LAKEHOUSE
from lakestack_protos.lakehouse import lakehouse_pb2 as pb

app = group("Lakehouse: Iceberg tables, their health and compaction, and ingest pipelines.")
pipelines_app = typer.Typer(
    help="Ingest pipelines (streams or Iceberg tables -> Iceberg tables); no subcommand lists them.",
    invoke_without_command=True,
)
app.add_typer(pipelines_app, name="pipelines")

STRATEGIES = ("binpack", "sort", "zorder")
# Compaction rewrites data files: it may take much longer than a catalog call.
OPERATION_TIMEOUT_S = 3600.0


def _check(t: Target, success: bool, error: str) -> None:
    if not success:
        t.fail(error or "failed")


def _answer(message: Any) -> dict[str, Any]:
    document = with_parsed_json(to_dict(message))
    document.pop("success", None)
    return document


def _ms(value: int) -> str:
    return datetime.fromtimestamp(value / 1000).strftime("%Y-%m-%d %H:%M:%S") if value else ""


@app.command()
def tables(
    ctx: typer.Context,
    namespace: Annotated[str | None, typer.Argument(help="only this namespace (and its children)")] = None,
    json_output: JsonOption = False,
    address: AddressOption = None,
) -> None:
    """Namespaces and tables of the catalog."""
    t = target(ctx, LAKEHOUSE, address, json_output)

    async def work() -> None:
        async with connect(LakehouseClient, t) as client:
            request = pb.ListTablesRequest(namespace=namespace or "")
            reply = await client.catalog.ListTables(request, timeout=UNARY_TIMEOUT_S)
        _check(t, reply.success, reply.error)
        if t.json:
            emit_json({"namespaces": list(reply.namespaces), "tables": list(reply.tables)})
            return
        rows = []
        for name in reply.tables:
            ns, _, short = name.rpartition(".")
            rows.append((ns, short, name))
        listed = {ns for ns, _, _ in rows}
        rows += [(ns, "", "") for ns in reply.namespaces if ns not in listed]  # empty namespaces
        out.print(table("tables", ("namespace", "table", "name"), sorted(rows)))

    run(work())


@app.command()
def schema(
    ctx: typer.Context,
    table_name: Annotated[str, typer.Argument(metavar="TABLE", help="ns.table")],
    json_output: JsonOption = False,
    address: AddressOption = None,
) -> None:
    """A table's columns, partitioning and current snapshot."""
    t = target(ctx, LAKEHOUSE, address, json_output)

    async def work() -> None:
        async with connect(LakehouseClient, t) as client:
            request = pb.GetSchemaRequest(table_name=table_name)
            reply = await client.catalog.GetSchema(request, timeout=UNARY_TIMEOUT_S)
        _check(t, reply.success, reply.error)
        if t.json:
            emit_json(_answer(reply))
            return
        rows = [
            (
                c.field_id,
                c.name,
                c.type,
                "" if c.nullable else "yes",
                "yes" if c.identifier else "",
                c.comment,
            )
            for c in reply.columns
        ]
        out.print(table(reply.table, ("id", "column", "type", "not null", "key", "comment"), rows))
        partitions = ", ".join(f"{f.transform}({f.source_name})" for f in reply.partition_spec.fields)
        out.print(f"partitioned by: {partitions or '(none)'}", markup=False)
        if reply.HasField("current_snapshot_id"):
            out.print(f"current snapshot: {reply.current_snapshot_id}", markup=False)

    run(work())


@app.command()
def health(
    ctx: typer.Context,
    table_name: Annotated[str, typer.Argument(metavar="TABLE", help="ns.table")],
    json_output: JsonOption = False,
    address: AddressOption = None,
) -> None:
    """A table's health from its metadata: files, sizes, snapshots and what to do about them."""
    t = target(ctx, LAKEHOUSE, address, json_output)

    async def work() -> None:
        async with connect(LakehouseClient, t) as client:
            request = pb.GetTableHealthRequest(table_name=table_name)
            reply = await client.health.GetTableHealth(request, timeout=UNARY_TIMEOUT_S)
        _check(t, reply.success, reply.error)
        if t.json:
            emit_json(_answer(reply))
            return
        rows = [
            ("snapshots", reply.snapshot_count),
            ("data files", reply.data_file_count),
            ("small files", f"{reply.small_file_count} (< {human_bytes(reply.small_file_threshold_bytes)})"),
            ("delete files", reply.delete_file_count),
            ("manifests", reply.manifest_count),
            ("records", reply.total_records),
            ("total size", human_bytes(reply.total_size_bytes)),
            ("average file", human_bytes(reply.avg_file_size_bytes)),
            ("needs maintenance", "yes" if reply.needs_maintenance else "no"),
            ("recommendation", reply.recommendation),
        ]
        out.print(table(reply.table, ("", "value"), rows))
        if reply.issues:
            issues = [(i.severity, i.code, i.message) for i in reply.issues]
            out.print(table("issues", ("severity", "code", "message"), issues))

    run(work())


@app.command()
def compact(
    ctx: typer.Context,
    table_name: Annotated[str, typer.Argument(metavar="TABLE", help="ns.table")],
    strategy: Annotated[str, typer.Option(help="binpack, sort or zorder")] = "binpack",
    sort_order: Annotated[
        str | None,
        typer.Option(help="sort: 'id DESC NULLS LAST,name'; zorder: 'c1,c2'", show_default=False),
    ] = None,
    where: Annotated[
        str | None,
        typer.Option(help="only files that may match, e.g. \"ts >= '2024-01-01'\"", show_default=False),
    ] = None,
    option: Annotated[
        list[str] | None,
        typer.Option("--option", "-o", help="key=value, e.g. target_file_size_bytes=134217728"),
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="plan only, commit nothing")] = False,
    json_output: JsonOption = False,
    address: AddressOption = None,
) -> None:
    """Rewrite a table's small files into fewer, larger ones (one snapshot)."""
    t = target(ctx, LAKEHOUSE, address, json_output)
    if strategy not in STRATEGIES:
        raise typer.BadParameter(f"choose one of {', '.join(STRATEGIES)}", param_hint="--strategy")
    request = pb.CompactRequest(
        table=table_name,
        strategy=strategy,
        options=pairs(option),
        sort_order=sort_order,
        where=where,
        dry_run=dry_run,
    )

    async def work() -> None:
        async with connect(LakehouseClient, t) as client:
            reply = await client.operations.Compact(request, timeout=OPERATION_TIMEOUT_S)
        _check(t, reply.success, reply.error)
        document = _answer(reply)
        if t.json:
            emit_json(document)
            return
        details = document.get("details")
        rows: list[Sequence[Any]] = [("table", reply.table), ("strategy", strategy)]
        if isinstance(details, dict):
            rows += [
                (k, json.dumps(v, default=str) if isinstance(v, dict | list) else v)
                for k, v in details.items()
                if k not in ("table", "strategy")
            ]
        if reply.HasField("snapshot_id"):
            rows.append(("snapshot", reply.snapshot_id))
        rows.append(("took", f"{reply.duration_ms} ms"))
        out.print(table("compact (dry run)" if dry_run else "compacted", ("", "value"), rows))

    run(work())


# ---- pipelines ------------------------------------------------------------------------------

PIPELINE_COLUMNS = ("id", "name", "status", "source", "sink", "rows", "batches", "lag", "last batch", "error")


def _pipeline_row(p: pb.PipelineStatusResponse) -> tuple[Any, ...]:
    return (
        p.pipeline_id,
        p.name,
        p.status,
        p.source,
        p.sink,
        p.rows_processed,
        p.batches_processed,
        p.lag,
        _ms(p.last_batch_at_ms),
        p.error if p.HasField("error") else "",
    )


def _pipeline_document(p: pb.PipelineStatusResponse) -> dict[str, Any]:
    return _answer(p)


def _list_pipelines(t: Target, status: str | None) -> None:
    async def work() -> None:
        async with connect(LakehouseClient, t) as client:
            request = pb.ListPipelinesRequest(status=status or "")
            reply = await client.streaming.ListPipelines(request, timeout=UNARY_TIMEOUT_S)
        _check(t, reply.success, reply.error)
        if t.json:
            emit_json([_pipeline_document(p) for p in reply.pipelines])
        else:
            out.print(table("pipelines", PIPELINE_COLUMNS, [_pipeline_row(p) for p in reply.pipelines]))

    run(work())


StatusOption = Annotated[
    str | None,
    typer.Option(
        "--status", help="only pipelines in this status (running, stopped, failed...)", show_default=False
    ),
]


@pipelines_app.callback()
def pipelines(
    ctx: typer.Context,
    status: StatusOption = None,
    json_output: JsonOption = False,
    address: AddressOption = None,
) -> None:
    """Ingest pipelines (streams or Iceberg tables -> Iceberg tables); no subcommand lists them."""
    parent = ctx.find_object(GroupOptions) or GroupOptions()
    ctx.obj = GroupOptions(address or parent.address, json_output or parent.json, parent.token)
    if ctx.invoked_subcommand is None:
        _list_pipelines(target(ctx, LAKEHOUSE, None, False), status)


@pipelines_app.command("ls")
def list_pipelines(
    ctx: typer.Context,
    status: StatusOption = None,
    json_output: JsonOption = False,
    address: AddressOption = None,
) -> None:
    """Every pipeline with its counters."""
    _list_pipelines(target(ctx, LAKEHOUSE, address, json_output), status)


def _show_pipeline(t: Target, p: pb.PipelineStatusResponse) -> None:
    if t.json:
        emit_json(_pipeline_document(p))
    else:
        out.print(table(f"pipeline {p.pipeline_id}", PIPELINE_COLUMNS, [_pipeline_row(p)]))


@pipelines_app.command()
def status(
    ctx: typer.Context,
    pipeline_id: Annotated[str, typer.Argument(help="pipeline id")],
    json_output: JsonOption = False,
    address: AddressOption = None,
) -> None:
    """One pipeline's state and counters."""
    t = target(ctx, LAKEHOUSE, address, json_output)

    async def work() -> None:
        async with connect(LakehouseClient, t) as client:
            request = pb.GetPipelineStatusRequest(pipeline_id=pipeline_id)
            reply = await client.streaming.GetPipelineStatus(request, timeout=UNARY_TIMEOUT_S)
        _check(t, reply.success, reply.error)
        _show_pipeline(t, reply)

    run(work())


@pipelines_app.command()
def start(
    ctx: typer.Context,
    sink: Annotated[str, typer.Argument(help="the Iceberg table it writes, ns.table")],
    stream: Annotated[
        str | None, typer.Option("--stream", help="read this streams-service stream", show_default=False)
    ] = None,
    subject: Annotated[
        str | None, typer.Option("--subject", help="only these subjects of the stream, e.g. 'orders.>'")
    ] = None,
    source_table: Annotated[
        str | None, typer.Option("--source-table", help="or read new snapshots of this Iceberg table")
    ] = None,
    name: Annotated[str | None, typer.Option(help="a human-readable name", show_default=False)] = None,
    payload_format: Annotated[str, typer.Option("--format", help="json, jsonl, csv or avro")] = "json",
    create_sink: Annotated[
        bool, typer.Option("--create-sink", help="create the sink from the first batch if missing")
    ] = False,
    mode: Annotated[str, typer.Option(help="append or upsert")] = "append",
    key: Annotated[list[str] | None, typer.Option("--key", help="upsert key column (repeatable)")] = None,
    start_position: Annotated[
        str | None, typer.Option("--start", help="new consumer starts at: new, all, seq:<n>, time:<iso>")
    ] = None,
    batch_size: Annotated[int, typer.Option(min=0, help="max messages per batch; 0 = server default")] = 0,
    trigger_interval: Annotated[
        str | None, typer.Option(help="micro-batch cadence, e.g. '10 seconds'", show_default=False)
    ] = None,
    consumer: Annotated[str | None, typer.Option(help="durable consumer name", show_default=False)] = None,
    option: Annotated[list[str] | None, typer.Option("--option", "-o", help="extra key=value option")] = None,
    json_output: JsonOption = False,
    address: AddressOption = None,
) -> None:
    """Start an ingest pipeline into SINK from --stream or --source-table."""
    t = target(ctx, LAKEHOUSE, address, json_output)
    if bool(stream) == bool(source_table):
        raise typer.BadParameter("give exactly one of --stream and --source-table")
    request = pb.StartPipelineRequest(
        sink_table=sink,
        source_stream=stream or "",
        source_subject=subject or "",
        source_table=source_table or "",
        name=name or "",
        format=payload_format,
        create_sink=create_sink,
        mode=mode,
        key_columns=key or [],
        start_position=start_position or "",
        batch_size=batch_size,
        trigger_interval=trigger_interval or "",
        consumer=consumer or "",
        options=pairs(option),
    )

    async def work() -> None:
        async with connect(LakehouseClient, t) as client:
            reply = await client.streaming.StartPipeline(request, timeout=UNARY_TIMEOUT_S)
        _check(t, reply.success, reply.error)
        _show_pipeline(t, reply)

    run(work())


@pipelines_app.command()
def stop(
    ctx: typer.Context,
    pipeline_id: Annotated[str, typer.Argument(help="pipeline id")],
    force: Annotated[
        bool, typer.Option("--force", help="drop the in-flight batch instead of committing it")
    ] = False,
    json_output: JsonOption = False,
    address: AddressOption = None,
) -> None:
    """Stop a pipeline (its in-flight batch is committed first, unless --force)."""
    t = target(ctx, LAKEHOUSE, address, json_output)

    async def work() -> None:
        async with connect(LakehouseClient, t) as client:
            request = pb.StopPipelineRequest(pipeline_id=pipeline_id, force=force)
            reply = await client.streaming.StopPipeline(request, timeout=OPERATION_TIMEOUT_S)
        _check(t, reply.success, reply.error)
        if t.json:
            emit_json(_answer(reply))
        else:
            out.print(
                f"pipeline {reply.pipeline_id} {reply.status} after {reply.rows_processed} rows", markup=False
            )

    run(work())
