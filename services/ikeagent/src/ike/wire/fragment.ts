/**
 * IKEv2 message fragmentation (RFC 7383): splitting a protected message into SKF
 * fragments on send, and a bounded reassembler on receive. Pure: the caller decrypts
 * each fragment (openFragment() in message.ts) before handing it to the reassembler,
 * because RFC 7383 §2.6 verifies every fragment's integrity on its own.
 */
import { PayloadType } from "./constants.js";
import { DecodeErrorCode, IkeDecodeError } from "./errors.js";
import { decodePayloads, encodePayloads, GENERIC_HEADER_LENGTH, IKE_HEADER_LENGTH, sealBody, type IkeHeader, type OpenedFragment, type SkCipher } from "./message.js";
import type { Payload } from "./payloads.js";

/**
 * RFC 7383 §2.5.1 suggests 1280 octets (IPv6 minimum MTU) minus IP/UDP headers for IPv6
 * and 576 for IPv4; strongSwan's default fragment_size is 1280 for IPv4 too.
 */
export const DEFAULT_MAX_DATAGRAM = 1280 - 40 - 8;

/** Bytes of an SKF payload besides the sealed body: generic header + Fragment Number + Total Fragments. */
const SKF_OVERHEAD = GENERIC_HEADER_LENGTH + 4;

/** Fragment Number and Total Fragments are 16 bits (RFC 7383 §2.5). */
const MAX_FRAGMENTS_ON_WIRE = 0xffff;

/** Largest plaintext chunk whose SKF message fits into maxDatagram octets. */
function maxChunk(cipher: SkCipher, maxDatagram: number): number {
  const budget = maxDatagram - IKE_HEADER_LENGTH - SKF_OVERHEAD;
  let n = budget;
  while (n > 0 && cipher.sealedLength(n) > budget) n--;
  if (n <= 0) throw new RangeError(`max datagram ${maxDatagram} too small for any fragment`);
  return n;
}

/**
 * Seal `inner` as one SK message, or — if that exceeds `maxDatagram` octets (the IKE
 * message, excluding IP/UDP and the non-ESP marker) and the peer announced
 * IKEV2_FRAGMENTATION_SUPPORTED — as a series of SKF messages (RFC 7383 §2.5).
 * All fragments share the header (same Message ID, §2.5.3).
 */
export function sealMaybeFragmented(header: IkeHeader, inner: readonly Payload[], cipher: SkCipher, opts: { fragmentation: boolean; maxDatagram?: number }): Buffer[] {
  const max = opts.maxDatagram ?? DEFAULT_MAX_DATAGRAM;
  const { first, bytes } = encodePayloads(inner);
  const whole = IKE_HEADER_LENGTH + GENERIC_HEADER_LENGTH + cipher.sealedLength(bytes.length);
  if (!opts.fragmentation || whole <= max) {
    return [sealBody(header, [], PayloadType.SK, first, Buffer.alloc(0), bytes, cipher)];
  }
  return fragmentPlaintext(header, first, bytes, cipher, max);
}

/** Split a payload chain's plaintext into SKF messages of at most maxDatagram octets each. */
export function fragmentPlaintext(header: IkeHeader, innerFirst: number, plaintext: Buffer, cipher: SkCipher, maxDatagram: number): Buffer[] {
  const chunk = maxChunk(cipher, maxDatagram);
  const total = Math.max(1, Math.ceil(plaintext.length / chunk));
  if (total > MAX_FRAGMENTS_ON_WIRE) throw new RangeError(`message needs ${total} fragments`);
  const out: Buffer[] = [];
  for (let i = 0; i < total; i++) {
    const extra = Buffer.alloc(4);
    extra.writeUInt16BE(i + 1, 0);
    extra.writeUInt16BE(total, 2);
    const part = plaintext.subarray(i * chunk, Math.min(plaintext.length, (i + 1) * chunk));
    out.push(sealBody(header, [], PayloadType.SKF, i === 0 ? innerFirst : PayloadType.NONE, extra, part, cipher));
  }
  return out;
}

