import { inspect } from "node:util";

const REDACTED = "[REDACTED]";

/**
 * A value that must never be printed: PSKs, private keys, SA keys, tokens.
 * String(), JSON.stringify(), util.inspect() and template literals all yield "[REDACTED]";
 * the bytes are only reachable through reveal(), which makes every use greppable.
 */
export class Secret {
  readonly #value: Buffer;

  constructor(value: Buffer | Uint8Array | string) {
    this.#value = typeof value === "string" ? Buffer.from(value, "utf8") : Buffer.from(value);
  }

  /** The secret bytes. Callers must not log, store in clear or put them in errors. */
  reveal(): Buffer {
    return this.#value;
  }

  /** Length in bytes (safe to print). */
  get length(): number {
    return this.#value.length;
  }

  /** Constant-time comparison. */
  equals(other: Secret): boolean {
    const a = this.#value;
    const b = other.reveal();
    if (a.length !== b.length) return false;
    let diff = 0;
    for (let i = 0; i < a.length; i++) diff |= a[i]! ^ b[i]!;
    return diff === 0;
  }

  /** Overwrite the bytes (best effort: Node may hold copies). */
  wipe(): void {
    this.#value.fill(0);
  }

  toString(): string {
    return REDACTED;
  }

  toJSON(): string {
    return REDACTED;
  }

  [Symbol.toPrimitive](): string {
    return REDACTED;
  }

  [inspect.custom](): string {
    return `Secret(${REDACTED})`;
  }
}
