"""`lakestack streams ...`: publish, subscribe, list, inspect and create streams."""

from __future__ import annotations

import asyncio
import contextlib
import re
import sys
import uuid
from collections.abc import Callable
from datetime import datetime
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
    human_bytes,
    out,
    pairs,
    payload_fields,
    run,
    table,
    target,
    to_dict,
)
from lakestack_common.clients import StreamsClient
from lakestack_common.topology import STREAMS
from lakestack_protos.waymaker.streams import waymaker_streams_pb2 as pb

app = group("Streams: publish, subscribe, list, inspect and create streams.")

RETENTIONS = ("limits", "work_queue", "interest")
DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
DURATION_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}

FromSeqOption = Annotated[
    int | None, typer.Option("--from-seq", min=1, help="start at this sequence number", show_default=False)
]
NewOption = Annotated[bool, typer.Option("--new", help="only messages published from now on")]
CountOption = Annotated[
    int | None, typer.Option("--count", "-n", min=1, help="stop after N messages", show_default=False)
]
FollowOption = Annotated[
    bool, typer.Option("--follow/--no-follow", help="keep waiting for new messages, or stop once caught up")
]


def parse_duration_ms(text: str) -> int:
    """``"90"`` (seconds), ``"500ms"``, ``"10s"``, ``"5m"``, ``"2h"``, ``"7d"`` -> milliseconds."""
    match = DURATION.match(text)
    if match is None:
        raise typer.BadParameter(f"{text!r} is not a duration such as 30s, 5m, 7d")
    return int(float(match.group(1)) * DURATION_MS[match.group(2) or "s"])


def format_duration_ms(ms: int) -> str:
    """The largest unit that divides it: 604800000 -> 7d, 90000 -> 90s."""
    for unit in ("d", "h", "m", "s"):
        if ms and ms % DURATION_MS[unit] == 0:
            return f"{ms // DURATION_MS[unit]}{unit}"
    return f"{ms}ms"


def message_document(stream: str, message: pb.MessagePb) -> dict[str, Any]:
    return {
        "stream": stream,
        "seq": message.seq,
        "subject": message.subject,
        "ts_ms": message.ts_ms,
        "headers": {h.key: h.value for h in message.headers},
        **payload_fields(message.payload),
    }


def format_ts(ts_ms: int) -> str:
    return datetime.fromtimestamp(ts_ms / 1000).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


async def subscribe(
    client: StreamsClient,
    t: Target,
    stream: str,
    on_message: Callable[[pb.MessagePb], None],
    *,
    subject: str | None = None,
    count: int | None = None,
    from_seq: int | None = None,
    new: bool = False,
    follow: bool = True,
    on_missing_stream: Callable[[], Any] | None = None,
) -> int:
    """Deliver the messages of ``stream`` (optionally only ``subject``) to ``on_message`` through
    a temporary consumer: created here, every delivery acked, deleted at the end. Returns how many
    messages were delivered. ``on_missing_stream`` (a coroutine function) may create the stream."""
    streams = client.streams
    start_seq = from_seq
    if new:
        info = await streams.GetStreamInfo(pb.GetStreamInfoRequest(name=stream), timeout=UNARY_TIMEOUT_S)
        if not info.success and info.result_code == "no_such_stream" and on_missing_stream is not None:
            await on_missing_stream()
            info = await streams.GetStreamInfo(pb.GetStreamInfoRequest(name=stream), timeout=UNARY_TIMEOUT_S)
        if not info.success:
            t.fail(f"{info.result_code}: {info.message}")
        start_seq = info.stats.last_seq + 1
    if start_seq is not None:
        policy = pb.DeliveryPolicyPb(type=pb.DELIVERY_BY_START_SEQ, start_seq=start_seq)
    else:
        policy = pb.DeliveryPolicyPb(type=pb.DELIVERY_ALL)
    consumer = f"lakestack-cli-{uuid.uuid4().hex[:12]}"
    config = pb.ConsumerConfigPb(name=consumer, filter_subject=subject or "", delivery_policy=policy)
    request = pb.CreateConsumerRequest(stream=stream, config=config)
    created = await streams.CreateConsumer(request, timeout=UNARY_TIMEOUT_S)
    if not created.success and created.result_code == "no_such_stream" and on_missing_stream is not None:
        await on_missing_stream()
        created = await streams.CreateConsumer(request, timeout=UNARY_TIMEOUT_S)
    if not created.success:
        t.fail(f"{created.result_code}: {created.message}")
    delivered = 0
    try:
        call = streams.Subscribe(
            pb.SubscribeRequest(
                stream=stream, consumer=consumer, batch_size=min(count or 64, 64), stop_when_empty=not follow
            )
        )
        try:
            highest = 0
            async for event in call:
                if event.HasField("stopped"):
                    reason = event.stopped.reason
                    if reason.startswith("empty"):  # stop_when_empty: the backlog is drained
                        break
                    t.fail(f"subscription to {stream} ended: {reason}")
                message = event.message
                ack = pb.AckRequest(stream=stream, consumer=consumer, seq=message.seq)
                await streams.Ack(ack, timeout=UNARY_TIMEOUT_S)
                if message.seq <= highest:  # a redelivery of a message already shown
                    continue
                highest = message.seq
                on_message(message)
                delivered += 1
                if count is not None and delivered >= count:
                    break
        finally:
            call.cancel()
    finally:
        # Also on Ctrl-C: a forgotten consumer would hold back Interest retention.
        with contextlib.suppress(Exception):
            await asyncio.shield(
                streams.DeleteConsumer(
                    pb.DeleteConsumerRequest(stream=stream, consumer=consumer), timeout=5.0
                )
            )
    return delivered


