/**
 * Typed errors: one class per failure mode, each with a stable `code` that tests and
 * metrics use (never the message text). Messages say what failed and where; they must
 * never contain secret material.
 */
export class FleetswanError extends Error {
  /** Stable machine-readable code, e.g. "CONFIG_INVALID". */
  readonly code: string;
  /** Structured context (object names, fields, values) for logs and API replies. */
  readonly details: Record<string, unknown>;

  constructor(code: string, message: string, details: Record<string, unknown> = {}, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
    this.code = code;
    this.details = details;
  }
}

/** A configuration file or API input that does not validate. `where` is "file:line:field". */
export class ConfigError extends FleetswanError {
  constructor(message: string, readonly where: string, details: Record<string, unknown> = {}) {
    super("CONFIG_INVALID", `${where}: ${message}`, { where, ...details });
  }
}

/** A referenced object (connection, gateway, secret, SA) does not exist. */
export class NotFoundError extends FleetswanError {
  constructor(kind: string, name: string) {
    super("NOT_FOUND", `${kind} "${name}" not found`, { kind, name });
  }
}

/** A write based on an old revision (optimistic concurrency). */
export class ConflictError extends FleetswanError {
  constructor(message: string, details: Record<string, unknown> = {}) {
    super("CONFLICT", message, details);
  }
}

/** Permission denied: bad token, wrong gateway, forbidden subject. */
export class PermissionError extends FleetswanError {
  constructor(message: string, details: Record<string, unknown> = {}) {
    super("PERMISSION_DENIED", message, details);
  }
}

/** A dependency (NATS, dataplane, kernel) is unavailable or timed out. */
export class UnavailableError extends FleetswanError {
  constructor(message: string, details: Record<string, unknown> = {}, options?: { cause?: unknown }) {
    super("UNAVAILABLE", message, details, options);
  }
}

/** The kernel refused a request; carries errno and what we asked for. */
export class KernelError extends FleetswanError {
  constructor(message: string, readonly errno: number, readonly request: string, details: Record<string, unknown> = {}) {
    super("KERNEL_ERROR", `${message} (errno ${errno}) while ${request}`, { errno, request, ...details });
  }
}

/** Cryptographic policy violation: weak or unknown algorithm, short key. */
export class WeakCryptoError extends FleetswanError {
  constructor(message: string, details: Record<string, unknown> = {}) {
    super("WEAK_CRYPTO", message, details);
  }
}
