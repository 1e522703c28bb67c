// The seven services over any connect-es transport (gRPC from Node, Connect from a browser),
// with the API key sent and every failure turned into a StudioError: what both entries share.
import { createClient, type Client, type Interceptor, type Transport } from "@connectrpc/connect";
import { ClientService } from "../../../generated/ts/studio/v1/client_pb.js";
import { ProjectService } from "../../../generated/ts/studio/v1/project_pb.js";
import { RoomService } from "../../../generated/ts/studio/v1/room_pb.js";
import { SessionService } from "../../../generated/ts/studio/v1/session_pb.js";
import { TaskTypeService } from "../../../generated/ts/studio/v1/task_type_pb.js";
import { TimeEntryService } from "../../../generated/ts/studio/v1/time_entry_pb.js";
import { TrackService } from "../../../generated/ts/studio/v1/track_pb.js";
import { toStudioError } from "./errors.js";

export interface StudioClient {
  clients: Client<typeof ClientService>;
  rooms: Client<typeof RoomService>;
  projects: Client<typeof ProjectService>;
  sessions: Client<typeof SessionService>;
  tracks: Client<typeof TrackService>;
  taskTypes: Client<typeof TaskTypeService>;
  timeEntries: Client<typeof TimeEntryService>;
}

/** Sends the studio's API key with every call; every failure arrives as a StudioError. */
export function studioInterceptor(apiKey: string): Interceptor {
  return (next) => async (request) => {
    request.header.set("authorization", `Bearer ${apiKey}`);
    try {
      return await next(request);
    } catch (error) {
      throw toStudioError(error);
    }
  };
}

export function studioClientOver(transport: Transport): StudioClient {
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
