/**
 * Decode errors. Every failure to parse an IKE message is an IkeDecodeError with a stable
 * `code`; `notifyType` says which Notify the state machine answers with (RFC 7296 §2.21):
 * INVALID_SYNTAX for everything except an unknown critical payload
 * (UNSUPPORTED_CRITICAL_PAYLOAD, with the payload type as notify data, §3.10.1) and an
 * unsupported major version (INVALID_MAJOR_VERSION, §2.5).
 */
import { FleetswanError } from "@fleetswan/common";
import { NotifyType } from "./constants.js";

/** Stable codes of IkeDecodeError. */
export const DecodeErrorCode = {
  /** The buffer ends before a field or a declared length. */
  TRUNCATED: "IKE_TRUNCATED",
  /** A length field is too small for its fixed part, or larger than its container. */
  BAD_LENGTH: "IKE_BAD_LENGTH",
  /** Bytes left over inside a container after its contents were parsed. */
  TRAILING_BYTES: "IKE_TRAILING_BYTES",
  /** A field holds a value the RFC forbids (e.g. proposal numbering, last/more flags). */
  BAD_VALUE: "IKE_BAD_VALUE",
  /** An unknown payload with the critical bit set (RFC 7296 §2.5). */
  UNSUPPORTED_CRITICAL: "IKE_UNSUPPORTED_CRITICAL_PAYLOAD",
  /** Major version is not 2 (RFC 7296 §2.5). */
  BAD_VERSION: "IKE_BAD_MAJOR_VERSION",
  /** SK/SKF payload not last, or a second one. */
  BAD_SK_PLACEMENT: "IKE_BAD_SK_PLACEMENT",
  /** Integrity check or decryption of an SK/SKF payload failed. */
  INTEGRITY: "IKE_INTEGRITY_FAILED",
  /** Fragment reassembly failed (limits, inconsistent fragments). */
  FRAGMENT: "IKE_FRAGMENT_INVALID",
} as const;

/** A value of DecodeErrorCode. */
export type DecodeErrorCodeValue = (typeof DecodeErrorCode)[keyof typeof DecodeErrorCode];

/** A malformed IKE message. `offset` is the byte position in the buffer being parsed. */
export class IkeDecodeError extends FleetswanError {
  override readonly code: DecodeErrorCodeValue;
  /** Notify type the peer should get back (INVALID_SYNTAX unless a subclass says otherwise). */
  readonly notifyType: number;
  /** Byte offset (within the buffer handed to the parser) where the problem was found. */
  readonly offset: number;

  constructor(
    code: DecodeErrorCodeValue,
    message: string,
    offset: number,
    details: Record<string, unknown> = {},
    notifyType: number = NotifyType.INVALID_SYNTAX,
  ) {
    super(code, `${message} (at offset ${offset})`, { offset, ...details });
    this.code = code;
    this.offset = offset;
    this.notifyType = notifyType;
  }

  /** Notification Data to send with `notifyType` (empty for INVALID_SYNTAX). */
  notifyData(): Buffer {
    return Buffer.alloc(0);
  }
}

/** An unrecognized payload type with the critical bit set: answer UNSUPPORTED_CRITICAL_PAYLOAD. */
export class UnsupportedCriticalPayloadError extends IkeDecodeError {
  constructor(readonly payloadType: number, offset: number) {
    super(
      DecodeErrorCode.UNSUPPORTED_CRITICAL,
      `unsupported critical payload type ${payloadType}`,
      offset,
      { payloadType },
      NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD,
    );
  }

  /** RFC 7296 §3.10.1: "Notification Data contains the one-octet payload type". */
  override notifyData(): Buffer {
    return Buffer.from([this.payloadType]);
  }
}

/** Major version other than 2 (RFC 7296 §2.5): answer INVALID_MAJOR_VERSION. */
export class InvalidMajorVersionError extends IkeDecodeError {
  constructor(readonly majorVersion: number) {
    super(DecodeErrorCode.BAD_VERSION, `IKE major version ${majorVersion} not supported`, 17, { majorVersion }, NotifyType.INVALID_MAJOR_VERSION);
  }

  /** RFC 7296 §2.5: the notify carries the highest version we support (2) as one octet. */
  override notifyData(): Buffer {
    return Buffer.from([0x20]);
  }
}

/** Thrown when an SK or SKF payload fails its integrity check (message must be dropped, §2.21.2). */
export class IkeIntegrityError extends IkeDecodeError {
  constructor(message: string, offset = 0) {
    super(DecodeErrorCode.INTEGRITY, message, offset);
  }
}

/** True if `e` is an IkeDecodeError (for fuzz targets and callers). */
export function isIkeDecodeError(e: unknown): e is IkeDecodeError {
  return e instanceof IkeDecodeError;
}
