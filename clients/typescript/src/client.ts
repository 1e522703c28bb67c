// A typed studio-rpc client over real gRPC (HTTP/2), from the same protos as the server.
// Browsers use the Connect entry instead (./web.ts): the same services, the same StudioError.
import { createGrpcTransport } from "@connectrpc/connect-node";
import { studioClientOver, studioInterceptor, type StudioClient } from "./services.js";

export type { StudioClient } from "./services.js";

export interface StudioClientOptions {
  /** e.g. "http://127.0.0.1:50051" */
  baseUrl: string;
  /** The studio's API key; it decides which studio every call reaches. */
  apiKey: string;
  /** Default deadline of each call, in milliseconds. */
  timeoutMs?: number;
}

export function createStudioClient(options: StudioClientOptions): StudioClient {
  const transport = createGrpcTransport({
    baseUrl: options.baseUrl,
    interceptors: [studioInterceptor(options.apiKey)],
    defaultTimeoutMs: options.timeoutMs ?? 10_000,
  });
  return studioClientOver(transport);
}
