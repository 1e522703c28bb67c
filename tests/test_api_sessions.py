"""SessionService end to end: a real server process, real PostgreSQL, a real socket."""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import grpc
import psycopg
import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.timestamp_pb2 import Timestamp

from studio.v1 import project_pb2, session_pb2
from tests.api import Api, failure
from tests.conftest import ApiServer, Tenant
from tests.row_lock import RowLock, lock_waiters

DAY = 86_400


def _update(api: Api, session: session_pb2.Session, *paths: str) -> session_pb2.Session:
    request = session_pb2.UpdateSessionRequest(session=session)
    if paths:
        request.update_mask.CopyFrom(FieldMask(paths=list(paths)))
    return api.sessions.UpdateSession(request, timeout=10).session


def _get(api: Api, session_id: int) -> session_pb2.Session:
    return api.sessions.GetSession(session_pb2.GetSessionRequest(id=session_id), timeout=10).session


@pytest.mark.pgbouncer
def test_a_session_is_booked_into_a_project_moved_and_unlinked(api: Api) -> None:
    client = api.client()
    room = api.room()
    album = api.project(client.id, "First album")
    ep = api.project(client.id, "Summer EP")

    booked = api.session(client.id, room.id, project_id=album.id)
    assert booked.HasField("project_id")
    assert booked.project_id == album.id
    assert _get(api, booked.id).project_id == album.id

    moved = _update(api, session_pb2.Session(id=booked.id, project_id=ep.id), "project_id")
    assert moved.project_id == ep.id

    unlinked = _update(api, session_pb2.Session(id=booked.id), "project_id")
    assert not unlinked.HasField("project_id")
    stored = _get(api, booked.id)
    assert not stored.HasField("project_id")
    assert stored.title == booked.title  # nothing else was touched

    # without a mask, only the fields that are set are written: this links it again
    relinked = _update(api, session_pb2.Session(id=booked.id, project_id=album.id))
    assert relinked.project_id == album.id
    assert relinked.title == booked.title


def test_a_standalone_session_has_no_project(api: Api) -> None:
    session = api.session(api.client().id, api.room().id)
    assert not session.HasField("project_id")
    assert session.status == session_pb2.SESSION_STATUS_SCHEDULED  # the default
    assert session.payment_status == session_pb2.PAYMENT_STATUS_UNPAID


def test_deleting_a_project_unlinks_its_sessions_as_an_update_would(api: Api) -> None:
    """The unlink is a write like any other: a new update_time and etag, so an update made
    with the etag read before is ABORTED instead of silently applied."""
    client, room = api.client(), api.room()
    project = api.project(client.id)
    sessions = [api.session(client.id, room.id, project_id=project.id, start=s)
                for s in (1_800_000_000, 1_800_100_000)]  # fmt: skip
    read = _get(api, sessions[0].id)

    api.projects.DeleteProject(project_pb2.DeleteProjectRequest(id=project.id), timeout=10)

    for session in sessions:
        kept = _get(api, session.id)
        assert not kept.HasField("project_id")
        assert kept.title == session.title
        assert kept.etag != session.etag
        assert kept.update_time.ToNanoseconds() > session.update_time.ToNanoseconds()
    with pytest.raises(grpc.RpcError) as raised:
        _update(api, session_pb2.Session(id=read.id, title="Overdubs", etag=read.etag))
    got = failure(raised.value)
    assert (got.code, got.reason) == (grpc.StatusCode.ABORTED, "ETAG_MISMATCH")
    assert _get(api, read.id).title == read.title


