"""Tools no one here wrote, talking to the server through reflection: grpcurl and buf curl."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

from google.rpc.error_details_pb2 import ErrorInfo

from tests.conftest import ApiServer, Tenant

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)


def _grpcurl(
    server: ApiServer, *command: str, flags: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    return _run(str(BIN / "grpcurl"), "-plaintext", *flags, server.address, *command)


def test_grpcurl_lists_describes_calls_and_reads_error_details(
    api_server: ApiServer, studio: Tenant
) -> None:
    listed = _grpcurl(api_server, "list")
    assert listed.returncode == 0, listed.stderr
    assert {"studio.v1.SessionService", "studio.v1.ProjectService",
            "grpc.health.v1.Health"} <= set(listed.stdout.split())  # fmt: skip

    described = _grpcurl(api_server, "describe", "studio.v1.Session")
    assert "optional int64 project_id = 4" in described.stdout

    auth = f"authorization: Bearer {studio.key}"
    made = _grpcurl(api_server, "studio.v1.ClientService/CreateClient",
                    flags=("-H", auth, "-d", '{"client": {"name": "Via grpcurl"}}'))  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)["client"]["name"] == "Via grpcurl"

    missing = _grpcurl(api_server, "studio.v1.SessionService/GetSession",
                       flags=("-H", auth, "-d", '{"id": "424242"}'))  # fmt: skip
    assert missing.returncode != 0
    assert "Code: NotFound" in missing.stderr
    detail = json.loads(missing.stderr.split("1)", 1)[1].split("2)", 1)[0])
    assert detail["@type"] == "type.googleapis.com/google.rpc.ErrorInfo"
    assert detail["reason"] == "SESSION_NOT_FOUND"


def _buf_curl(server: ApiServer, *args: str) -> subprocess.CompletedProcess[str]:
    return _run(str(BIN / "buf"), "curl", "--protocol", "grpc", "--http2-prior-knowledge", *args)


def test_buf_curl_lists_calls_and_reads_error_details(
    api_server: ApiServer, studio: Tenant
) -> None:
    base = f"http://{api_server.address}"
    methods = _buf_curl(api_server, "--list-methods", base)
    assert "studio.v1.SessionService/UpdateSession" in methods.stdout.split()

    auth = f"authorization: Bearer {studio.key}"
    made = _buf_curl(api_server, "-H", auth, "-d", '{"room": {"name": "Via buf"}}',
                     f"{base}/studio.v1.RoomService/CreateRoom")  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)["room"]["name"] == "Via buf"

    invalid = _buf_curl(api_server, "-H", auth, "-d", '{"session": {"clientId": "1"}}',
                        f"{base}/studio.v1.SessionService/CreateSession")  # fmt: skip
    assert invalid.returncode != 0
    error = json.loads(invalid.stderr)
    assert error["code"] == "invalid_argument"
    [info] = [d for d in error["details"] if d["type"] == "google.rpc.ErrorInfo"]
    assert ErrorInfo.FromString(base64.b64decode(info["value"] + "==")).reason == (
        "INVALID_ARGUMENT"
    )
    assert any(d["type"] == "google.rpc.BadRequest" for d in error["details"])


def test_buf_curl_shows_error_details_decoded(api_server: ApiServer, studio: Tenant) -> None:
    """buf curl decodes a detail only when its type is compiled into buf (reflection does
    not help: it prints ErrorInfo as base64 even though reflection serves its descriptor),
    so the details come a second time as a google.protobuf.Struct, which buf prints."""
    base = f"http://{api_server.address}"
    auth = f"authorization: Bearer {studio.key}"
    missing = _buf_curl(api_server, "-H", auth, "-d", '{"id": "424242"}',
                        f"{base}/studio.v1.SessionService/GetSession")  # fmt: skip
    assert missing.returncode != 0
    assert '"reason": "SESSION_NOT_FOUND"' in missing.stderr  # as a person reads it
    [readable] = [d["debug"] for d in json.loads(missing.stderr)["details"] if "debug" in d]
    assert readable["domain"] == "studio.v1"
    assert readable["metadata"]["requestId"]

    invalid = _buf_curl(api_server, "-H", auth, "-d", '{"session": {"clientId": "1"}}',
                        f"{base}/studio.v1.SessionService/CreateSession")  # fmt: skip
    [readable] = [d["debug"] for d in json.loads(invalid.stderr)["details"] if "debug" in d]
    assert readable["reason"] == "INVALID_ARGUMENT"
    assert {"session.room_id", "session.title"} <= {v["field"] for v in readable["fieldViolations"]}


def test_grpcurl_reaches_every_procedure_of_tracks_time_and_rollups(
    api_server: ApiServer,
) -> None:
    """Through reflection alone, as an operator would: each of them, in the order of a day's
    work (JSON in, JSON out with the protos' field names; ids as strings, oneof members by
    their own name)."""
    tenant = api_server.new_tenant("grpcurl")
    auth = ("-H", f"authorization: Bearer {tenant.key}")

    def call(method: str, body: dict[str, object]) -> dict[str, object]:
        done = _grpcurl(api_server, f"studio.v1.{method}", flags=(*auth, "-d", json.dumps(body)))
        assert done.returncode == 0, (method, done.stderr)
        return json.loads(done.stdout or "{}")  # type: ignore[no-any-return]

    def made(method: str, body: dict[str, object], kind: str) -> str:
        return str(call(method, body)[kind]["id"])  # type: ignore[index]

    client = made("ClientService/CreateClient", {"client": {"name": "Nina"}}, "client")
    room = made("RoomService/CreateRoom", {"room": {"name": "A"}}, "room")
    project = made(
        "ProjectService/CreateProject",
        {"project": {"clientId": client, "name": "Album"}},
        "project",
    )
    session = made(
        "SessionService/CreateSession",
        {
            "session": {
                "clientId": client,
                "roomId": room,
                "projectId": project,
                "title": "Drums",
                "startTime": "2027-03-01T10:00:00Z",
                "endTime": "2027-03-01T13:00:00Z",
            }
        },
        "session",
    )
    track = made(
        "TrackService/CreateTrack",
        {"track": {"projectId": project, "title": "Intro", "trackNumber": 1}},
        "track",
    )
    call("TrackService/GetTrack", {"id": track})
    call("TrackService/UpdateTrack", {"track": {"id": track, "bpm": 96}})
    assert [t["id"] for t in call("TrackService/ListTracks", {"projectId": project})["tracks"]] == [
        track
    ]  # type: ignore[union-attr]
    mixing = made(
        "TaskTypeService/CreateTaskType",
        {"task_type": {"name": "Mixing", "hourlyRate": "60.00"}},
        "task_type",
    )
    call("TaskTypeService/GetTaskType", {"id": mixing})
    call("TaskTypeService/UpdateTaskType", {"task_type": {"id": mixing, "sortOrder": 1}})
    call("TaskTypeService/ListTaskTypes", {})
    timer = made(
        "TimeEntryService/StartTimer", {"taskTypeId": mixing, "trackId": track}, "time_entry"
    )
    assert call("TimeEntryService/GetActiveTimer", {"trackId": track})["time_entry"]["id"] == timer  # type: ignore[index]
    call("TimeEntryService/StopTimer", {"id": timer})
    logged = made(
        "TimeEntryService/CreateTimeEntry",
        {
            "time_entry": {
                "taskTypeId": mixing,
                "sessionId": session,
                "startTime": "2027-03-01T10:00:00Z",
                "endTime": "2027-03-01T11:30:00Z",
            }
        },
        "time_entry",
    )
    call("TimeEntryService/UpdateTimeEntry", {"time_entry": {"id": logged, "notes": "overdubs"}})
    assert call("TimeEntryService/GetTimeEntry", {"id": logged})["time_entry"]["manually_adjusted"]  # type: ignore[index]
    listed = call(
        "TimeEntryService/ListTimeEntries", {"projectId": project, "includeSessionsAndTracks": True}
    )
    assert listed["totals"]["minutes"] == "90"  # type: ignore[index]
    summary = call("ProjectService/GetProjectSummary", {"id": project})["summary"]
    assert summary["sessions"]["booked_hours"] == "3.00"  # type: ignore[index]
    assert summary["amounts"]["time_billable"] == "90.00"  # type: ignore[index]
    [hours] = call("ClientService/ListClientProjects", {"clientId": client})["projects"]  # type: ignore[misc]
    assert hours["tracked_hours"] == "1.50"
    call("TimeEntryService/DeleteTimeEntry", {"id": logged})
    call("TimeEntryService/DeleteTimeEntry", {"id": timer})
    call("TrackService/DeleteTrack", {"id": track})
    call("TaskTypeService/DeleteTaskType", {"id": mixing})


def test_buf_curl_calls_over_connect_and_grpc_web_and_reads_error_details(
    api_server: ApiServer, studio: Tenant
) -> None:
    """buf curl's own Connect and gRPC-Web clients on the HTTP port (the schema from protos/:
    reflection is served on the gRPC port)."""
    auth = f"authorization: Bearer {studio.key}"
    for protocol, extra in (("connect", ()), ("grpcweb", ("--http2-prior-knowledge",))):
        made = _run(
            str(BIN / "buf"),
            "curl",
            "--protocol",
            protocol,
            *extra,
            "--schema",
            str(ROOT / "protos"),
            "-H",
            auth,
            "-d",
            '{"client": {"name": "Via buf"}}',
            f"{api_server.http_url}/studio.v1.ClientService/CreateClient",
        )
        assert made.returncode == 0, made.stderr
        assert json.loads(made.stdout)["client"]["name"] == "Via buf"
        missing = _run(
            str(BIN / "buf"),
            "curl",
            "--protocol",
            protocol,
            *extra,
            "--schema",
            str(ROOT / "protos"),
            "-H",
            auth,
            "-d",
            '{"id": "424242"}',
            f"{api_server.http_url}/studio.v1.SessionService/GetSession",
        )
        assert missing.returncode != 0
        error = json.loads(missing.stderr)
        assert error["code"] == "not_found"
        [debug] = [d["debug"] for d in error["details"] if "debug" in d]
        assert (debug["reason"], debug["metadata"]["sessionId"]) == ("SESSION_NOT_FOUND", "424242")
        [info] = [d["value"] for d in error["details"] if d["type"] == "google.rpc.ErrorInfo"]
        decoded = ErrorInfo.FromString(base64.b64decode(info + "=" * (-len(info) % 4)))
        assert decoded.reason == "SESSION_NOT_FOUND"
