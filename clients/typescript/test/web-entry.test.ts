// The browser entry (src/web.ts: Connect over fetch()) against the server's HTTP port, from
// Node: the same services and the same StudioError as over gRPC. The page in a real browser
// is tests/test_web_page.py.
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { Code, createStudioWebClient, StudioError } from "../src/web.js";

function env(name: string): string {
  const value = process.env[name];
  assert.ok(value, `${name} is not set: run this suite through tests/test_typescript_client.py`);
  return value;
}

describe("the browser entry, over Connect", () => {
  test("books, unlinks, and fails with the same StudioError", async () => {
    const studio = createStudioWebClient({ baseUrl: env("STUDIO_HTTP_URL"), apiKey: env("STUDIO_API_KEY") });
    const { client } = await studio.clients.createClient({ client: { name: "Web caller" } });
    const { room } = await studio.rooms.createRoom({ room: { name: "Room W" } });
    const { project } = await studio.projects.createProject({ project: { clientId: client!.id, name: "Web EP" } });
    const start = new Date("2027-09-01T10:00:00Z").getTime() / 1000;
    const { session } = await studio.sessions.createSession({
      session: {
        clientId: client!.id, roomId: room!.id, projectId: project!.id, title: "Over Connect",
        startTime: { seconds: BigInt(start) }, endTime: { seconds: BigInt(start + 3600) },
      },
    });
    assert.equal(session!.projectId, project!.id);
    const { session: unlinked } = await studio.sessions.updateSession({
      session: { id: session!.id }, updateMask: { paths: ["project_id"] },
    });
    assert.equal(unlinked!.projectId, undefined);
    const listed = await studio.sessions.listSessions({ projectId: project!.id }); // a GET
    assert.equal(listed.sessions.length, 0);

    const missing = await studio.sessions.getSession({ id: 987_654_321n }).catch((e: unknown) => e);
    assert.ok(missing instanceof StudioError);
    assert.equal(missing.code, Code.NotFound);
    assert.equal(missing.reason, "SESSION_NOT_FOUND");
    assert.equal(missing.info["sessionId"], "987654321");

    const invalid = await studio.sessions.createSession({ session: { clientId: client!.id } }).catch((e: unknown) => e);
    assert.ok(invalid instanceof StudioError);
    assert.equal(invalid.code, Code.InvalidArgument);
    assert.equal(invalid.violation("session.room_id"), "REQUIRED");

    const reader = createStudioWebClient({ baseUrl: env("STUDIO_HTTP_URL"), apiKey: env("STUDIO_READ_ONLY_KEY") });
    const refused = await reader.clients.createClient({ client: { name: "No" } }).catch((e: unknown) => e);
    assert.ok(refused instanceof StudioError);
    assert.equal(refused.reason, "READ_ONLY_KEY");
  });
});
