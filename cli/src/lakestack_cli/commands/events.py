"""`lakestack events tail`: watch the platform work (docs/events.md)."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from lakestack_cli.commands.common import (
    UNARY_TIMEOUT_S,
    AddressOption,
    JsonOption,
    Target,
    connect,
    emit_json,
    group,
    out,
    run,
    target,
)
from lakestack_cli.commands.streams import (
    CountOption,
    FollowOption,
    FromSeqOption,
    NewOption,
    format_ts,
    subscribe,
)
from lakestack_common.clients import StreamsClient
from lakestack_common.platform_events import EVENTS_STREAM, RETENTION_BYTES, RETENTION_MS, SUBJECT_PREFIX
from lakestack_common.topology import STREAMS
from lakestack_protos.waymaker.streams import waymaker_streams_pb2 as pb

app = group(f"Platform events: what every service does, from the stream {EVENTS_STREAM}.")

COLUMNS = (("time", 23), ("service", 11), ("event", 22))


def event_document(message: pb.MessagePb) -> dict[str, Any]:
    """The event as published (docs/events.md), plus where it is in the stream (seq, subject)."""
    try:
        document = json.loads(message.payload)
    except (json.JSONDecodeError, UnicodeDecodeError):
        document = None
    if not isinstance(document, dict):
        # Not a platform event (someone published by hand): shown, not fatal.
        parts = message.subject.split(".")
        document = {
            "service": parts[2] if len(parts) > 2 else "?",
            "event": parts[-1],
            "ts_ms": message.ts_ms,
            "data": {"payload": message.payload.decode(errors="replace")},
        }
    return {**document, "seq": message.seq, "subject": message.subject}


def format_data(data: Any) -> str:
    if isinstance(data, dict):
        return " ".join(
            f"{k}={v if isinstance(v, str) else json.dumps(v, default=str)}" for k, v in data.items()
        )
    return json.dumps(data, default=str)


def event_line(document: dict[str, Any]) -> str:
    ts = document.get("ts_ms")
    values = (
        format_ts(ts) if isinstance(ts, int) else "",
        str(document.get("service", "")),
        str(document.get("event", "")),
    )
    head = "  ".join(v.ljust(width) for v, (_, width) in zip(values, COLUMNS, strict=True))
    return f"{head}  {format_data(document.get('data', {}))}"


async def _create_events_stream(client: StreamsClient, t: Target) -> None:
    """The events stream as the first publisher creates it (lakestack_common.platform_events), so
    a tail started before any event waits for the first one."""
    config = pb.StreamConfigPb(
        name=EVENTS_STREAM,
        subjects_filter=[f"{SUBJECT_PREFIX}.>"],
        retention=pb.Retention(limits=pb.LimitsRetention(max_age_ms=RETENTION_MS, max_bytes=RETENTION_BYTES)),
    )
    reply = await client.streams.CreateStream(pb.CreateStreamRequest(config=config), timeout=UNARY_TIMEOUT_S)
    if not reply.success and reply.result_code != "already_exists":
        t.fail(f"cannot create {EVENTS_STREAM}: {reply.result_code}: {reply.message}")


@app.command()
def tail(
    ctx: typer.Context,
    subject: Annotated[
        str, typer.Option("--subject", "-s", help="which events, e.g. 'lakestack.events.lakehouse.>'")
    ] = f"{SUBJECT_PREFIX}.>",
    count: CountOption = None,
    from_seq: FromSeqOption = None,
    new: NewOption = False,
    follow: FollowOption = True,
    json_output: JsonOption = False,
    address: AddressOption = None,
) -> None:
    """Print platform events as they happen (the kept history first, unless --new or --from-seq):
    one row per event (time, service, event, data), or one JSON document per line with --json."""
    t = target(ctx, STREAMS, address, json_output)
    header_printed = False

    def show(message: pb.MessagePb) -> None:
        nonlocal header_printed
        document = event_document(message)
        if t.json:
            emit_json(document)
            return
        if not header_printed:
            names = "  ".join(name.ljust(width) for name, width in COLUMNS)
            out.print(f"[bold]{names}  data[/bold]")
            header_printed = True
        out.print(event_line(document), markup=False)

    async def work() -> None:
        async with connect(StreamsClient, t) as client:
            await subscribe(
                client,
                t,
                EVENTS_STREAM,
                show,
                subject=subject,
                count=count,
                from_seq=from_seq,
                new=new,
                follow=follow,
                on_missing_stream=lambda: _create_events_stream(client, t),
            )

    run(work())
