"""Task types and time entries end to end: timers, entries made by hand, rates snapshotted,
durations and amounts derived by the database, totals, and timers started at once."""

from __future__ import annotations

import threading
from collections import Counter
from decimal import Decimal

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.timestamp_pb2 import Timestamp

from studio.v1 import task_type_pb2, time_entry_pb2
from tests.api import Api, Failure, failure
from tests.conftest import ApiServer, Tenant

T0 = 1_830_000_000
MINUTE = 60
te = time_entry_pb2


def _fails(call: object) -> Failure:
    with pytest.raises(grpc.RpcError) as raised:
        call()  # type: ignore[operator]
    return failure(raised.value)


def _log(api: Api, task_type_id: int, start: int, minutes: float, **context: int) -> te.TimeEntry:
    entry = te.TimeEntry(
        task_type_id=task_type_id,
        start_time=Timestamp(seconds=start),
        end_time=Timestamp(seconds=start + round(minutes * MINUTE)),
        **context,  # type: ignore[arg-type]
    )
    request = te.CreateTimeEntryRequest(time_entry=entry)
    return api.time.CreateTimeEntry(request, timeout=10).time_entry


def _start(api: Api, task_type_id: int, **context: int) -> te.TimeEntry:
    request = te.StartTimerRequest(task_type_id=task_type_id, **context)  # type: ignore[arg-type]
    return api.time.StartTimer(request, timeout=10).time_entry


def test_task_types_list_active_first_and_a_used_one_is_deactivated_not_deleted(
    api_server: ApiServer,
) -> None:
    api = api_server.api(api_server.new_tenant("task types").key)  # a studio of its own
    try:
        mixing = api.task_type("Mixing", "60.00", sort_order=2)
        editing = api.task_type("Editing", "45.5", sort_order=1)
        coffee = api.task_type(
            "Coffee", "", sort_order=0, category=task_type_pb2.TASK_CATEGORY_NON_BILLABLE
        )
        assert (editing.hourly_rate, coffee.hourly_rate) == ("45.50", "0.00")  # exact decimals
        assert mixing.category == task_type_pb2.TASK_CATEGORY_BILLABLE
        assert mixing.is_active
        retired = api.task_types.UpdateTaskType(
            task_type_pb2.UpdateTaskTypeRequest(
                task_type=task_type_pb2.TaskType(id=coffee.id, is_active=False)
            ),
            timeout=10,
        ).task_type
        assert retired.is_active is False

        def names(**request: object) -> list[str]:
            found, token = [], ""
            while True:
                page = api.task_types.ListTaskTypes(
                    task_type_pb2.ListTaskTypesRequest(page_size=1, page_token=token, **request),  # type: ignore[arg-type]
                    timeout=10,
                )
                found += [t.name for t in page.task_types]
                if not (token := page.next_page_token):
                    return found

        assert names() == ["Editing", "Mixing"]
        assert names(include_inactive=True) == ["Editing", "Mixing", "Coffee"]

        session = api.session(api.client().id, api.room().id, start=T0)
        _log(api, mixing.id, T0, 30, session_id=session.id)
        got = _fails(lambda: api.task_types.DeleteTaskType(
            task_type_pb2.DeleteTaskTypeRequest(id=mixing.id)
        ))  # fmt: skip
        assert (got.code, got.reason, got.metadata["taskTypeId"]) == (
            grpc.StatusCode.FAILED_PRECONDITION,
            "TASK_TYPE_HAS_TIME_ENTRIES",
            str(mixing.id),
        )
        assert "deactivate it instead" in got.message
        got = _fails(lambda: _start(api, coffee.id, session_id=session.id))
        assert (got.reason, got.metadata["taskTypeId"]) == ("TASK_TYPE_INACTIVE", str(coffee.id))
        got = _fails(lambda: _log(api, coffee.id, T0, 5, session_id=session.id))
        assert got.reason == "TASK_TYPE_INACTIVE"
        api.task_types.DeleteTaskType(task_type_pb2.DeleteTaskTypeRequest(id=editing.id))
    finally:
        api.close()


