// The mission, walked by a TypeScript caller against a real server and real PostgreSQL.
// The Python suite starts the server and passes STUDIO_BASE_URL, STUDIO_API_KEY and
// STUDIO_READ_ONLY_KEY (tests/test_typescript_client.py).
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { create } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { bookIntoProjectThenUnlink } from "../examples/quickstart.js";
import {
  Code,
  CreateSessionRequestSchema,
  createStudioClient,
  SessionStatus,
  StudioError,
  UpdateTrackRequestSchema,
  violations,
  type CreateSessionRequest,
} from "../src/index.js";

function env(name: string): string {
  const value = process.env[name];
  assert.ok(value, `${name} is not set: run this suite through tests/test_typescript_client.py`);
  return value;
}

const baseUrl = env("STUDIO_BASE_URL");
const studio = createStudioClient({ baseUrl, apiKey: env("STUDIO_API_KEY") });
const hour = 3600_000;

async function failure(call: () => Promise<unknown>): Promise<StudioError> {
  try {
    await call();
  } catch (error) {
    assert.ok(error instanceof StudioError, `not a StudioError: ${String(error)}`);
    return error;
  }
  assert.fail("the call succeeded");
}

async function basics() {
  const { client } = await studio.clients.createClient({ client: { name: "Nina Simone" } });
  const { room } = await studio.rooms.createRoom({ room: { name: "Room B" } });
  const { project } = await studio.projects.createProject({
    project: { clientId: client!.id, name: "Pastel Blues" },
  });
  return { client: client!, room: room!, project: project! };
}

function sessionAt(clientId: bigint, roomId: bigint, startMs: number, projectId?: bigint) {
  return {
    clientId,
    roomId,
    projectId,
    title: `Take at ${startMs}`,
    startTime: timestampFromDate(new Date(startMs)),
    endTime: timestampFromDate(new Date(startMs + 3 * hour)),
  };
}

describe("the README quickstart", () => {
  test("books into a project and unlinks", async () => {
    const { booked, unlinked } = await bookIntoProjectThenUnlink(baseUrl, env("STUDIO_API_KEY"));
    assert.notEqual(booked.projectId, undefined);
    assert.equal(unlinked.projectId, undefined);
    assert.equal(unlinked.title, "Drums");
  });
});

describe("sessions and projects", () => {
  test("standalone, linked, unlinked, relinked, and kept when the project goes", async () => {
    const { client, room, project } = await basics();
    const start = Date.UTC(2027, 0, 4, 10);
    const { session: alone } = await studio.sessions.createSession({ session: sessionAt(client.id, room.id, start) });
    assert.equal(alone!.projectId, undefined);

    const { session: linked } = await studio.sessions.createSession({
      session: sessionAt(client.id, room.id, start + 24 * hour, project.id),
    });
    assert.equal(linked!.projectId, project.id);

    const { session: unlinked } = await studio.sessions.updateSession({
      session: { id: linked!.id },
      updateMask: { paths: ["project_id"] },
    });
    assert.equal(unlinked!.projectId, undefined);

    const { session: relinked } = await studio.sessions.updateSession({
      session: { id: linked!.id, projectId: project.id },
    });
    assert.equal(relinked!.projectId, project.id);
    assert.equal(relinked!.title, linked!.title);

    await studio.projects.deleteProject({ id: project.id });
    const { session: kept } = await studio.sessions.getSession({ id: linked!.id });
    assert.equal(kept!.projectId, undefined);
    assert.equal(kept!.title, linked!.title);
  });

  test("lists a project's sessions a page at a time", async () => {
    const { client, room, project } = await basics();
    const start = Date.UTC(2027, 2, 1, 9);
    for (let day = 0; day < 5; day++) {
      await studio.sessions.createSession({ session: sessionAt(client.id, room.id, start + day * 24 * hour, project.id) });
    }
    await studio.sessions.createSession({ session: sessionAt(client.id, room.id, start + 9 * 24 * hour) });
    const seen: bigint[] = [];
    let pageToken = "";
    let pages = 0;
    do {
      const page = await studio.sessions.listSessions({ projectId: project.id, pageSize: 2, pageToken });
      seen.push(...page.sessions.map((s) => s.id));
      pageToken = page.nextPageToken;
      pages++;
    } while (pageToken);
    assert.equal(pages, 3);
    assert.equal(new Set(seen).size, 5);
  });
});

