/**
 * IKE messages (RFC 7296 §3.1 header, §3.2 payload chain, §3.14 SK): decodeMessage(),
 * encodeMessage(), and the SK protection step (sealMessage()/openMessage()) through the
 * SkCipher interface that crypto/sk.ts implements. No I/O, no keys kept here.
 */
import { DecodeErrorCode, IkeDecodeError, InvalidMajorVersionError, UnsupportedCriticalPayloadError } from "./errors.js";
import { HeaderFlag, PayloadType } from "./constants.js";
import { Reader, Writer } from "./reader.js";
import {
  decodePayloadBody,
  encodePayloadBody,
  innerNextOf,
  isKnownPayloadType,
  isUnknown,
  type Payload,
  type SkfPayload,
  type SkPayload,
} from "./payloads.js";

/** Size of the IKE header (RFC 7296 §3.1). */
export const IKE_HEADER_LENGTH = 28;
/** Size of the generic payload header (RFC 7296 §3.2). */
export const GENERIC_HEADER_LENGTH = 4;

/** The IKE header fields a sender chooses (Next Payload and Length are computed). */
export interface IkeHeader {
  /** IKE SA Initiator's SPI (8 octets). */
  spiI: Buffer;
  /** IKE SA Responder's SPI (8 octets; zero in the first IKE_SA_INIT request). */
  spiR: Buffer;
  /** ExchangeType. */
  exchangeType: number;
  /** Message ID (32 bits, §2.2). */
  messageId: number;
  /** I flag: sent by the original initiator of the IKE SA. */
  initiator: boolean;
  /** R flag: this message is a response. */
  response: boolean;
  /** V flag: we could speak a higher major version (never set by fleetswan). */
  higherVersion?: boolean;
  /** Minor version (0; RFC 7296 §3.1 says ignore on receipt). */
  minorVersion?: number;
}

/** The header as decoded, with the raw fields. */
export interface DecodedHeader extends IkeHeader {
  nextPayload: number;
  majorVersion: number;
  minorVersion: number;
  /** The Flags octet as received (including reserved bits). */
  flags: number;
  /** Length field (equals the datagram length; checked). */
  length: number;
}

/** A decoded message. An SK/SKF payload, if present, is the last of `payloads` and still encrypted. */
export interface DecodedMessage {
  header: DecodedHeader;
  payloads: Payload[];
  /** The SK or SKF payload (also last in `payloads`), if any. */
  encrypted?: SkPayload | SkfPayload;
  /** Offset of the encrypted payload's generic header in `raw`. */
  encryptedOffset?: number;
  /** The message bytes (a copy), needed for AUTH (§2.15: RealMessage1/2) and for SK integrity. */
  raw: Buffer;
}

/**
 * The SK payload transform (implemented in crypto/sk.ts). `aad` is every octet of the
 * message before the IV (IKE header through the SK/SKF generic header, with final
 * lengths): the associated data of AEAD ciphers (RFC 5282 §5.1) and the start of the
 * integrity-protected range for encrypt-then-MAC (RFC 7296 §3.14).
 */
export interface SkCipher {
  /** Bytes of IV | ciphertext (incl. padding and Pad Length) | ICV for `plaintextLength` bytes of payloads. */
  sealedLength(plaintextLength: number): number;
  /** Pad, encrypt and authenticate the inner payload chain; returns IV | ciphertext | ICV. */
  seal(aad: Buffer, plaintext: Buffer): Buffer;
  /** Verify, decrypt and strip padding; throws IkeIntegrityError when the check fails. */
  open(aad: Buffer, body: Buffer): Buffer;
}

/*
 * RFC 7296 §3.1 IKE Header
 *                      1                   2                   3
 *  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
 * +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 * |                       IKE SA Initiator's SPI                  |
 * |                                                               |
 * +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 * |                       IKE SA Responder's SPI                  |
 * |                                                               |
 * +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 * |  Next Payload | MjVer | MnVer | Exchange Type |     Flags     |
 * +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 * |                          Message ID                           |
 * +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 * |                            Length                             |
 * +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 * Flags: |X|X|R|V|I|X|X|X|
 */