@pytest.mark.pgbouncer
def test_a_timer_keeps_the_rate_it_started_with_and_runs_once_per_context(api: Api) -> None:
    mixing = api.task_type("Mixing", "60.00")
    session = api.session(api.client().id, api.room().id, start=T0)
    timer = _start(api, mixing.id, session_id=session.id)
    assert (timer.session_id, timer.hourly_rate, timer.billable) == (session.id, "60.00", True)
    assert not timer.HasField("end_time")
    assert not timer.HasField("duration_minutes")
    assert timer.billable_amount == ""  # running

    got = _fails(lambda: _start(api, mixing.id, session_id=session.id))
    assert (got.code, got.reason, got.metadata["timeEntryId"]) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "TIMER_ALREADY_RUNNING",
        str(timer.id),
    )
    active = api.time.GetActiveTimer(te.GetActiveTimerRequest(session_id=session.id)).time_entry
    assert active == timer
    other = _start(api, mixing.id, project_id=api.project(api.client().id).id)  # another context
    assert other.id != timer.id

    api.task_types.UpdateTaskType(
        task_type_pb2.UpdateTaskTypeRequest(
            task_type=task_type_pb2.TaskType(id=mixing.id, hourly_rate="90.00")
        ),
        timeout=10,
    )
    stopped = api.time.StopTimer(te.StopTimerRequest(id=timer.id), timeout=10).time_entry
    assert stopped.HasField("end_time")
    assert stopped.duration_minutes == 0
    assert (stopped.hourly_rate, stopped.billable_amount) == ("60.00", "0.00")  # its own rate
    assert stopped.manually_adjusted is False
    again = api.time.StopTimer(te.StopTimerRequest(id=timer.id), timeout=10).time_entry
    assert again == stopped  # stopping a stopped timer changes nothing
    none = api.time.GetActiveTimer(te.GetActiveTimerRequest(session_id=session.id))
    assert not none.HasField("time_entry")
    assert _start(api, mixing.id, session_id=session.id).hourly_rate == "90.00"

    for call, code, reason in (
        (lambda: _start(api, mixing.id, session_id=987_654), grpc.StatusCode.FAILED_PRECONDITION,
         "SESSION_NOT_FOUND"),
        (lambda: _start(api, 987_654, track_id=1), grpc.StatusCode.FAILED_PRECONDITION,
         "TASK_TYPE_NOT_FOUND"),
        (lambda: api.time.GetActiveTimer(te.GetActiveTimerRequest(track_id=987_654)),
         grpc.StatusCode.FAILED_PRECONDITION, "TRACK_NOT_FOUND"),
        (lambda: api.time.StopTimer(te.StopTimerRequest(id=987_654)), grpc.StatusCode.NOT_FOUND,
         "TIME_ENTRY_NOT_FOUND"),
    ):  # fmt: skip
        got = _fails(call)
        assert (got.code, got.reason) == (code, reason)
    got = _fails(lambda: api.time.StartTimer(te.StartTimerRequest(task_type_id=mixing.id)))
    assert got.code is grpc.StatusCode.INVALID_ARGUMENT  # the context is required


