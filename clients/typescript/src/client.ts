// A typed studio-rpc client over real gRPC (HTTP/2), from the same protos as the server.
import { createClient, type Client, type Interceptor } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { ClientService } from "../../../generated/ts/studio/v1/client_pb.js";
import { ProjectService } from "../../../generated/ts/studio/v1/project_pb.js";
import { RoomService } from "../../../generated/ts/studio/v1/room_pb.js";
import { SessionService } from "../../../generated/ts/studio/v1/session_pb.js";
import { TaskTypeService } from "../../../generated/ts/studio/v1/task_type_pb.js";
import { TimeEntryService } from "../../../generated/ts/studio/v1/time_entry_pb.js";
import { TrackService } from "../../../generated/ts/studio/v1/track_pb.js";
import { toStudioError } from "./errors.js";

export interface StudioClientOptions {
  /** e.g. "http://127.0.0.1:50051" */
  baseUrl: string;
  /** The studio's API key; it decides which studio every call reaches. */
  apiKey: string;
  /** Default deadline of each call, in milliseconds. */
  timeoutMs?: number;
}

export interface StudioClient {
  clients: Client<typeof ClientService>;
  rooms: Client<typeof RoomService>;
  projects: Client<typeof ProjectService>;
  sessions: Client<typeof SessionService>;
  tracks: Client<typeof TrackService>;
  taskTypes: Client<typeof TaskTypeService>;
  timeEntries: Client<typeof TimeEntryService>;
}

export function createStudioClient(options: StudioClientOptions): StudioClient {
  const authenticate: Interceptor = (next) => async (request) => {
    request.header.set("authorization", `Bearer ${options.apiKey}`);
    try {
      return await next(request);
    } catch (error) {
      throw toStudioError(error); // every failure arrives as a StudioError
    }
  };
  const transport = createGrpcTransport({
    baseUrl: options.baseUrl,
    interceptors: [authenticate],
    defaultTimeoutMs: options.timeoutMs ?? 10_000,
  });
  return {
    clients: createClient(ClientService, transport),
    rooms: createClient(RoomService, transport),
    projects: createClient(ProjectService, transport),
    sessions: createClient(SessionService, transport),
    tracks: createClient(TrackService, transport),
    taskTypes: createClient(TaskTypeService, transport),
    timeEntries: createClient(TimeEntryService, transport),
  };
}