def test_a_session_linked_while_its_project_is_deleted_is_unlinked_as_an_update_would(
    api: Api, studio: Tenant
) -> None:
    """The link commits while the delete waits for it: the delete still unlinks that session
    with a new etag, not silently through the foreign key."""
    client, room = api.client(), api.room()
    project = api.project(client.id)
    session = api.session(client.id, room.id)
    with psycopg.connect(studio.url) as linker:  # a link in flight: the project is locked
        linked_version = linker.execute(
            "UPDATE sessions SET project_id = %s, version = version + 1, updated_at = now()"
            " WHERE id = %s RETURNING version",
            (project.id, session.id),
        ).fetchone()
        deleting = api.projects.DeleteProject.future(
            project_pb2.DeleteProjectRequest(id=project.id), timeout=30
        )
        deadline = time.monotonic() + 20
        while lock_waiters(studio.url) == 0:
            assert time.monotonic() < deadline, "the delete never waited for the link"
            time.sleep(0.02)
        linker.commit()
    deleting.result()

    kept = _get(api, session.id)
    assert not kept.HasField("project_id")
    assert linked_version is not None
    assert kept.etag != f'"{linked_version[0]}"'


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ("missing_client", "CLIENT_NOT_FOUND"),
        ("missing_room", "ROOM_NOT_FOUND"),
        ("missing_project", "PROJECT_NOT_FOUND"),
        ("other_clients_project", "PROJECT_CLIENT_MISMATCH"),
        ("missing_client_with_project", "CLIENT_NOT_FOUND"),
    ],
)
def test_booking_with_a_missing_or_foreign_reference_fails_precondition(
    api: Api, change: str, reason: str
) -> None:
    client, room = api.client(), api.room()
    other_project = api.project(api.client("Someone else").id)
    kwargs: dict[str, int] = {"client_id": client.id, "room_id": room.id}
    if change == "missing_client":
        kwargs["client_id"] = 999_999
    elif change == "missing_room":
        kwargs["room_id"] = 999_999
    elif change == "missing_project":
        kwargs["project_id"] = 999_999
    elif change == "other_clients_project":
        kwargs["project_id"] = other_project.id
    else:
        kwargs.update(client_id=999_999, project_id=other_project.id)

    with pytest.raises(grpc.RpcError) as raised:
        api.session(kwargs.pop("client_id"), kwargs.pop("room_id"), **kwargs)

    got = failure(raised.value)
    assert (got.code, got.reason) == (grpc.StatusCode.FAILED_PRECONDITION, reason)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ("missing_project", "PROJECT_NOT_FOUND"),
        ("another_clients_project", "PROJECT_CLIENT_MISMATCH"),
        ("move_to_another_client", "PROJECT_CLIENT_MISMATCH"),
        ("move_to_a_missing_client", "CLIENT_NOT_FOUND"),
    ],
)
def test_an_update_that_breaks_the_project_link_is_refused_and_writes_nothing(
    api: Api, change: str, reason: str
) -> None:
    """The project check runs inside the UPDATE; a refusal still says why."""
    client, room = api.client(), api.room()
    project = api.project(client.id)
    session = api.session(client.id, room.id, project_id=project.id)
    if change == "missing_project":
        patch, paths = session_pb2.Session(id=session.id, project_id=999_999), ["project_id"]
    elif change == "another_clients_project":
        foreign = api.project(api.client("Someone else").id)
        patch, paths = session_pb2.Session(id=session.id, project_id=foreign.id), ["project_id"]
    elif change == "move_to_another_client":
        other = api.client("Someone else")
        patch, paths = session_pb2.Session(id=session.id, client_id=other.id), ["client_id"]
    else:
        patch, paths = session_pb2.Session(id=session.id, client_id=999_999), ["client_id"]

    with pytest.raises(grpc.RpcError) as raised:
        _update(api, patch, *paths)

    got = failure(raised.value)
    assert (got.code, got.reason) == (grpc.StatusCode.FAILED_PRECONDITION, reason)
    assert _get(api, session.id) == session  # nothing was written, not even the version


def test_editing_a_linked_session_without_touching_its_link_does_not_wait_for_the_project(
    api: Api, studio: Tenant
) -> None:
    """Only a write that links a project (or moves the session to another client) checks and
    locks the project: renaming a session is not held up by someone editing its project."""
    client, room = api.client(), api.room()
    project = api.project(client.id)
    session = api.session(client.id, room.id, project_id=project.id)

    with RowLock(studio.url, project.id, table="projects"):
        renamed = _update(api, session_pb2.Session(id=session.id, title="Overdubs"), "title")

    assert (renamed.title, renamed.project_id) == ("Overdubs", project.id)


def test_a_session_moves_to_another_client_together_with_that_clients_project(api: Api) -> None:
    client, room = api.client(), api.room()
    session = api.session(client.id, room.id, project_id=api.project(client.id).id)
    other = api.client("New owner")
    theirs = api.project(other.id)

    moved = _update(
        api,
        session_pb2.Session(id=session.id, client_id=other.id, project_id=theirs.id),
        "client_id",
        "project_id",
    )

    assert (moved.client_id, moved.project_id) == (other.id, theirs.id)
    assert _get(api, session.id) == moved