def test_of_many_timers_started_at_once_on_one_context_exactly_one_runs(
    api_server: ApiServer, api: Api, studio: Tenant
) -> None:
    mixing = api.task_type()
    project = api.project(api.client().id)
    callers = [api_server.api(studio.key) for _ in range(16)]
    ready = threading.Barrier(len(callers))
    outcomes: list[tuple[str, str]] = []

    def start(caller: Api) -> None:
        ready.wait()
        try:
            outcomes.append(("OK", str(_start(caller, mixing.id, project_id=project.id).id)))
        except grpc.RpcError as error:
            got = failure(error)
            outcomes.append((got.reason, got.metadata.get("timeEntryId", "")))

    threads = [threading.Thread(target=start, args=(c,)) for c in callers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    for caller in callers:
        caller.close()

    assert Counter(reason for reason, _ in outcomes) == {
        "OK": 1,
        "TIMER_ALREADY_RUNNING": len(callers) - 1,
    }
    [winner] = [entry_id for reason, entry_id in outcomes if reason == "OK"]
    assert {entry_id for reason, entry_id in outcomes if reason != "OK"} == {winner}
    listed = api.time.ListTimeEntries(te.ListTimeEntriesRequest(project_id=project.id))
    assert [str(e.id) for e in listed.time_entries] == [winner]
    assert listed.totals.running_timers == 1


def test_durations_and_amounts_are_the_databases_and_adjusting_marks_an_entry(api: Api) -> None:
    mixing = api.task_type("Mixing", "75.00")
    session = api.session(api.client().id, api.room().id, start=T0)
    entry = _log(api, mixing.id, T0, 90.5, session_id=session.id)  # 90 min 30 s
    assert (entry.duration_minutes, entry.billable_amount) == (91, "113.75")  # nearest minute
    assert entry.manually_adjusted is True  # entered by hand, not measured

    patch = te.TimeEntry(id=entry.id, end_time=Timestamp(seconds=T0 + 40 * MINUTE),
                         duration_minutes=999, billable_amount="1.00")  # fmt: skip
    adjusted = api.time.UpdateTimeEntry(
        te.UpdateTimeEntryRequest(time_entry=patch), timeout=10
    ).time_entry  # what a caller says of the output-only fields is ignored
    assert (adjusted.duration_minutes, adjusted.billable_amount) == (40, "50.00")
    assert adjusted.etag != entry.etag

    for paths, fields in (
        (["task_type_id"], {"update_mask": "IMMUTABLE"}),
        (["session_id", "notes"], {"update_mask": "IMMUTABLE"}),
    ):
        mask = FieldMask(paths=paths)
        got = _fails(lambda m=mask: api.time.UpdateTimeEntry(  # type: ignore[misc]
            te.UpdateTimeEntryRequest(time_entry=te.TimeEntry(id=entry.id), update_mask=m)
        ))  # fmt: skip
        assert (got.code, got.fields) == (grpc.StatusCode.INVALID_ARGUMENT, fields)
    # the end moved before the stored start: the database's CHECK, as the proto rule says it
    got = _fails(lambda: api.time.UpdateTimeEntry(te.UpdateTimeEntryRequest(
        time_entry=te.TimeEntry(id=entry.id, end_time=Timestamp(seconds=T0 - MINUTE)),
        update_mask=FieldMask(paths=["end_time"]),
    )))  # fmt: skip
    assert got.fields == {"time_entry.end_time": "NOT_BEFORE_START_TIME"}
    got = _fails(lambda: api.time.CreateTimeEntry(te.CreateTimeEntryRequest(time_entry=te.TimeEntry(
        task_type_id=mixing.id, session_id=session.id, start_time=Timestamp(seconds=T0)
    ))))  # fmt: skip
    assert got.fields == {"time_entry.end_time": "REQUIRED"}

    api.time.DeleteTimeEntry(te.DeleteTimeEntryRequest(id=entry.id, etag=adjusted.etag))
    got = _fails(lambda: api.time.GetTimeEntry(te.GetTimeEntryRequest(id=entry.id)))
    assert got.reason == "TIME_ENTRY_NOT_FOUND"


@pytest.mark.pgbouncer
def test_entries_are_listed_by_context_with_the_totals_of_every_match(api: Api) -> None:
    mixing, editing = api.task_type("Mixing", "60.00"), api.task_type("Editing", "40.00")
    coffee = api.task_type("Coffee", "10.00", category=task_type_pb2.TASK_CATEGORY_NON_BILLABLE)
    client = api.client()
    project = api.project(client.id)
    session = api.session(client.id, api.room().id, project_id=project.id, start=T0)
    track = api.track(project.id, "Single")
    day = 24 * 3600
    on_session = [_log(api, mixing.id, T0 + n * day, 30, session_id=session.id) for n in range(3)]
    _log(api, coffee.id, T0 + 4 * day, 15, session_id=session.id)
    _log(api, editing.id, T0 + day, 45, project_id=project.id)
    _log(api, mixing.id, T0 + 2 * day, 60, track_id=track.id)
    _start(api, editing.id, track_id=track.id)

    def listing(**request: object) -> tuple[list[int], te.TimeTotals]:
        ids, token, totals = [], "", []
        while True:
            page = api.time.ListTimeEntries(
                te.ListTimeEntriesRequest(page_size=2, page_token=token, **request),  # type: ignore[arg-type]
                timeout=10,
            )
            ids += [e.id for e in page.time_entries]
            totals.append(page.totals)
            if not (token := page.next_page_token):
                assert all(t == totals[0] for t in totals)  # the same on each page
                return ids, totals[0]

    ids, totals = listing(session_id=session.id)
    assert ids[:3] == [e.id for e in on_session]
    assert (totals.entry_count, totals.minutes, totals.billable_amount) == (4, 105, "90.00")
    ids, totals = listing(session_id=session.id, task_type_id=mixing.id,
                          start_time_from=Timestamp(seconds=T0 + day))  # fmt: skip
    assert ids == [e.id for e in on_session[1:]]
    assert (totals.minutes, totals.billable_amount) == (60, "60.00")

    _, own = listing(project_id=project.id)
    assert (own.entry_count, own.minutes, own.billable_amount) == (1, 45, "30.00")
    _, whole = listing(project_id=project.id, include_sessions_and_tracks=True)
    assert (whole.entry_count, whole.minutes, whole.running_timers) == (7, 210, 1)
    assert Decimal(whole.billable_amount) == Decimal("90.00") + Decimal("30.00") + Decimal("60.00")

    got = _fails(lambda: api.time.ListTimeEntries(te.ListTimeEntriesRequest(session_id=987_654)))
    assert (got.code, got.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "SESSION_NOT_FOUND")
    got = _fails(lambda: api.time.ListTimeEntries(
        te.ListTimeEntriesRequest(session_id=session.id, include_sessions_and_tracks=True)
    ))  # fmt: skip
    assert got.code is grpc.StatusCode.INVALID_ARGUMENT
