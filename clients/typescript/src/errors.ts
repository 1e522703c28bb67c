// Errors a caller can switch on: the gRPC code, and the ErrorInfo reason the server sends in
// google.rpc.Status, with the BadRequest field violations for input errors.
import { Code, ConnectError } from "@connectrpc/connect";
import { BadRequestSchema, ErrorInfoSchema } from "../../../generated/ts/google/rpc/error_details_pb.js";
import { ErrorReason } from "../../../generated/ts/studio/v1/error_reason_pb.js";

/**
 * Every reason studio-rpc sends (ErrorInfo.reason, domain "studio.v1"): the names of the
 * proto enum studio.v1.ErrorReason, generated with it (a new reason needs no edit here), and
 * "UNKNOWN" for a failure that carries no ErrorInfo (grpc's own answers, a broken connection).
 */
export type Reason = Exclude<keyof typeof ErrorReason, "UNSPECIFIED"> | "UNKNOWN";

export interface FieldViolation {
  /** Path in the request, e.g. "session.project_id". */
  field: string;
  description: string;
  /** UPPER_SNAKE rule, e.g. "REQUIRED", "INT64_GT". */
  reason: string;
}

/**
 * A failed call: `code` (gRPC), `reason` (ErrorInfo), `info` (ErrorInfo metadata, e.g.
 * sessionId, requestId) and `fieldViolations` (BadRequest). It extends ConnectError, so
 * connect passes it through interceptors unchanged (its `name` stays "ConnectError", which is
 * what connect checks).
 */
export class StudioError extends ConnectError {
  // ConnectError's own instanceof check accepts any ConnectError; ours must not.
  static override [Symbol.hasInstance](value: unknown): boolean {
    return typeof value === "object" && value !== null && StudioError.prototype.isPrototypeOf(value);
  }

  constructor(
    code: Code,
    readonly reason: Reason,
    message: string,
    readonly info: Readonly<Record<string, string>> = {},
    readonly fieldViolations: readonly FieldViolation[] = [],
    cause?: unknown,
  ) {
    super(message, code, undefined, undefined, cause);
  }

  /** The violation reason of one field, if that field was refused. */
  violation(field: string): string | undefined {
    return this.fieldViolations.find((v) => v.field === field)?.reason;
  }
}

/** Turn anything a call threw into a StudioError, reading google.rpc.Status details. */
export function toStudioError(error: unknown): StudioError {
  if (error instanceof StudioError) {
    return error;
  }
  const connectError = ConnectError.from(error);
  const [info] = connectError.findDetails(ErrorInfoSchema);
  const violations = connectError
    .findDetails(BadRequestSchema)
    .flatMap((badRequest) => badRequest.fieldViolations)
    .map(({ field, description, reason }) => ({ field, description, reason }));
  return new StudioError(
    connectError.code,
    (info?.reason ?? "UNKNOWN") as Reason,
    connectError.rawMessage,
    info?.metadata ?? {},
    violations,
    error,
  );
}

export { Code, ErrorReason };