@pytest.mark.parametrize(
    ("session", "expected"),
    [
        (
            session_pb2.Session(),
            {
                "session.client_id",
                "session.room_id",
                "session.title",
                "session.start_time",
                "session.end_time",
            },
        ),
        (
            session_pb2.Session(
                client_id=1,
                room_id=1,
                title="x",
                project_id=0,
                start_time=Timestamp(seconds=1_800_000_100),
                end_time=Timestamp(seconds=1_800_000_050),
            ),
            {"session.project_id", "session.end_time"},
        ),
        (
            session_pb2.Session(
                client_id=-1,
                room_id=1,
                title="x" * 256,
                total_amount="1.234",
                start_time=Timestamp(seconds=1_800_000_001),
                end_time=Timestamp(seconds=1_800_000_002),
            ),
            {"session.client_id", "session.title", "session.total_amount"},
        ),
    ],
)
def test_invalid_sessions_list_every_field_violation(
    api: Api, session: session_pb2.Session, expected: set[str]
) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        api.sessions.CreateSession(session_pb2.CreateSessionRequest(session=session), timeout=10)
    got = failure(raised.value)
    assert got.code is grpc.StatusCode.INVALID_ARGUMENT
    assert got.reason == "INVALID_ARGUMENT"
    assert set(got.fields) == expected


def test_an_update_is_validated_as_the_session_it_would_make(api: Api) -> None:
    session = api.session(api.client().id, api.room().id, start=1_800_000_000)

    # moving only the end before the stored start
    with pytest.raises(grpc.RpcError) as raised:
        _update(api, session_pb2.Session(id=session.id, end_time=Timestamp(seconds=1_700_000_000)))
    got = failure(raised.value)
    assert got.code is grpc.StatusCode.INVALID_ARGUMENT
    assert got.fields == {"session.end_time": "AFTER_START_TIME"}

    # clearing a required field through the mask
    with pytest.raises(grpc.RpcError) as raised:
        _update(api, session_pb2.Session(id=session.id), "title")
    assert failure(raised.value).fields == {"session.title": "REQUIRED"}

    # a path that is not a field of Session
    with pytest.raises(grpc.RpcError) as raised:
        _update(api, session_pb2.Session(id=session.id), "no_such_field")
    assert failure(raised.value).fields == {"update_mask": "FIELD_MASK_IN"}

    assert _get(api, session.id) == session  # none of it was written


def test_not_found_is_about_the_session_itself(api: Api) -> None:
    for call in (
        lambda: _get(api, 987_654),
        lambda: _update(api, session_pb2.Session(id=987_654, title="x")),
        lambda: api.sessions.DeleteSession(session_pb2.DeleteSessionRequest(id=987_654)),
    ):
        with pytest.raises(grpc.RpcError) as raised:
            call()
        got = failure(raised.value)
        assert (got.code, got.reason) == (grpc.StatusCode.NOT_FOUND, "SESSION_NOT_FOUND")
        assert got.metadata["sessionId"] == "987654"


@pytest.mark.pgbouncer
def test_a_stale_etag_is_aborted_and_every_write_moves_update_time(api: Api) -> None:
    session = api.session(api.client().id, api.room().id)
    first = _update(api, session_pb2.Session(id=session.id, title="Overdubs", etag=session.etag))
    assert first.etag != session.etag
    assert first.update_time.ToNanoseconds() > session.update_time.ToNanoseconds()
    assert first.create_time == session.create_time

    with pytest.raises(grpc.RpcError) as raised:
        _update(api, session_pb2.Session(id=session.id, title="Vocals", etag=session.etag))
    got = failure(raised.value)
    assert (got.code, got.reason) == (grpc.StatusCode.ABORTED, "ETAG_MISMATCH")

    with pytest.raises(grpc.RpcError) as raised:
        api.sessions.DeleteSession(
            session_pb2.DeleteSessionRequest(id=session.id, etag=session.etag), timeout=10
        )
    assert failure(raised.value).code is grpc.StatusCode.ABORTED
    assert _get(api, session.id).title == "Overdubs"

    api.sessions.DeleteSession(
        session_pb2.DeleteSessionRequest(id=session.id, etag=first.etag), timeout=10
    )
    with pytest.raises(grpc.RpcError) as raised:
        _get(api, session.id)
    assert failure(raised.value).code is grpc.StatusCode.NOT_FOUND