@app.command()
def pub(
    ctx: typer.Context,
    stream: Annotated[str, typer.Argument(help="stream name")],
    subject: Annotated[str, typer.Argument(help="message subject, e.g. orders.created")],
    payload: Annotated[str, typer.Argument(help="the payload, or - to read it from stdin")],
    header: Annotated[
        list[str] | None, typer.Option("--header", "-H", help="a message header key=value (repeatable)")
    ] = None,
    json_output: JsonOption = False,
    address: AddressOption = None,
) -> None:
    """Publish one message; prints its sequence number."""
    t = target(ctx, STREAMS, address, json_output)
    headers = [pb.MessageHeader(key=k, value=v) for k, v in pairs(header, "header").items()]
    data = sys.stdin.buffer.read() if payload == "-" else payload.encode()

    async def work() -> None:
        async with connect(StreamsClient, t) as client:
            request = pb.PublishRequest(stream=stream, subject=subject, payload=data, headers=headers)
            reply = await client.streams.Publish(request, timeout=UNARY_TIMEOUT_S)
        if not reply.success:
            t.fail(f"{reply.result_code}: {reply.message}")
        if t.json:
            emit_json({"stream": stream, "subject": subject, "seq": reply.seq})
        else:
            out.print(f"published {stream} seq {reply.seq}", markup=False)

    run(work())


@app.command()
def sub(
    ctx: typer.Context,
    stream: Annotated[str, typer.Argument(help="stream name")],
    subject: Annotated[
        str | None,
        typer.Option("--subject", "-s", help="subject filter, e.g. 'orders.>'", show_default=False),
    ] = None,
    count: CountOption = None,
    from_seq: FromSeqOption = None,
    new: NewOption = False,
    follow: FollowOption = True,
    json_output: JsonOption = False,
    address: AddressOption = None,
) -> None:
    """Print the stream's messages as they arrive (from the first one unless --from-seq/--new).

    Reads through a temporary consumer that acks what it prints and is deleted on exit; on a
    WorkQueue stream that consumes the messages."""
    t = target(ctx, STREAMS, address, json_output)

    def show(message: pb.MessagePb) -> None:
        if t.json:
            emit_json(message_document(stream, message))
            return
        headers = " ".join(f"{h.key}={h.value}" for h in message.headers)
        body = message.payload.decode(errors="replace")
        line = f"{message.seq:>8}  {format_ts(message.ts_ms)}  {message.subject}  "
        out.print(line + (f"[{headers}] " if headers else "") + body, markup=False)

    async def work() -> None:
        async with connect(StreamsClient, t) as client:
            await subscribe(
                client,
                t,
                stream,
                show,
                subject=subject,
                count=count,
                from_seq=from_seq,
                new=new,
                follow=follow,
            )

    run(work())


def _info_document(reply: pb.GetStreamInfoResponse) -> dict[str, Any]:
    document = to_dict(reply)
    for key in ("success", "result_code", "message"):
        document.pop(key, None)
    return document


def _retention(config: pb.StreamConfigPb) -> str:
    return config.retention.WhichOneof("policy") or "limits"


@app.command("ls")
def list_streams(ctx: typer.Context, json_output: JsonOption = False, address: AddressOption = None) -> None:
    """Every stream with its subjects, retention, message count and size."""
    t = target(ctx, STREAMS, address, json_output)

    async def work() -> None:
        async with connect(StreamsClient, t) as client:
            names = (await client.streams.ListStreams(pb.ListStreamsRequest(), timeout=UNARY_TIMEOUT_S)).names
            infos = await asyncio.gather(
                *(
                    client.streams.GetStreamInfo(pb.GetStreamInfoRequest(name=n), timeout=UNARY_TIMEOUT_S)
                    for n in names
                )
            )
        found = [i for i in infos if i.success]  # a stream deleted meanwhile is left out
        if t.json:
            emit_json([_info_document(i) for i in found])
            return
        rows = [
            (
                i.config.name,
                ", ".join(i.config.subjects_filter) or "(any)",
                _retention(i.config),
                i.stats.msg_count,
                human_bytes(i.stats.bytes),
                i.stats.last_seq,
            )
            for i in found
        ]
        out.print(table("streams", ("stream", "subjects", "retention", "messages", "size", "last seq"), rows))

    run(work())


