"""TimeEntryService: timers and entries made by hand, against a session, project or track."""

from __future__ import annotations

from datetime import UTC
from decimal import Decimal
from typing import TYPE_CHECKING

from sqlalchemy import func

from db.crud import Guard, fetch_row, update_row
from db.tables import time_entries
from db.time_tracking import (
    CONTEXTS,
    Context,
    EntryFilters,
    active_timer,
    explain_refused_entry,
    list_entries,
    log_entry,
)
from server import standard_methods
from server.errors import Aborted, FailedPrecondition
from server.paging import decode_token, encode_token, page_size, token_time
from server.resource_mapping import Field, Kind, ResourceMapping, version_of_etag
from server.router import Router
from studio.v1 import time_entry_pb2 as pb

if TYPE_CHECKING:
    from datetime import datetime

    from google.protobuf.message import Message

    from server.context import Ctx

__all__ = ["TIME_ENTRY", "router"]

router = Router(pb, "TimeEntryService")
TIME_ENTRY = ResourceMapping(
    pb.TimeEntry,
    time_entries,
    (
        Field("task_type_id", Kind.ID, immutable=True),
        Field("session_id", Kind.ID, immutable=True),
        Field("project_id", Kind.ID, immutable=True),
        Field("track_id", Kind.ID, immutable=True),
        Field("start_time", Kind.TIMESTAMP),
        Field("end_time", Kind.TIMESTAMP),
        Field("notes", Kind.TEXT),
        # derived or snapshotted by the database
        Field("duration_minutes", Kind.INT, output_only=True),
        Field("hourly_rate", Kind.DECIMAL, column="hourly_rate_snapshot", output_only=True),
        Field("billable", Kind.BOOL, output_only=True),
        Field("billable_amount", Kind.DECIMAL, output_only=True),
        Field("manually_adjusted", Kind.BOOL, output_only=True),
    ),
)
LOG_ATTEMPTS = 2  # an INSERT refused for a reason gone by the time it is explained runs again


def _context(message: Message) -> tuple[Context, int]:
    """(kind, id) of a message's `context` oneof: session_id, project_id or track_id."""
    which = message.WhichOneof("context")
    assert which is not None  # the oneof is required (validated)
    context = next(c for c in CONTEXTS if f"{c}_id" == which)
    return context, getattr(message, which)


async def _log(
    ctx: Ctx,
    *,
    task_type_id: int,
    context: tuple[Context, int],
    notes: str,
    request_id: str,
    times: tuple[datetime, datetime] | None = None,
) -> pb.TimeEntry:
    """An entry, or why there is none: the entry its request id made (a retry), a missing or
    inactive task type, the timer running for the context. A missing context is its
    foreign key's refusal (SESSION_NOT_FOUND...)."""
    kind, context_id = context
    for _attempt in range(LOG_ATTEMPTS):
        row = await log_entry(
            ctx.db, task_type_id=task_type_id, context=kind, context_id=context_id,
            notes=notes or None, request_id=request_id or None, times=times,
        )  # fmt: skip
        if row is not None:
            return TIME_ENTRY.to_message(row)
        why = await explain_refused_entry(
            ctx.db, task_type_id=task_type_id, context=kind, context_id=context_id,
            request_id=request_id,
        )  # fmt: skip
        if why.twin is not None:
            return await standard_methods.get(ctx, TIME_ENTRY, "time_entry", why.twin)
        metadata = {"taskTypeId": str(task_type_id)}
        if why.task_type_active is None:
            raise standard_methods.missing_reference("task_type", task_type_id)
        if not why.task_type_active:
            raise FailedPrecondition(
                "TASK_TYPE_INACTIVE",
                f"task type {task_type_id} is inactive; activate it or log the time with another",
                metadata=metadata,
            )
        if why.running is not None and times is None:
            raise FailedPrecondition(
                "TIMER_ALREADY_RUNNING",
                f"a timer already runs for {kind} {context_id} (time entry {why.running});"
                " stop it first",
                metadata={"timeEntryId": str(why.running), f"{kind}Id": str(context_id)},
            )
        # nothing in the way now: what refused the insert changed meanwhile
    raise Aborted("CONCURRENT_MODIFICATION", "a concurrent change got in the way; retry")


@router.procedure("StartTimer", single_statement=True)
async def start_timer(ctx: Ctx, request: pb.StartTimerRequest) -> pb.StartTimerResponse:
    """One INSERT takes the task type's rate and starts the timer; the running-timer index
    lets one timer per context in, so of timers started at once exactly one runs."""
    entry = await _log(
        ctx, task_type_id=request.task_type_id, context=_context(request),
        notes=request.notes, request_id=request.request_id,
    )  # fmt: skip
    return pb.StartTimerResponse(time_entry=entry)


# Stopping: now, or at the start if that was adjusted into the future.
_STOP = {"end_time": func.greatest(func.now(), time_entries.c.start_time)}
_RUNNING = Guard(time_entries.c.end_time.is_(None), {})


