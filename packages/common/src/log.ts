import { pino, type Logger } from "pino";
import { Secret } from "./secret.js";

export type { Logger };

/**
 * Structured JSON logging (pino) to stderr. Any Secret in a log object prints as
 * "[REDACTED]" through its toJSON(); the serializer below also catches Buffers under
 * key-like names, so key bytes cannot slip out by accident.
 */
export function createLogger(service: string, options: { level?: string; destination?: NodeJS.WritableStream } = {}): Logger {
  const level = options.level ?? process.env.FLEETSWAN_LOG_LEVEL ?? "info";
  return pino(
    {
      level,
      base: { service },
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: { level: (label) => ({ level: label }) },
      hooks: {
        logMethod(args, method) {
          // Redact secret-bearing fields in the merge object.
          if (args.length > 0 && typeof args[0] === "object" && args[0] !== null) {
            args[0] = redact(args[0] as Record<string, unknown>) as never;
          }
          method.apply(this, args);
        },
      },
    },
    (options.destination ?? process.stderr) as never,
  );
}

const SECRET_KEY = /(^|_)(psk|secret|key|keys|token|password|privatekey|private_key|keymat)$/i;

/** Replace secret-looking values (Secret, or bytes/strings under a key-like name) with "[REDACTED]". */
export function redact(value: unknown, depth = 0): unknown {
  if (value instanceof Secret) return "[REDACTED]";
  if (depth > 6 || value === null || typeof value !== "object") return value;
  if (value instanceof Error) return value;
  if (Array.isArray(value)) return value.map((v) => redact(v, depth + 1));
  if (Buffer.isBuffer(value) || value instanceof Uint8Array) return value;
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(value as Record<string, unknown>)) {
    if (SECRET_KEY.test(k) && (typeof v === "string" || v instanceof Uint8Array)) out[k] = "[REDACTED]";
    else out[k] = redact(v, depth + 1);
  }
  return out;
}