/**
 * Decode only the IKE header (for dispatch before any payload work: SPI lookup, cookie
 * check). Checks the length field against the buffer and the major version.
 */
export function decodeHeader(buf: Buffer): DecodedHeader {
  const r = new Reader(buf);
  const spiI = r.bytes(8, "initiator SPI");
  const spiR = r.bytes(8, "responder SPI");
  const nextPayload = r.u8("next payload");
  const ver = r.u8("version");
  const exchangeType = r.u8("exchange type");
  const flags = r.u8("flags");
  const messageId = r.u32("message id");
  const length = r.u32("length");
  const majorVersion = ver >> 4;
  if (majorVersion !== 2) throw new InvalidMajorVersionError(majorVersion);
  if (length < IKE_HEADER_LENGTH) {
    throw new IkeDecodeError(DecodeErrorCode.BAD_LENGTH, `message length ${length} < header length ${IKE_HEADER_LENGTH}`, 24);
  }
  if (length > buf.length) {
    throw new IkeDecodeError(DecodeErrorCode.TRUNCATED, `message length field ${length} > datagram ${buf.length}`, buf.length);
  }
  if (length < buf.length) {
    throw new IkeDecodeError(DecodeErrorCode.TRAILING_BYTES, `${buf.length - length} bytes after the message length ${length}`, length);
  }
  return {
    spiI,
    spiR,
    nextPayload,
    majorVersion,
    minorVersion: ver & 0x0f,
    exchangeType,
    flags,
    initiator: (flags & HeaderFlag.INITIATOR) !== 0,
    response: (flags & HeaderFlag.RESPONSE) !== 0,
    higherVersion: (flags & HeaderFlag.VERSION) !== 0,
    messageId,
    length,
  };
}

function encodeHeader(w: Writer, h: IkeHeader, nextPayload: number, length: number): void {
  if (h.spiI.length !== 8 || h.spiR.length !== 8) throw new RangeError("IKE SPIs must be 8 octets");
  const flags = (h.initiator ? HeaderFlag.INITIATOR : 0) | (h.response ? HeaderFlag.RESPONSE : 0) | (h.higherVersion ? HeaderFlag.VERSION : 0);
  w.raw(h.spiI).raw(h.spiR).u8(nextPayload).u8(0x20 | ((h.minorVersion ?? 0) & 0x0f)).u8(h.exchangeType).u8(flags).u32(h.messageId).u32(length);
}

/** Result of decoding a payload chain. */
interface ChainResult {
  payloads: Payload[];
  encrypted?: SkPayload | SkfPayload;
  encryptedOffset?: number;
}

/*
 * RFC 7296 §3.2 Generic Payload Header
 *                      1                   2                   3
 *  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
 * +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 * | Next Payload  |C|  RESERVED   |         Payload Length        |
 * +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 * Payload Length includes the generic header. RESERVED is ignored on receipt.
 */
function decodeChain(r: Reader, first: number, allowEncrypted: boolean): ChainResult {
  const payloads: Payload[] = [];
  let type = first;
  while (type !== PayloadType.NONE) {
    const at = r.offset;
    const next = r.u8("next payload");
    const critical = (r.u8("critical/reserved") & 0x80) !== 0;
    const len = r.u16("payload length");
    const body = r.sub(r.bodyLength(len, GENERIC_HEADER_LENGTH, `payload ${type}`, at + 2), `payload ${type} body`);
    if (!isKnownPayloadType(type) && critical) throw new UnsupportedCriticalPayloadError(type, at);
    const p = decodePayloadBody(type, critical, body, next);
    payloads.push(p);
    if (!isUnknown(p) && (p.type === PayloadType.SK || p.type === PayloadType.SKF)) {
      // §3.14: "the Encrypted payload, if present in a message, MUST be the last payload".
      if (!allowEncrypted) throw new IkeDecodeError(DecodeErrorCode.BAD_SK_PLACEMENT, "encrypted payload inside an encrypted payload", at);
      if (r.remaining !== 0) throw new IkeDecodeError(DecodeErrorCode.BAD_SK_PLACEMENT, "encrypted payload is not the last payload", at);
      return { payloads, encrypted: p, encryptedOffset: at };
    }
    type = next;
  }
  r.end("payload chain");
  return { payloads };
}

