export { createStudioClient, type StudioClient, type StudioClientOptions } from "./client.js";
export { Code, ErrorReason, StudioError, toStudioError, type FieldViolation, type Reason } from "./errors.js";
export { assertValid, violations } from "./validation.js";
export * from "../../../generated/ts/studio/v1/client_pb.js";
export * from "../../../generated/ts/studio/v1/room_pb.js";
export * from "../../../generated/ts/studio/v1/project_pb.js";
export * from "../../../generated/ts/studio/v1/session_pb.js";
