import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { createStudioClient, StudioError } from "../src/index.js";

export async function bookIntoProjectThenUnlink(baseUrl: string, apiKey: string) {
  const studio = createStudioClient({ baseUrl, apiKey });

  const { client } = await studio.clients.createClient({ client: { name: "Ada Lovelace" } });
  const { room } = await studio.rooms.createRoom({ room: { name: "Studio A", hourlyRate: "75.00" } });
  const { project } = await studio.projects.createProject({
    project: { clientId: client!.id, name: "First album" },
  });

  const { session } = await studio.sessions.createSession({
    session: {
      clientId: client!.id,
      roomId: room!.id,
      projectId: project!.id, // leave it out for a standalone booking
      title: "Drums",
      startTime: timestampFromDate(new Date("2026-12-01T10:00:00Z")),
      endTime: timestampFromDate(new Date("2026-12-01T14:00:00Z")),
    },
    requestId: crypto.randomUUID(), // a retry with the same id books nothing twice
  });

  // Unlink: name project_id in the mask and leave it unset.
  const { session: unlinked } = await studio.sessions.updateSession({
    session: { id: session!.id },
    updateMask: { paths: ["project_id"] },
  });

  try {
    await studio.sessions.getSession({ id: 999_999n });
  } catch (error) {
    if (error instanceof StudioError && error.reason === "SESSION_NOT_FOUND") {
      console.log("no such session:", error.info["sessionId"]);
    }
  }
  return { booked: session!, unlinked: unlinked! };
}