/**
 * Decode a whole IKE message (one UDP datagram, non-ESP marker already stripped).
 * Cleartext payloads are decoded; an SK/SKF payload is returned still encrypted (open it
 * with openMessage()/openFragment() once keys are known).
 * @throws IkeDecodeError (or a subclass) on any malformation; never anything else.
 */
export function decodeMessage(buf: Buffer): DecodedMessage {
  const raw = Buffer.from(buf);
  const header = decodeHeader(raw);
  const r = new Reader(raw, IKE_HEADER_LENGTH, header.length);
  const chain = decodeChain(r, header.nextPayload, true);
  const out: DecodedMessage = { header, payloads: chain.payloads, raw };
  if (chain.encrypted) {
    out.encrypted = chain.encrypted;
    out.encryptedOffset = chain.encryptedOffset!;
  }
  return out;
}

/**
 * Decode a chain of payloads (e.g. the decrypted contents of an SK payload, or a
 * reassembled fragmented message). `first` is the type of the first payload; `base` is
 * the absolute offset for error messages.
 */
export function decodePayloads(first: number, buf: Buffer, base = 0): Payload[] {
  const r = new Reader(buf, 0, buf.length, base);
  return decodeChain(r, first, false).payloads;
}

/** Encode a payload chain; returns the first payload type and the bytes. */
export function encodePayloads(payloads: readonly Payload[]): { first: number; bytes: Buffer } {
  const w = new Writer();
  for (let i = 0; i < payloads.length; i++) {
    const p = payloads[i]!;
    const inner = innerNextOf(p);
    if (inner !== undefined && i !== payloads.length - 1) throw new RangeError("SK/SKF payload must be last");
    const next = inner ?? (i + 1 < payloads.length ? payloads[i + 1]!.type : PayloadType.NONE);
    const body = encodePayloadBody(p);
    const len = GENERIC_HEADER_LENGTH + body.length;
    if (len > 0xffff) throw new RangeError(`payload type ${p.type} too long (${len} bytes)`);
    w.u8(next).u8(p.critical ? 0x80 : 0).u16(len).raw(body);
  }
  return { first: payloads.length ? payloads[0]!.type : PayloadType.NONE, bytes: w.toBuffer() };
}

/** Encode a cleartext message (IKE_SA_INIT, or re-encoding a decoded one). */
export function encodeMessage(header: IkeHeader, payloads: readonly Payload[]): Buffer {
  const { first, bytes } = encodePayloads(payloads);
  const w = new Writer();
  encodeHeader(w, header, first, IKE_HEADER_LENGTH + bytes.length);
  w.raw(bytes);
  return w.toBuffer();
}

/**
 * Encode a protected message: `outer` cleartext payloads (normally none), then an SK
 * payload carrying `inner` sealed with `cipher` (RFC 7296 §3.14).
 */
export function sealMessage(header: IkeHeader, inner: readonly Payload[], cipher: SkCipher, outer: readonly Payload[] = []): Buffer {
  const { first: innerFirst, bytes: plaintext } = encodePayloads(inner);
  return sealBody(header, outer, PayloadType.SK, innerFirst, Buffer.alloc(0), plaintext, cipher);
}

/**
 * Build one protected message with an SK (extra = empty) or SKF (extra = fragment number
 * and total) payload whose plaintext is `plaintext`. Used by sealMessage() and the fragmenter.
 */