@app.command()
def info(
    ctx: typer.Context,
    stream: Annotated[str, typer.Argument(help="stream name")],
    json_output: JsonOption = False,
    address: AddressOption = None,
) -> None:
    """A stream's configuration and statistics."""
    t = target(ctx, STREAMS, address, json_output)

    async def work() -> None:
        async with connect(StreamsClient, t) as client:
            reply = await client.streams.GetStreamInfo(
                pb.GetStreamInfoRequest(name=stream), timeout=UNARY_TIMEOUT_S
            )
        if not reply.success:
            t.fail(f"{reply.result_code}: {reply.message}")
        if t.json:
            emit_json(_info_document(reply))
            return
        config, stats = reply.config, reply.stats
        retention = _retention(config)
        if retention == "limits":
            limits = config.retention.limits
            bounds = [
                f"max_age={format_duration_ms(limits.max_age_ms)}" if limits.HasField("max_age_ms") else "",
                f"max_msgs={limits.max_msgs}" if limits.HasField("max_msgs") else "",
                f"max_bytes={human_bytes(limits.max_bytes)}" if limits.HasField("max_bytes") else "",
            ]
            retention += " " + " ".join(b for b in bounds if b) if any(bounds) else ""
        rows = [
            ("stream", config.name),
            ("subjects", ", ".join(config.subjects_filter) or "(any)"),
            ("retention", retention),
            ("storage", "memory" if config.ephemeral else "file"),
            ("messages", stats.msg_count),
            ("size", human_bytes(stats.bytes)),
            ("last seq", stats.last_seq),
        ]
        if config.max_msgs_per_subject:
            rows.append(("max msgs per subject", config.max_msgs_per_subject))
        if config.max_msg_bytes:
            rows.append(("max msg size", human_bytes(config.max_msg_bytes)))
        for source in config.sources:
            rows.append(("source", source.source_stream))
        out.print(table(None, ("field", "value"), rows))

    run(work())


@app.command()
def create(
    ctx: typer.Context,
    stream: Annotated[str, typer.Argument(help="stream name")],
    subjects: Annotated[
        list[str] | None,
        typer.Option("--subjects", "-s", help="subject patterns it accepts (repeatable or comma-separated)"),
    ] = None,
    retention: Annotated[str, typer.Option(help="limits, work_queue or interest")] = "limits",
    max_age: Annotated[
        str | None,
        typer.Option(help="limits: drop messages older than this (30s, 5m, 7d)", show_default=False),
    ] = None,
    max_msgs: Annotated[
        int | None, typer.Option(min=1, help="limits: keep at most N", show_default=False)
    ] = None,
    max_bytes: Annotated[
        int | None, typer.Option(min=1, help="limits: keep at most N bytes", show_default=False)
    ] = None,
    memory: Annotated[bool, typer.Option("--memory", help="keep the stream in memory only")] = False,
    exist_ok: Annotated[bool, typer.Option("--exist-ok", help="no error if it already exists")] = False,
    json_output: JsonOption = False,
    address: AddressOption = None,
) -> None:
    """Create a stream."""
    t = target(ctx, STREAMS, address, json_output)
    if retention not in RETENTIONS:
        raise typer.BadParameter(f"choose one of {', '.join(RETENTIONS)}", param_hint="--retention")
    patterns = [p.strip() for item in subjects or () for p in item.split(",") if p.strip()]
    if retention == "limits":
        limits = pb.LimitsRetention(
            max_age_ms=parse_duration_ms(max_age) if max_age else None, max_msgs=max_msgs, max_bytes=max_bytes
        )
        policy = pb.Retention(limits=limits)
    elif retention == "work_queue":
        policy = pb.Retention(work_queue=pb.WorkQueueRetention())
    else:
        policy = pb.Retention(interest=pb.InterestRetention())
    config = pb.StreamConfigPb(name=stream, subjects_filter=patterns, retention=policy, ephemeral=memory)

    async def work() -> None:
        async with connect(StreamsClient, t) as client:
            reply = await client.streams.CreateStream(
                pb.CreateStreamRequest(config=config), timeout=UNARY_TIMEOUT_S
            )
        existed = not reply.success and reply.result_code == "already_exists"
        if not reply.success and not (existed and exist_ok):
            t.fail(f"{reply.result_code}: {reply.message}")
        if t.json:
            emit_json(
                {"stream": stream, "created": reply.success, "subjects": patterns, "retention": retention}
            )
        elif existed:
            out.print(f"stream {stream} already exists", markup=False)
        else:
            out.print(f"created stream {stream} (subjects: {', '.join(patterns) or 'any'})", markup=False)

    run(work())