def _count_sessions(tenant: Tenant, client_id: int) -> int:
    with psycopg.connect(tenant.url) as conn:
        row = conn.execute("SELECT count(*) FROM sessions WHERE client_id = %s", (client_id,))
        return int(row.fetchone()[0])  # type: ignore[index]


def test_a_retried_create_returns_the_first_session_and_books_nothing(
    api: Api, studio: Tenant
) -> None:
    client, room = api.client(), api.room()
    request_id = str(uuid.uuid4())
    first = api.session(client.id, room.id, request_id=request_id)
    again = api.session(client.id, room.id, request_id=request_id)
    assert again == first
    assert _count_sessions(studio, client.id) == 1


def test_concurrent_retries_with_one_request_id_book_one_session(
    api_server: ApiServer, api: Api, studio: Tenant
) -> None:
    client, room = api.client(), api.room()
    request_id = str(uuid.uuid4())
    callers = [api_server.api(studio.key) for _ in range(8)]
    try:
        with ThreadPoolExecutor(len(callers)) as pool:
            sessions = list(
                pool.map(lambda c: c.session(client.id, room.id, request_id=request_id), callers)
            )
    finally:
        for caller in callers:
            caller.close()
    assert {s.id for s in sessions} == {sessions[0].id}
    assert _count_sessions(studio, client.id) == 1


def _list_all(api: Api, request: session_pb2.ListSessionsRequest) -> list[list[int]]:
    pages = []
    while True:
        response = api.sessions.ListSessions(request, timeout=10)
        pages.append([s.id for s in response.sessions])
        if not response.next_page_token:
            return pages
        request.page_token = response.next_page_token


@pytest.mark.pgbouncer
def test_sessions_are_listed_by_project_a_page_at_a_time_in_start_order(api: Api) -> None:
    client, room = api.client(), api.room()
    album = api.project(client.id)
    starts = [1_900_000_000 + DAY * n for n in (5, 1, 4, 2, 6, 3, 0)]
    in_album = [api.session(client.id, room.id, project_id=album.id, start=s) for s in starts]
    standalone = [api.session(client.id, room.id, start=s + 3600 * 4) for s in starts[:2]]
    expected = [s.id for s in sorted(in_album, key=lambda s: s.start_time.seconds)]

    pages = _list_all(api, session_pb2.ListSessionsRequest(project_id=album.id, page_size=3))
    assert [len(p) for p in pages] == [3, 3, 1]
    assert [i for p in pages for i in p] == expected

    mine_alone = _list_all(
        api, session_pb2.ListSessionsRequest(client_id=client.id, without_project=True)
    )
    assert sorted(i for p in mine_alone for i in p) == sorted(s.id for s in standalone)

    window = session_pb2.ListSessionsRequest(
        client_id=client.id,
        start_time_from=Timestamp(seconds=1_900_000_000 + DAY),
        start_time_before=Timestamp(seconds=1_900_000_000 + DAY * 3),
    )
    listed = [i for p in _list_all(api, window) for i in p]
    assert len(listed) == 3  # days 1 and 2 in the album, and day 1's standalone session


def test_a_page_token_only_fits_the_filters_it_was_made_for(api: Api) -> None:
    client, room = api.client(), api.room()
    for n in range(3):
        api.session(client.id, room.id, start=1_950_000_000 + n * DAY)
    first = api.sessions.ListSessions(
        session_pb2.ListSessionsRequest(client_id=client.id, page_size=1), timeout=10
    )
    assert first.next_page_token
    for token, filters in (
        (first.next_page_token, {"client_id": client.id + 1}),
        ("not-a-token", {"client_id": client.id}),
    ):
        with pytest.raises(grpc.RpcError) as raised:
            api.sessions.ListSessions(
                session_pb2.ListSessionsRequest(page_size=1, page_token=token, **filters),
                timeout=10,
            )
        got = failure(raised.value)
        assert (got.code, got.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PAGE_TOKEN")
        assert got.fields == {"page_token": "INVALID_PAGE_TOKEN"}