describe("every documented error, as a typed StudioError", () => {
  test("not found, failed preconditions, aborted", async () => {
    const { client, room, project } = await basics();
    const other = (await studio.clients.createClient({ client: { name: "Someone else" } })).client!;
    const start = Date.UTC(2027, 5, 1, 10);

    let error = await failure(() => studio.sessions.getSession({ id: 987_654n }));
    assert.equal(error.code, Code.NotFound);
    assert.equal(error.reason, "SESSION_NOT_FOUND");

    const cases: Array<[ReturnType<typeof sessionAt>, string]> = [
      [sessionAt(999_999n, room.id, start), "CLIENT_NOT_FOUND"],
      [sessionAt(client.id, 999_999n, start), "ROOM_NOT_FOUND"],
      [sessionAt(client.id, room.id, start, 999_999n), "PROJECT_NOT_FOUND"],
      [sessionAt(other.id, room.id, start, project.id), "PROJECT_CLIENT_MISMATCH"],
    ];
    for (const [session, reason] of cases) {
      error = await failure(() => studio.sessions.createSession({ session }));
      assert.equal(error.code, Code.FailedPrecondition);
      assert.equal(error.reason, reason);
    }

    error = await failure(() => studio.clients.deleteClient({ id: client.id }));
    assert.equal(error.reason, "CLIENT_HAS_PROJECTS");

    const { session } = await studio.sessions.createSession({ session: sessionAt(client.id, room.id, start) });
    await studio.sessions.updateSession({ session: { id: session!.id, title: "Vocals", etag: session!.etag } });
    error = await failure(() =>
      studio.sessions.updateSession({ session: { id: session!.id, title: "Bass", etag: session!.etag } }),
    );
    assert.equal(error.code, Code.Aborted);
    assert.equal(error.reason, "ETAG_MISMATCH");
  });

  test("invalid input lists each field, and the client-side check agrees", async () => {
    const request: CreateSessionRequest = create(CreateSessionRequestSchema, {
      session: {
        clientId: 1n,
        roomId: 0n,
        projectId: 0n,
        title: "",
        startTime: timestampFromDate(new Date(Date.UTC(2027, 0, 1, 12))),
        endTime: timestampFromDate(new Date(Date.UTC(2027, 0, 1, 11))),
      },
    });
    const local = violations(CreateSessionRequestSchema, request);
    const error = await failure(() => studio.sessions.createSession(request));
    assert.equal(error.code, Code.InvalidArgument);
    assert.equal(error.reason, "INVALID_ARGUMENT");
    const server = Object.fromEntries(error.fieldViolations.map((v) => [v.field, v.reason]));
    assert.deepEqual(server, {
      "session.room_id": "REQUIRED",
      "session.project_id": "INT64_GT",
      "session.title": "REQUIRED",
      "session.end_time": "AFTER_START_TIME",
    });
    assert.deepEqual(Object.fromEntries(local.map((v) => [v.field, v.reason])), server);
  });

  test("unauthenticated and read-only callers", async () => {
    const stranger = createStudioClient({ baseUrl, apiKey: "sk_000000000000_wrong" });
    let error = await failure(() => stranger.clients.listClients({}));
    assert.equal(error.code, Code.Unauthenticated);
    assert.equal(error.reason, "INVALID_API_KEY");

    const reader = createStudioClient({ baseUrl, apiKey: env("STUDIO_READ_ONLY_KEY") });
    await reader.clients.listClients({});
    error = await failure(() => reader.clients.createClient({ client: { name: "Nope" } }));
    assert.equal(error.code, Code.PermissionDenied);
    assert.equal(error.reason, "READ_ONLY_KEY");
  });
});

