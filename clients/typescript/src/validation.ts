// Client-side validation with the same protovalidate rules as the server, reporting the same
// field paths, so a caller can check a request before sending it.
import type { DescMessage, MessageShape } from "@bufbuild/protobuf";
import { createValidator, type Violation } from "@bufbuild/protovalidate";
import { Code, StudioError, type FieldViolation } from "./errors.js";

const validator = createValidator();

/** Rules written on a message (not a field); ours are named "<field path>.<rule>". */
function isMessageRule(violation: Violation): boolean {
  const first = violation.rule[0];
  return violation.rule.length === 0
    || (first?.kind === "field" && first.parent.typeName === "buf.validate.MessageRules");
}

/** The same path and reason the server reports (server/validation.py). */
function toFieldViolation(violation: Violation): FieldViolation {
  const parts: string[] = [];
  for (const item of violation.field) {
    if (item.kind === "field" || item.kind === "extension") {
      parts.push(item.name);
    } else if (item.kind === "list_sub") {
      parts[parts.length - 1] += `[${item.index}]`;
    } else if (item.kind === "map_sub") {
      parts[parts.length - 1] += `["${String(item.key)}"]`;
    }
  }
  let ruleId = violation.ruleId;
  if (isMessageRule(violation) && ruleId.includes(".")) {
    const split = ruleId.lastIndexOf(".");
    parts.push(ruleId.slice(0, split));
    ruleId = ruleId.slice(split + 1);
  }
  return {
    field: parts.join("."),
    description: violation.message,
    reason: ruleId.replaceAll(".", "_").toUpperCase(),
  };
}

/**
 * An update's mask may name only fields of the resource it updates, as the server checks it:
 * against the message's own descriptor (the protos keep no list of paths).
 */
function maskViolations(schema: DescMessage, message: Record<string, unknown>): FieldViolation[] {
  const mask = schema.fields.find(
    (f) => f.name === "update_mask" && f.message?.typeName === "google.protobuf.FieldMask",
  );
  const resource = schema.fields.find((f) => f.fieldKind === "message" && f !== mask)?.message;
  if (mask === undefined || resource === undefined) {
    return [];
  }
  const paths = (message[mask.localName] as { paths?: string[] } | undefined)?.paths ?? [];
  const known = new Set(resource.fields.map((f) => f.name));
  const unknown = paths.filter((p) => p !== "*" && !known.has(p));
  if (unknown.length === 0) {
    return [];
  }
  const description = `${unknown.map((p) => `"${p}"`).join(", ")} is not a field of ${resource.typeName}`;
  return [{ field: "update_mask", description, reason: "FIELD_MASK_IN" }];
}

/** The violations of a request, as the server would report them. */
export function violations<Desc extends DescMessage>(schema: Desc, message: MessageShape<Desc>): FieldViolation[] {
  const result = validator.validate(schema, message);
  const found = result.kind === "invalid" ? result.error.violations.map(toFieldViolation) : [];
  return [...found, ...maskViolations(schema, message as Record<string, unknown>)];
}

/** Throw the StudioError the server would answer (INVALID_ARGUMENT) if the request is invalid. */
export function assertValid<Desc extends DescMessage>(schema: Desc, message: MessageShape<Desc>): void {
  const found = violations(schema, message);
  if (found.length > 0) {
    const summary = found.map((v) => `${v.field}: ${v.description}`).join("; ");
    throw new StudioError(Code.InvalidArgument, "INVALID_ARGUMENT", `the request is invalid: ${summary}`, {}, found);
  }
}
