// The browser entry: the same services over the Connect protocol (fetch(), HTTP/1.1 or
// HTTP/2) to the server's --http-port, with the same StudioError as the Node client.
// Queries (NO_SIDE_EFFECTS) go as GET requests, which HTTP caches may keep.
import type { Transport } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-web";
import { studioClientOver, studioInterceptor, type StudioClient } from "./services.js";

export interface StudioWebClientOptions {
  /** The server's HTTP port, e.g. "http://127.0.0.1:8080"; a page of another origin needs
   * `studio serve --cors-origin <its origin>`. */
  baseUrl: string;
  /** An API key of the studio; it decides which studio every call reaches. */
  apiKey: string;
  /** Default deadline of each call, in milliseconds (sent as connect-timeout-ms). */
  timeoutMs?: number;
  /** Binary protobuf instead of JSON on the wire (JSON reads better in devtools). */
  useBinaryFormat?: boolean;
}

/** The transport, for connect-query's <TransportProvider> or your own clients. */
export function createStudioWebTransport(options: StudioWebClientOptions): Transport {
  return createConnectTransport({
    baseUrl: options.baseUrl,
    interceptors: [studioInterceptor(options.apiKey)],
    defaultTimeoutMs: options.timeoutMs ?? 10_000,
    useBinaryFormat: options.useBinaryFormat ?? false,
    useHttpGet: true,
  });
}

export function createStudioWebClient(options: StudioWebClientOptions): StudioClient {
  return studioClientOver(createStudioWebTransport(options));
}

export type { StudioClient } from "./services.js";
export { Code, StudioError, toStudioError, type FieldViolation, type Reason } from "./errors.js";
export { assertValid, violations } from "./validation.js";
export * from "../../../generated/ts/studio/v1/client_pb.js";
export * from "../../../generated/ts/studio/v1/room_pb.js";
export * from "../../../generated/ts/studio/v1/project_pb.js";
export * from "../../../generated/ts/studio/v1/session_pb.js";
