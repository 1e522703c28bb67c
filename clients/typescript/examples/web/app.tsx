// A page that books a session into a project, unlinks it, and shows a field violation the
// server returned: React with TanStack Query through @connectrpc/connect-query (the closest
// thing to tRPC's React hooks), over the Connect protocol (src/web.ts). The list of the
// project's sessions is a query: connect-query sends it as a Connect GET.
//
// For this demo the page takes the server and an API key from its address:
//   index.html?api=http://127.0.0.1:8080&key=sk_...   (with studio serve --cors-origin <origin>)
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { TransportProvider, useMutation, useQuery } from "@connectrpc/connect-query";
import { QueryClient, QueryClientProvider, skipToken, useQueryClient } from "@tanstack/react-query";
import { useState } from "react";
import { createRoot } from "react-dom/client";
import {
  ClientService,
  createStudioWebTransport,
  ProjectService,
  RoomService,
  SessionService,
  StudioError,
  type Session,
} from "../../src/web.js";

const params = new URLSearchParams(window.location.search);
const transport = createStudioWebTransport({
  baseUrl: params.get("api") ?? "http://127.0.0.1:8080",
  apiKey: params.get("key") ?? "",
});
const queryClient = new QueryClient({ defaultOptions: { queries: { retry: false } } });
const start = new Date("2027-03-01T10:00:00Z");
const hours = (n: number) => new Date(start.getTime() + n * 3600_000);

/** A failed call as the page shows it: the ErrorInfo reason, then each field violation. */
function Failure({ id, error }: { id: string; error: unknown }) {
  if (!(error instanceof StudioError)) {
    return <p className="error" id={`${id}-error`}>{String(error)}</p>;
  }
  return (
    <div className="error">
      <p id={`${id}-error`} data-code={error.code} data-reason={error.reason}>
        {error.reason}: {error.rawMessage}
      </p>
      <ul id={`${id}-violations`}>
        {error.fieldViolations.map((v) => (
          <li key={v.field} data-field={v.field} data-reason={v.reason}>
            <code>{v.field}</code> {v.description} ({v.reason})
          </li>
        ))}
      </ul>
    </div>
  );
}

function Booking() {
  const cache = useQueryClient();
  const createClient = useMutation(ClientService.method.createClient);
  const createRoom = useMutation(RoomService.method.createRoom);
  const createProject = useMutation(ProjectService.method.createProject);
  const createSession = useMutation(SessionService.method.createSession);
  const updateSession = useMutation(SessionService.method.updateSession, {
    onSuccess: () => cache.invalidateQueries(),
  });
  const invalidBooking = useMutation(SessionService.method.createSession);
  const [booked, setBooked] = useState<Session>();
  const [projectId, setProjectId] = useState<bigint>();
  const inProject = useQuery(
    SessionService.method.listSessions,
    projectId === undefined ? skipToken : { projectId },
  );

  async function book() {
    const { client } = await createClient.mutateAsync({ client: { name: "Ada Lovelace" } });
    const { room } = await createRoom.mutateAsync({ room: { name: "Studio A" } });
    const { project } = await createProject.mutateAsync({
      project: { clientId: client!.id, name: "First album" },
    });
    const { session } = await createSession.mutateAsync({
      session: {
        clientId: client!.id, roomId: room!.id, projectId: project!.id, title: "Drums",
        startTime: timestampFromDate(hours(0)), endTime: timestampFromDate(hours(4)),
      },
    });
    setProjectId(project!.id);
    setBooked(session);
  }

  const unlinked = updateSession.data?.session;
  const failure = [createClient, createRoom, createProject, createSession, updateSession]
    .map((m) => m.error).find((e) => e);
  return (
    <>
      <h1>Book a session</h1>
      <button id="book" onClick={() => void book().catch(() => undefined)}>
        Book a session into a project
      </button>
      {booked && (
        <p className="ok" id="booked">
          Session {String(booked.id)} booked into project {String(booked.projectId)}
        </p>
      )}
      {inProject.data && (
        <p id="project-sessions">
          The project has {inProject.data.sessions.length} session(s)
        </p>
      )}
      <button
        id="unlink"
        disabled={!booked}
        onClick={() => booked && updateSession.mutate({
          session: { id: booked.id }, updateMask: { paths: ["project_id"] },
        })}
      >
        Unlink it from the project
      </button>
      {unlinked && (
        <p className="ok" id="unlinked">
          Session {String(unlinked.id)} is {unlinked.projectId === undefined ? "standalone" : "linked"} now
        </p>
      )}
      <button
        id="invalid"
        onClick={() => invalidBooking.mutate({
          session: { clientId: booked?.clientId ?? 1n, title: "No room, ends before it starts",
                     startTime: timestampFromDate(hours(4)), endTime: timestampFromDate(hours(2)) },
        })}
      >
        Book without a room, ending before it starts
      </button>
      {invalidBooking.error && <Failure id="invalid" error={invalidBooking.error} />}
      {failure && <Failure id="failure" error={failure} />}
    </>
  );
}

createRoot(document.getElementById("root")!).render(
  <TransportProvider transport={transport}>
    <QueryClientProvider client={queryClient}>
      <Booking />
    </QueryClientProvider>
  </TransportProvider>,
);