describe("rooms, tracks, time and what a project link is for", () => {
  test("a room is booked once at a time, and the refusal names the session holding it", async () => {
    const { client, room } = await basics();
    const start = Date.UTC(2027, 8, 1, 10);
    const { session: held } = await studio.sessions.createSession({ session: sessionAt(client.id, room.id, start) });
    const error = await failure(() =>
      studio.sessions.createSession({ session: sessionAt(client.id, room.id, start + hour) }),
    );
    assert.equal(error.code, Code.FailedPrecondition);
    assert.equal(error.reason, "ROOM_ALREADY_BOOKED");
    assert.equal(error.info["conflictingSessionId"], String(held!.id));
    await studio.sessions.updateSession({
      session: { id: held!.id, status: SessionStatus.CANCELLED },
      updateMask: { paths: ["status"] },
    });
    await studio.sessions.createSession({ session: sessionAt(client.id, room.id, start + hour) });
  });

  test("one timer per context, even started at once; the summary and the client's projects add it up", async () => {
    const { client, room, project } = await basics();
    const start = Date.UTC(2027, 9, 1, 10);
    const { session } = await studio.sessions.createSession({
      session: sessionAt(client.id, room.id, start, project.id),
    });
    const { track } = await studio.tracks.createTrack({ track: { projectId: project.id, title: "Intro", trackNumber: 1 } });
    const { taskType } = await studio.taskTypes.createTaskType({ taskType: { name: "Mixing", hourlyRate: "60.00" } });

    const started = await Promise.allSettled(
      Array.from({ length: 8 }, () =>
        studio.timeEntries.startTimer({ taskTypeId: taskType!.id, context: { case: "trackId", value: track!.id } }),
      ),
    );
    const won = started.filter((r) => r.status === "fulfilled");
    assert.equal(won.length, 1);
    const timer = (won[0] as PromiseFulfilledResult<{ timeEntry?: { id: bigint } }>).value.timeEntry!;
    for (const lost of started.filter((r) => r.status === "rejected")) {
      const reason = (lost as PromiseRejectedResult).reason as StudioError;
      assert.equal(reason.reason, "TIMER_ALREADY_RUNNING");
      assert.equal(reason.info["timeEntryId"], String(timer.id));
    }
    const { timeEntry: stopped } = await studio.timeEntries.stopTimer({ id: timer.id });
    assert.notEqual(stopped!.endTime, undefined);

    const { timeEntry: logged } = await studio.timeEntries.createTimeEntry({
      timeEntry: {
        taskTypeId: taskType!.id,
        context: { case: "sessionId", value: session!.id },
        startTime: timestampFromDate(new Date(start)),
        endTime: timestampFromDate(new Date(start + 1.5 * hour)),
      },
    });
    assert.equal(logged!.durationMinutes, 90);
    assert.equal(logged!.billableAmount, "90.00");

    const { summary } = await studio.projects.getProjectSummary({ id: project.id });
    assert.equal(summary!.sessions!.count, 1n);
    assert.equal(summary!.sessions!.bookedHours, "3.00");
    assert.equal(summary!.tracks!.count, 1n);
    assert.equal(summary!.time!.minutes, 90n + BigInt(stopped!.durationMinutes ?? 0));
    const cents = (amount: string) => BigInt(amount.replace(".", "")); // exact: "90.00" -> 9000n
    assert.equal(cents(summary!.time!.billableAmount), cents("90.00") + cents(stopped!.billableAmount));
    assert.equal(summary!.amounts!.timeBillable, summary!.time!.billableAmount);

    const { projects } = await studio.clients.listClientProjects({ clientId: client.id });
    assert.deepEqual(projects.map((p) => [p.project!.id, p.bookedHours]), [[project.id, "3.00"]]);
  });

  test("a mask path that is not a field: the client-side check agrees with the server", async () => {
    const { project } = await basics();
    const { track } = await studio.tracks.createTrack({ track: { projectId: project.id, title: "Outro" } });
    const request = create(UpdateTrackRequestSchema, { track: { id: track!.id }, updateMask: { paths: ["tempo"] } });
    const local = violations(UpdateTrackRequestSchema, request);
    const error = await failure(() => studio.tracks.updateTrack(request));
    assert.equal(error.code, Code.InvalidArgument);
    assert.deepEqual(error.fieldViolations, local);
    assert.equal(error.violation("update_mask"), "FIELD_MASK_IN");
  });
});

describe("types", () => {
  test("a misspelled field does not compile", () => {
    const typed = () =>
      // @ts-expect-error: "titel" is not a field of Session (tsc fails if this compiles)
      studio.sessions.createSession({ session: { titel: "Drums" } });
    assert.equal(typeof typed, "function");
  });
});