/** Resource limits of a reassembler (a peer must not make us hold unbounded memory). */
export interface ReassemblyLimits {
  /** Maximum Total Fragments accepted. */
  maxFragments: number;
  /** Maximum size of the reassembled plaintext. */
  maxBytes: number;
}

/** Defaults: strongSwan's max_packet is 10000 octets; we allow a little more for cert chains. */
export const DEFAULT_REASSEMBLY_LIMITS: ReassemblyLimits = { maxFragments: 64, maxBytes: 65535 };

/** What happened to a fragment handed to FragmentReassembler.add(). */
export type ReassemblyResult =
  | { status: "incomplete"; received: number; total: number }
  | { status: "duplicate" }
  /** RFC 7383 §2.6.2: fragments that disagree with the ones collected are discarded. */
  | { status: "discarded"; reason: string }
  | { status: "complete"; innerFirst: number; plaintext: Buffer; payloads: Payload[] };

/** Thrown (as INVALID_SYNTAX) when a reassembled message does not decode or exceeds limits. */
export class FragmentError extends IkeDecodeError {
  constructor(message: string, details: Record<string, unknown> = {}) {
    super(DecodeErrorCode.FRAGMENT, message, 0, details);
  }
}

/**
 * Reassembles one fragmented message at a time per direction of an IKE SA (RFC 7383 §2.6).
 * Feed it fragments already opened (integrity-checked) with openFragment().
 */
export class FragmentReassembler {
  private messageId = -1;
  private total = 0;
  private bytes = 0;
  private innerFirst = 0;
  private parts = new Map<number, Buffer>();

  constructor(readonly limits: ReassemblyLimits = DEFAULT_REASSEMBLY_LIMITS) {}

  /** Forget a message in progress. */
  reset(): void {
    this.messageId = -1;
    this.total = 0;
    this.bytes = 0;
    this.innerFirst = 0;
    this.parts.clear();
  }

  /**
   * Add a fragment of message `messageId`. A fragment of a different message starts a new
   * reassembly (the engine only passes fragments of the message it expects).
   * @throws FragmentError when limits are exceeded or the reassembled chain is malformed.
   */
  add(messageId: number, f: OpenedFragment): ReassemblyResult {
    if (f.totalFragments > this.limits.maxFragments) {
      this.reset();
      throw new FragmentError(`Total Fragments ${f.totalFragments} exceeds limit ${this.limits.maxFragments}`, { total: f.totalFragments });
    }
    if (f.fragmentNumber < 1 || f.fragmentNumber > f.totalFragments) {
      return { status: "discarded", reason: `fragment number ${f.fragmentNumber} of ${f.totalFragments}` };
    }
    if (messageId !== this.messageId) {
      this.reset();
      this.messageId = messageId;
      this.total = f.totalFragments;
    } else if (f.totalFragments > this.total) {
      // §2.6.2: a larger Total Fragments means the sender re-fragmented: start anew
      this.reset();
      this.messageId = messageId;
      this.total = f.totalFragments;
    } else if (f.totalFragments < this.total) {
      return { status: "discarded", reason: `Total Fragments ${f.totalFragments} < ${this.total} seen before` };
    }
    if (this.parts.has(f.fragmentNumber)) return { status: "duplicate" };
    if (this.bytes + f.plaintext.length > this.limits.maxBytes) {
      this.reset();
      throw new FragmentError(`reassembled message exceeds ${this.limits.maxBytes} bytes`, { limit: this.limits.maxBytes });
    }
    this.parts.set(f.fragmentNumber, Buffer.from(f.plaintext));
    this.bytes += f.plaintext.length;
    if (f.fragmentNumber === 1) this.innerFirst = f.innerFirst;
    if (this.parts.size < this.total) return { status: "incomplete", received: this.parts.size, total: this.total };
    const chunks: Buffer[] = [];
    for (let i = 1; i <= this.total; i++) chunks.push(this.parts.get(i)!);
    const plaintext = Buffer.concat(chunks);
    const innerFirst = this.innerFirst;
    this.reset();
    const payloads = decodePayloads(innerFirst, plaintext);
    return { status: "complete", innerFirst, plaintext, payloads };
  }
}