export function sealBody(header: IkeHeader, outer: readonly Payload[], skType: number, innerFirst: number, extra: Buffer, plaintext: Buffer, cipher: SkCipher): Buffer {
  const o = encodePayloads(outer);
  const sealedLen = cipher.sealedLength(plaintext.length);
  const skLen = GENERIC_HEADER_LENGTH + extra.length + sealedLen;
  if (skLen > 0xffff) throw new RangeError(`encrypted payload too long (${skLen} bytes)`);
  const total = IKE_HEADER_LENGTH + o.bytes.length + skLen;
  const w = new Writer();
  encodeHeader(w, header, outer.length ? o.first : skType, total);
  // the outer chain's last Next Payload must point at the SK payload: re-link it
  const outerBytes = Buffer.from(o.bytes);
  if (outer.length) {
    let off = 0;
    for (let i = 0; i < outer.length; i++) {
      const len = outerBytes.readUInt16BE(off + 2);
      if (i === outer.length - 1) outerBytes[off] = skType;
      off += len;
    }
  }
  w.raw(outerBytes).u8(innerFirst).u8(0).u16(skLen).raw(extra);
  const aad = w.toBuffer();
  const sealed = cipher.seal(aad, plaintext);
  if (sealed.length !== sealedLen) throw new Error(`SkCipher.seal returned ${sealed.length} bytes, promised ${sealedLen}`);
  // A buffer of its own, not a slice of the shared pool: a sent request or response is kept
  // for retransmission (§2.1) as long as the SA lives.
  const out = Buffer.allocUnsafeSlow(aad.length + sealed.length);
  aad.copy(out);
  sealed.copy(out, aad.length);
  return out;
}

/** Split a decoded protected message into AAD (bytes before the IV) and sealed body. */
function splitEncrypted(msg: DecodedMessage): { aad: Buffer; body: Buffer; base: number } {
  if (!msg.encrypted || msg.encryptedOffset === undefined) {
    throw new IkeDecodeError(DecodeErrorCode.BAD_SK_PLACEMENT, "message has no encrypted payload", IKE_HEADER_LENGTH);
  }
  const hdr = GENERIC_HEADER_LENGTH + (msg.encrypted.type === PayloadType.SKF ? 4 : 0);
  const ivAt = msg.encryptedOffset + hdr;
  return { aad: msg.raw.subarray(0, ivAt), body: msg.raw.subarray(ivAt), base: ivAt };
}

/**
 * Verify and decrypt the SK payload of `msg`, decode the inner chain, and return the
 * full payload list: cleartext payloads before SK, then the inner payloads.
 * @throws IkeIntegrityError if the ICV does not verify (drop silently, §2.21.2);
 *         IkeDecodeError for a malformed inner chain.
 */
export function openMessage(msg: DecodedMessage, cipher: SkCipher): Payload[] {
  if (msg.encrypted?.type !== PayloadType.SK) {
    throw new IkeDecodeError(DecodeErrorCode.BAD_SK_PLACEMENT, "message has no SK payload", IKE_HEADER_LENGTH);
  }
  const { aad, body, base } = splitEncrypted(msg);
  const plain = cipher.open(aad, body);
  return [...msg.payloads.slice(0, -1), ...decodePayloads(msg.encrypted.innerFirst, plain, base)];
}

/** A decrypted fragment, ready for the reassembler (fragment.ts). */
export interface OpenedFragment {
  fragmentNumber: number;
  totalFragments: number;
  /** Type of the first inner payload (fragment 1 only; 0 otherwise). */
  innerFirst: number;
  plaintext: Buffer;
}

/** Verify and decrypt the SKF payload of `msg` (RFC 7383 §2.6). */
export function openFragment(msg: DecodedMessage, cipher: SkCipher): OpenedFragment {
  const e = msg.encrypted;
  if (e?.type !== PayloadType.SKF) {
    throw new IkeDecodeError(DecodeErrorCode.BAD_SK_PLACEMENT, "message has no SKF payload", IKE_HEADER_LENGTH);
  }
  const { aad, body } = splitEncrypted(msg);
  return { fragmentNumber: e.fragmentNumber, totalFragments: e.totalFragments, innerFirst: e.innerFirst, plaintext: cipher.open(aad, body) };
}