@router.procedure("StopTimer", single_statement=True)
async def stop_timer(ctx: Ctx, request: pb.StopTimerRequest) -> pb.StopTimerResponse:
    """One UPDATE of a running timer; a timer already stopped is returned as it is (a second
    press of stop, or a retry, changes nothing)."""
    version = version_of_etag(request.etag, "etag") if request.etag else None
    row = await update_row(ctx.db, time_entries, request.id, _STOP, guard=_RUNNING, version=version)
    if row is None:
        row = await fetch_row(ctx.db, time_entries, request.id)
        if row is None:
            raise standard_methods.not_found("time_entry", request.id)
        standard_methods.check_etag(request.etag, row, "etag")
    return pb.StopTimerResponse(time_entry=TIME_ENTRY.to_message(row))


@router.procedure("GetActiveTimer")
async def get_active_timer(
    ctx: Ctx, request: pb.GetActiveTimerRequest
) -> pb.GetActiveTimerResponse:
    kind, context_id = _context(request)
    row = await active_timer(ctx.db, kind, context_id)
    if row is None:
        await standard_methods.require_references(ctx, {kind: context_id})
        return pb.GetActiveTimerResponse()
    return pb.GetActiveTimerResponse(time_entry=TIME_ENTRY.to_message(row))


@router.procedure("GetTimeEntry")
async def get_time_entry(ctx: Ctx, request: pb.GetTimeEntryRequest) -> pb.GetTimeEntryResponse:
    entry = await standard_methods.get(ctx, TIME_ENTRY, "time_entry", request.id)
    return pb.GetTimeEntryResponse(time_entry=entry)


@router.procedure("ListTimeEntries")
async def list_time_entries(
    ctx: Ctx, request: pb.ListTimeEntriesRequest
) -> pb.ListTimeEntriesResponse:
    """One statement: the page, the totals of every entry matched, and whether the context
    exists (FAILED_PRECONDITION when it does not)."""
    kind, context_id = _context(request)
    filters = EntryFilters(
        kind,
        context_id,
        whole_project=request.include_sessions_and_tracks,
        task_type_id=request.task_type_id if request.HasField("task_type_id") else None,
        start_from=request.start_time_from.ToDatetime(tzinfo=UTC)
        if request.HasField("start_time_from")
        else None,
        start_before=request.start_time_before.ToDatetime(tzinfo=UTC)
        if request.HasField("start_time_before")
        else None,
    )
    token = decode_token(request)
    after = (token_time(token), token.last_id) if token is not None else None
    size = page_size(request.page_size)
    rows = await list_entries(ctx.db, filters, after=after, limit=size + 1)
    first = rows[0]
    if not first["context_exists"]:
        raise standard_methods.missing_reference(kind, context_id)
    totals = pb.TimeTotals(
        entry_count=first["total_entry_count"],
        minutes=first["total_minutes"],
        billable_amount=str(Decimal(first["total_billable_amount"]).quantize(Decimal("0.01"))),
        running_timers=first["total_running_timers"],
    )
    entries = [r for r in rows if r["id"] is not None]
    response = pb.ListTimeEntriesResponse(
        time_entries=[TIME_ENTRY.to_message(r) for r in entries[:size]], totals=totals
    )
    if len(entries) > size:
        last = entries[size - 1]
        response.next_page_token = encode_token(request, last["id"], last["start_time"])
    return response


@router.procedure("CreateTimeEntry", single_statement=True)
async def create_time_entry(
    ctx: Ctx, request: pb.CreateTimeEntryRequest
) -> pb.CreateTimeEntryResponse:
    """One INSERT with the task type's rate; marked manually adjusted (entered by hand)."""
    entry = request.time_entry
    logged = await _log(
        ctx,
        task_type_id=entry.task_type_id,
        context=_context(entry),
        notes=entry.notes,
        request_id=request.request_id,
        times=(entry.start_time.ToDatetime(tzinfo=UTC), entry.end_time.ToDatetime(tzinfo=UTC)),
    )
    return pb.CreateTimeEntryResponse(time_entry=logged)


_ADJUSTED = {"manually_adjusted": True}


@router.procedure("UpdateTimeEntry", single_statement=True)
async def update_time_entry(
    ctx: Ctx, request: pb.UpdateTimeEntryRequest
) -> pb.UpdateTimeEntryResponse:
    """One UPDATE of the times or notes, which marks the entry manually adjusted; the
    database derives duration and amount again. end_time before start_time (the stored one
    included) is the rule's field violation, from its CHECK."""
    mask = request.update_mask if request.HasField("update_mask") else None
    entry = await standard_methods.update_at_once(
        ctx, TIME_ENTRY, "time_entry", request.time_entry, mask, also=_ADJUSTED
    )
    return pb.UpdateTimeEntryResponse(time_entry=entry)


@router.procedure("DeleteTimeEntry")
async def delete_time_entry(
    ctx: Ctx, request: pb.DeleteTimeEntryRequest
) -> pb.DeleteTimeEntryResponse:
    await standard_methods.delete(ctx, TIME_ENTRY, "time_entry", request.id, request.etag)
    return pb.DeleteTimeEntryResponse()
