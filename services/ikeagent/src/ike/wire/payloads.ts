/**
 * IKEv2 payloads (RFC 7296 §3.2-§3.16, RFC 7383 §2.5): typed objects and their body
 * encoders/decoders. Each body codec sits beside the RFC diagram of its payload. These
 * functions handle the payload *body* (after the 4-octet generic header); the chain
 * codec in message.ts writes the generic headers and next-payload links.
 *
 * Decoding is structural: lengths, counts and fixed sizes are checked, and a sub-parser
 * never reads outside its declared length. Unknown code points (transform IDs, notify
 * types, ID types, TS types...) are kept as numbers.
 */
import { DecodeErrorCode, IkeDecodeError } from "./errors.js";
import { PayloadType, TransformAttr, TsType } from "./constants.js";
import { Reader, Writer } from "./reader.js";

/** Fields every payload carries in its generic header (RFC 7296 §3.2). */
export interface PayloadCommon {
  /**
   * Critical bit as received (or to be sent). RFC 7296 §3.2: zero for all payloads
   * defined there; ignored on receipt for payload types we understand.
   */
  critical?: boolean;
}

// ---------------------------------------------------------------- SA -------

/** A transform attribute (RFC 7296 §3.3.5): TV (number value) or TLV (bytes value). */
export interface TransformAttribute {
  /** Attribute type without the AF bit (14 = Key Length). */
  type: number;
  /** TV format (AF=1): the 16-bit value. TLV format (AF=0): the value bytes. */
  value: number | Buffer;
}

/** A transform substructure (RFC 7296 §3.3.2). */
export interface Transform {
  /** TransformType (ENCR, PRF, INTEG, DH, ESN). */
  type: number;
  /** Transform ID within the type (EncrId, PrfId, IntegId, DhId, EsnId). */
  id: number;
  /** Attributes; normally only KEY_LENGTH for variable-key-length ciphers. */
  attributes: TransformAttribute[];
}

/** A proposal substructure (RFC 7296 §3.3.1). */
export interface Proposal {
  /** Proposal Num: 1 for the first, +1 for each following (§3.3.1). */
  num: number;
  /** ProtocolId (IKE, AH, ESP). */
  protocol: number;
  /** SPI: empty in the initial IKE_SA_INIT, 8 octets for IKE rekey, 4 for ESP/AH. */
  spi: Buffer;
  transforms: Transform[];
}

/** SA payload (RFC 7296 §3.3). */
export interface SaPayload extends PayloadCommon {
  type: typeof PayloadType.SA;
  proposals: Proposal[];
}

/** The KEY_LENGTH attribute of a transform, if present (bits). */
export function keyLengthOf(t: Transform): number | undefined {
  const a = t.attributes.find((x) => x.type === TransformAttr.KEY_LENGTH);
  return a && typeof a.value === "number" ? a.value : undefined;
}

/*
 * RFC 7296 §3.3.5 Transform Attributes
 *                      1                   2                   3
 *  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
 * +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 * |A|       Attribute Type        |    AF=0  Attribute Length     |
 * |F|                             |    AF=1  Attribute Value      |
 * +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 * |                   AF=0  Attribute Value                       |
 * |                   AF=1  Not Transmitted                       |
 * +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 */
function decodeAttribute(r: Reader): TransformAttribute {
  const t = r.u16("attribute type");
  const af = (t & 0x8000) !== 0;
  const v = r.u16("attribute length/value");
  if (af) return { type: t & 0x7fff, value: v };
  return { type: t & 0x7fff, value: r.bytes(v, "attribute value") };
}

function encodeAttribute(w: Writer, a: TransformAttribute): void {
  if (typeof a.value === "number") {
    w.u16(0x8000 | (a.type & 0x7fff)).u16(a.value);
  } else {
    if (a.value.length > 0xffff) throw new RangeError("attribute value too long");
    w.u16(a.type & 0x7fff).u16(a.value.length).raw(a.value);
  }
}

/*
 * RFC 7296 §3.3.2 Transform Substructure
 *                      1                   2                   3
 *  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
 * +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 * | Last Substruc |   RESERVED    |        Transform Length       |
 * +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 * |Transform Type |   RESERVED    |          Transform ID         |
 * +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 * ~                      Transform Attributes                     ~
 * +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 * Last Substruc: 0 = last transform, 3 = more follow.
 */
function decodeTransform(r: Reader): { t: Transform; last: boolean } {
  const at = r.offset;
  const lastField = r.u8("transform last-substruc");
  if (lastField !== 0 && lastField !== 3) {
    throw new IkeDecodeError(DecodeErrorCode.BAD_VALUE, `transform Last Substruc ${lastField} (want 0 or 3)`, at);
  }
  r.u8("transform reserved");
  const len = r.u16("transform length");
  const body = r.sub(r.bodyLength(len, 4, "transform", at), "transform");
  const type = body.u8("transform type");
  body.u8("transform reserved");
  const id = body.u16("transform id");
  const attributes: TransformAttribute[] = [];
  while (body.remaining > 0) attributes.push(decodeAttribute(body));
  return { t: { type, id, attributes }, last: lastField === 0 };
}

function encodeTransform(w: Writer, t: Transform, last: boolean): void {
  const a = new Writer();
  for (const attr of t.attributes) encodeAttribute(a, attr);
  w.u8(last ? 0 : 3).u8(0).u16(8 + a.length).u8(t.type).u8(0).u16(t.id).raw(a.toBuffer());
}

/*
 * RFC 7296 §3.3.1 Proposal Substructure
 *                      1                   2                   3
 *  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
 * +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 * | Last Substruc |   RESERVED    |         Proposal Length       |
 * +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 * | Proposal Num  |  Protocol ID  |    SPI Size   |Num  Transforms|
 * +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 * ~                        SPI (variable)                         ~
 * +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 * ~                        <Transforms>                           ~
 * +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 * Last Substruc: 0 = last proposal, 2 = more follow.
 */
function decodeProposal(r: Reader): { p: Proposal; last: boolean } {
  const at = r.offset;
  const lastField = r.u8("proposal last-substruc");
  if (lastField !== 0 && lastField !== 2) {
    throw new IkeDecodeError(DecodeErrorCode.BAD_VALUE, `proposal Last Substruc ${lastField} (want 0 or 2)`, at);
  }
  r.u8("proposal reserved");
  const len = r.u16("proposal length");
  const body = r.sub(r.bodyLength(len, 4, "proposal", at), "proposal");
  const num = body.u8("proposal num");
  const protocol = body.u8("protocol id");
  const spiSize = body.u8("spi size");
  const numTransforms = body.u8("num transforms");
  const spi = body.bytes(spiSize, "proposal spi");
  const transforms: Transform[] = [];
  for (let i = 0; i < numTransforms; i++) {
    const tAt = body.offset;
    const { t, last } = decodeTransform(body);
    if (last !== (i === numTransforms - 1)) {
      throw new IkeDecodeError(DecodeErrorCode.BAD_VALUE, `transform ${i + 1}/${numTransforms}: Last Substruc disagrees with Num Transforms`, tAt);
    }
    transforms.push(t);
  }
  body.end("proposal");
  return { p: { num, protocol, spi, transforms }, last: lastField === 0 };
}

function encodeProposal(w: Writer, p: Proposal, last: boolean): void {
  if (p.transforms.length > 255) throw new RangeError("more than 255 transforms");
  const t = new Writer();
  p.transforms.forEach((x, i) => encodeTransform(t, x, i === p.transforms.length - 1));
  w.u8(last ? 0 : 2).u8(0).u16(8 + p.spi.length + t.length).u8(p.num).u8(p.protocol).u8(p.spi.length).u8(p.transforms.length).raw(p.spi).raw(t.toBuffer());
}

/*
 * RFC 7296 §3.3 Security Association Payload
 *                      1                   2                   3
 *  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
 * +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 * | Next Payload  |C|  RESERVED   |         Payload Length        |
 * +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 * ~                          <Proposals>                          ~
 * +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 */
function decodeSa(r: Reader): Omit<SaPayload, "critical"> {
  const proposals: Proposal[] = [];
  if (r.remaining === 0) throw new IkeDecodeError(DecodeErrorCode.BAD_VALUE, "SA payload without proposals", r.offset);
  for (;;) {
    const at = r.offset;
    const { p, last } = decodeProposal(r);
    proposals.push(p);
    if (last) break;
    if (r.remaining === 0) throw new IkeDecodeError(DecodeErrorCode.TRUNCATED, "proposal says more follow but SA payload ends", at);
  }
  r.end("SA payload");
  return { type: PayloadType.SA, proposals };
}

function encodeSa(w: Writer, p: SaPayload): void {
  p.proposals.forEach((x, i) => encodeProposal(w, x, i === p.proposals.length - 1));
}

// ---------------------------------------------------------------- KE -------

/** Key Exchange payload (RFC 7296 §3.4). */
export interface KePayload extends PayloadCommon {
  type: typeof PayloadType.KE;
  /** DhId of the group the data belongs to. */
  group: number;
  /** The public value (MODP: big-endian, zero-padded to the prime length; ECP: x||y; Curve25519: 32 octets). */
  data: Buffer;
}

/*
 * RFC 7296 §3.4 Key Exchange Payload
 *                      1                   2                   3
 *  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
 * +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 * | Next Payload  |C|  RESERVED   |         Payload Length        |
 * +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 * |   Diffie-Hellman Group Num    |           RESERVED            |
 * +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 * ~                       Key Exchange Data                       ~
 * +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 */
function decodeKe(r: Reader): Omit<KePayload, "critical"> {
  const group = r.u16("KE group");
  r.u16("KE reserved");
  return { type: PayloadType.KE, group, data: r.rest() };
}

function encodeKe(w: Writer, p: KePayload): void {
  w.u16(p.group).u16(0).raw(p.data);
}

// ---------------------------------------------------------------- ID -------

/** Identification payload, IDi or IDr (RFC 7296 §3.5). */
export interface IdPayload extends PayloadCommon {
  type: typeof PayloadType.IDi | typeof PayloadType.IDr;
  /** IdType. */
  idType: number;
  /** Identification Data (4/16 octets for addresses, text for FQDN/RFC822, DER for DN). */
  data: Buffer;
}

/*
 * RFC 7296 §3.5 Identification Payloads
 *                      1                   2                   3
 *  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
 * +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 * | Next Payload  |C|  RESERVED   |         Payload Length        |
 * +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 * |   ID Type     |                 RESERVED                      |
 * +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 * ~                   Identification Data                         ~
 * +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 * The body (ID Type, RESERVED, Data) is the IDi'/IDr' that AUTH is computed over (§2.15).
 */
function decodeId(type: IdPayload["type"], r: Reader): Omit<IdPayload, "critical"> {
  const idType = r.u8("ID type");
  r.bytes(3, "ID reserved");
  return { type, idType, data: r.rest() };
}

function encodeId(w: Writer, p: IdPayload): void {
  w.u8(p.idType).u8(0).u16(0).raw(p.data);
}

/** IDi' / IDr' (RFC 7296 §2.15): the ID payload body without the generic header. */
export function idPayloadBody(p: IdPayload): Buffer {
  const w = new Writer();
  encodeId(w, p);
  return w.toBuffer();
}

// ------------------------------------------------------- CERT, CERTREQ -----

/** Certificate payload (RFC 7296 §3.6). */
export interface CertPayload extends PayloadCommon {
  type: typeof PayloadType.CERT;
  /** CertEncoding (4 = X.509 Certificate - Signature, DER). */
  encoding: number;
  data: Buffer;
}

/** Certificate Request payload (RFC 7296 §3.7): data is concatenated SHA-1 hashes of CA SPKIs for encoding 4. */
export interface CertReqPayload extends PayloadCommon {
  type: typeof PayloadType.CERTREQ;
  encoding: number;
  data: Buffer;
}

/*
 * RFC 7296 §3.6 Certificate Payload (§3.7 Certificate Request Payload is the same shape,
 * with "Certification Authority" as data)
 *                      1                   2                   3
 *  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
 * +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 * | Next Payload  |C|  RESERVED   |         Payload Length        |
 * +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 * | Cert Encoding |                                               |
 * +-+-+-+-+-+-+-+-+                                               |
 * ~                       Certificate Data                        ~
 * +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 */
function decodeCert<T extends typeof PayloadType.CERT | typeof PayloadType.CERTREQ>(type: T, r: Reader): { type: T; encoding: number; data: Buffer } {
  const encoding = r.u8("cert encoding");
  return { type, encoding, data: r.rest() };
}

function encodeCert(w: Writer, p: CertPayload | CertReqPayload): void {
  w.u8(p.encoding).raw(p.data);
}

// ---------------------------------------------------------------- AUTH -----

/** Authentication payload (RFC 7296 §3.8). */
export interface AuthPayload extends PayloadCommon {
  type: typeof PayloadType.AUTH;
  /** AuthMethod. */
  method: number;
  /** Authentication Data (for method 14: ASN.1 length octet, AlgorithmIdentifier, signature). */
  data: Buffer;
}

/*
 * RFC 7296 §3.8 Authentication Payload
 *                      1                   2                   3
 *  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
 * +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 * | Next Payload  |C|  RESERVED   |         Payload Length        |
 * +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 * | Auth Method   |                RESERVED                       |
 * +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 * ~                      Authentication Data                      ~
 * +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 */
function decodeAuth(r: Reader): Omit<AuthPayload, "critical"> {
  const method = r.u8("auth method");
  r.bytes(3, "auth reserved");
  return { type: PayloadType.AUTH, method, data: r.rest() };
}

function encodeAuth(w: Writer, p: AuthPayload): void {
  w.u8(p.method).u8(0).u16(0).raw(p.data);
}

// ---------------------------------------------------------------- Nonce ----

/** RFC 7296 §3.9: a nonce is 16..256 octets. */
export const NONCE_MIN = 16;
/** RFC 7296 §3.9: a nonce is 16..256 octets. */
export const NONCE_MAX = 256;

/** Nonce payload, Ni or Nr (RFC 7296 §3.9). */
export interface NoncePayload extends PayloadCommon {
  type: typeof PayloadType.NONCE;
  nonce: Buffer;
}

/*
 * RFC 7296 §3.9 Nonce Payload
 *                      1                   2                   3
 *  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
 * +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 * | Next Payload  |C|  RESERVED   |         Payload Length        |
 * +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 * ~                            Nonce Data                         ~
 * +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 * "The size of the Nonce Data MUST be between 16 and 256 octets, inclusive."
 */
function decodeNonce(r: Reader): Omit<NoncePayload, "critical"> {
  const at = r.offset;
  const nonce = r.rest();
  if (nonce.length < NONCE_MIN || nonce.length > NONCE_MAX) {
    throw new IkeDecodeError(DecodeErrorCode.BAD_VALUE, `nonce length ${nonce.length} outside ${NONCE_MIN}..${NONCE_MAX}`, at);
  }
  return { type: PayloadType.NONCE, nonce };
}

function encodeNonce(w: Writer, p: NoncePayload): void {
  w.raw(p.nonce);
}

// ---------------------------------------------------------------- Notify ---

/** Notify payload (RFC 7296 §3.10). */
export interface NotifyPayload extends PayloadCommon {
  type: typeof PayloadType.NOTIFY;
  /** ProtocolId the SPI belongs to (0 when there is no SPI). */
  protocol: number;
  /** NotifyType (open: unknown types survive). */
  notifyType: number;
  /** SPI (empty, or 4 octets for ESP/AH notifies such as REKEY_SA). */
  spi: Buffer;
  data: Buffer;
}

/*
 * RFC 7296 §3.10 Notify Payload
 *                      1                   2                   3
 *  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
 * +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 * | Next Payload  |C|  RESERVED   |         Payload Length        |
 * +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 * |  Protocol ID  |   SPI Size    |      Notify Message Type      |
 * +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 * ~                Security Parameter Index (SPI)                 ~
 * +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 * ~                       Notification Data                       ~
 * +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 */
function decodeNotify(r: Reader): Omit<NotifyPayload, "critical"> {
  const protocol = r.u8("notify protocol id");
  const spiSize = r.u8("notify spi size");
  const notifyType = r.u16("notify type");
  const spi = r.bytes(spiSize, "notify spi");
  return { type: PayloadType.NOTIFY, protocol, notifyType, spi, data: r.rest() };
}

function encodeNotify(w: Writer, p: NotifyPayload): void {
  w.u8(p.protocol).u8(p.spi.length).u16(p.notifyType).raw(p.spi).raw(p.data);
}

// ---------------------------------------------------------------- Delete ---

/** Delete payload (RFC 7296 §3.11). For IKE: no SPIs (the IKE SA carrying it). */
export interface DeletePayload extends PayloadCommon {
  type: typeof PayloadType.DELETE;
  protocol: number;
  /** SPI size: 0 for IKE, 4 for ESP/AH. Kept explicitly so an empty ESP delete round-trips. */
  spiSize: number;
  spis: Buffer[];
}

/*
 * RFC 7296 §3.11 Delete Payload
 *                      1                   2                   3
 *  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
 * +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 * | Next Payload  |C|  RESERVED   |         Payload Length        |
 * +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 * | Protocol ID   |   SPI Size    |          Num of SPIs          |
 * +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 * ~               Security Parameter Index(es) (SPI)              ~
 * +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 */
function decodeDelete(r: Reader): Omit<DeletePayload, "critical"> {
  const protocol = r.u8("delete protocol id");
  const spiSize = r.u8("delete spi size");
  const at = r.offset;
  const n = r.u16("delete num spis");
  if (spiSize === 0 && n !== 0) throw new IkeDecodeError(DecodeErrorCode.BAD_VALUE, `delete with SPI size 0 but ${n} SPIs`, at);
  const spis: Buffer[] = [];
  for (let i = 0; i < n; i++) spis.push(r.bytes(spiSize, "delete spi"));
  r.end("delete payload");
  return { type: PayloadType.DELETE, protocol, spiSize, spis };
}

function encodeDelete(w: Writer, p: DeletePayload): void {
  for (const s of p.spis) if (s.length !== p.spiSize) throw new RangeError(`delete SPI of ${s.length} bytes, SPI size ${p.spiSize}`);
  w.u8(p.protocol).u8(p.spiSize).u16(p.spis.length);
  for (const s of p.spis) w.raw(s);
}

// ---------------------------------------------------------------- V --------

/** Vendor ID payload (RFC 7296 §3.12). */
export interface VendorIdPayload extends PayloadCommon {
  type: typeof PayloadType.VENDOR_ID;
  data: Buffer;
}

/*
 * RFC 7296 §3.12 Vendor ID Payload
 * +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 * | Next Payload  |C|  RESERVED   |         Payload Length        |
 * +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 * ~                        Vendor ID (VID)                        ~
 * +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 */
function decodeVendor(r: Reader): Omit<VendorIdPayload, "critical"> {
  return { type: PayloadType.VENDOR_ID, data: r.rest() };
}

// ---------------------------------------------------------------- TS -------

/** One traffic selector (RFC 7296 §3.13.1). */
export interface TrafficSelector {
  /** TsType: 7 (IPv4 range), 8 (IPv6 range) or an unknown type (then `raw` holds the body). */
  tsType: number;
  /** IP protocol (0 = any). */
  ipProtocol: number;
  startPort: number;
  endPort: number;
  /** 4 octets (IPv4) or 16 (IPv6). */
  startAddress: Buffer;
  endAddress: Buffer;
  /** For unknown TS types: everything after the Selector Length field. */
  raw?: Buffer;
}

/** Traffic Selector payload, TSi or TSr (RFC 7296 §3.13). */
export interface TsPayload extends PayloadCommon {
  type: typeof PayloadType.TSi | typeof PayloadType.TSr;
  selectors: TrafficSelector[];
}

/*
 * RFC 7296 §3.13 Traffic Selector Payload
 *                      1                   2                   3
 *  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
 * +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 * | Next Payload  |C|  RESERVED   |         Payload Length        |
 * +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 * | Number of TSs |                 RESERVED                      |
 * +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 * ~                       <Traffic Selectors>                     ~
 * +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 *
 * RFC 7296 §3.13.1 Traffic Selector
 * +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 * |   TS Type     |IP Protocol ID*|       Selector Length         |
 * +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 * |           Start Port*         |           End Port*           |
 * +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 * ~                         Starting Address*                     ~
 * +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 * ~                         Ending Address*                       ~
 * +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 * Selector Length is 16 for TS_IPV4_ADDR_RANGE and 40 for TS_IPV6_ADDR_RANGE.
 */
function decodeSelector(r: Reader): TrafficSelector {
  const at = r.offset;
  const tsType = r.u8("TS type");
  const ipProtocol = r.u8("TS ip protocol");
  const len = r.u16("TS selector length");
  const body = r.sub(r.bodyLength(len, 4, "traffic selector", at), "traffic selector");
  const addrLen = tsType === TsType.IPV4_ADDR_RANGE ? 4 : tsType === TsType.IPV6_ADDR_RANGE ? 16 : -1;
  if (addrLen < 0) {
    return { tsType, ipProtocol, startPort: 0, endPort: 0, startAddress: Buffer.alloc(0), endAddress: Buffer.alloc(0), raw: body.rest() };
  }
  if (len !== 8 + 2 * addrLen) {
    throw new IkeDecodeError(DecodeErrorCode.BAD_LENGTH, `TS type ${tsType} selector length ${len}, want ${8 + 2 * addrLen}`, at);
  }
  const startPort = body.u16("TS start port");
  const endPort = body.u16("TS end port");
  const startAddress = body.bytes(addrLen, "TS start address");
  const endAddress = body.bytes(addrLen, "TS end address");
  body.end("traffic selector");
  return { tsType, ipProtocol, startPort, endPort, startAddress, endAddress };
}

function decodeTs(type: TsPayload["type"], r: Reader): Omit<TsPayload, "critical"> {
  const n = r.u8("number of TSs");
  r.bytes(3, "TS reserved");
  const selectors: TrafficSelector[] = [];
  for (let i = 0; i < n; i++) selectors.push(decodeSelector(r));
  r.end("TS payload");
  return { type, selectors };
}

function encodeTs(w: Writer, p: TsPayload): void {
  if (p.selectors.length > 255) throw new RangeError("more than 255 traffic selectors");
  w.u8(p.selectors.length).u8(0).u16(0);
  for (const s of p.selectors) {
    if (s.raw) {
      w.u8(s.tsType).u8(s.ipProtocol).u16(4 + s.raw.length).raw(s.raw);
      continue;
    }
    if (s.startAddress.length !== s.endAddress.length) throw new RangeError("TS start/end address families differ");
    w.u8(s.tsType).u8(s.ipProtocol).u16(8 + 2 * s.startAddress.length).u16(s.startPort).u16(s.endPort).raw(s.startAddress).raw(s.endAddress);
  }
}

// ---------------------------------------------------------------- SK, SKF --

/**
 * Encrypted payload (RFC 7296 §3.14), as received: still encrypted. `body` is
 * IV | ciphertext | ICV; `innerFirst` is the Next Payload field of the SK header (type of
 * the first inner payload). Open it with openSk() from message.ts.
 */
export interface SkPayload extends PayloadCommon {
  type: typeof PayloadType.SK;
  innerFirst: number;
  body: Buffer;
}

/** Encrypted Fragment payload (RFC 7383 §2.5), as received: still encrypted. */
export interface SkfPayload extends PayloadCommon {
  type: typeof PayloadType.SKF;
  /** Next Payload of the first fragment (type of the first inner payload); 0 in the others. */
  innerFirst: number;
  /** 1-based. */
  fragmentNumber: number;
  totalFragments: number;
  body: Buffer;
}

/*
 * RFC 7296 §3.14 Encrypted Payload
 *                      1                   2                   3
 *  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
 * +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 * | Next Payload  |C|  RESERVED   |         Payload Length        |
 * +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 * |                     Initialization Vector                     |
 * |         (length is block size for encryption algorithm)       |
 * +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 * ~                    Encrypted IKE Payloads                     ~
 * +               +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 * |               |             Padding (0-255 octets)            |
 * +-+-+-+-+-+-+-+-+                               +-+-+-+-+-+-+-+-+
 * |                                               |  Pad Length   |
 * +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 * ~                    Integrity Checksum Data                    ~
 * +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 * The Next Payload field names the first *inner* payload.
 */
function decodeSk(r: Reader, innerFirst: number): Omit<SkPayload, "critical"> {
  return { type: PayloadType.SK, innerFirst, body: r.rest() };
}

/*
 * RFC 7383 §2.5 Encrypted Fragment Payload
 *                      1                   2                   3
 *  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
 * +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 * | Next Payload  |C|  RESERVED   |         Payload Length        |
 * +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 * |        Fragment Number        |        Total Fragments        |
 * +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 * |                     Initialization Vector                     |
 * +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 * ~                      Encrypted content                        ~
 * +                               +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 * |                               |             Padding (0-255 octets)
 * +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+               +-+-+-+-+-+-+-+-+
 * |                                               |  Pad Length   |
 * +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 * ~                    Integrity Checksum Data                    ~
 * +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 * "Fragment Number ... MUST be non-zero and less than or equal to Total Fragments";
 * Next Payload is the first inner payload type in fragment 1 and MUST be 0 in the others.
 */
function decodeSkf(r: Reader, innerFirst: number): Omit<SkfPayload, "critical"> {
  const at = r.offset;
  const fragmentNumber = r.u16("fragment number");
  const totalFragments = r.u16("total fragments");
  if (fragmentNumber === 0 || fragmentNumber > totalFragments) {
    throw new IkeDecodeError(DecodeErrorCode.BAD_VALUE, `fragment number ${fragmentNumber} of ${totalFragments}`, at);
  }
  if (fragmentNumber !== 1 && innerFirst !== 0) {
    throw new IkeDecodeError(DecodeErrorCode.BAD_VALUE, `fragment ${fragmentNumber} has Next Payload ${innerFirst} (must be 0)`, at - 4);
  }
  return { type: PayloadType.SKF, innerFirst, fragmentNumber, totalFragments, body: r.rest() };
}

// ---------------------------------------------------------------- CP -------

/** A configuration attribute (RFC 7296 §3.15.1). */
export interface CfgAttribute {
  /** CfgAttr (15 bits). */
  type: number;
  value: Buffer;
}

/** Configuration payload (RFC 7296 §3.15). */
export interface CpPayload extends PayloadCommon {
  type: typeof PayloadType.CP;
  /** CfgType. */
  cfgType: number;
  attributes: CfgAttribute[];
}

/*
 * RFC 7296 §3.15 Configuration Payload
 *                      1                   2                   3
 *  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
 * +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 * | Next Payload  |C| RESERVED    |         Payload Length        |
 * +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 * |   CFG Type    |                    RESERVED                   |
 * +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 * ~                   Configuration Attributes                    ~
 * +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 *
 * RFC 7296 §3.15.1 Configuration Attributes
 * +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 * |R|         Attribute Type      |            Length             |
 * +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 * ~                             Value                             ~
 * +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 * Length counts the Value only.
 */
function decodeCp(r: Reader): Omit<CpPayload, "critical"> {
  const cfgType = r.u8("CFG type");
  r.bytes(3, "CP reserved");
  const attributes: CfgAttribute[] = [];
  while (r.remaining > 0) {
    const type = r.u16("CP attribute type") & 0x7fff;
    const len = r.u16("CP attribute length");
    attributes.push({ type, value: r.bytes(len, "CP attribute value") });
  }
  return { type: PayloadType.CP, cfgType, attributes };
}

function encodeCp(w: Writer, p: CpPayload): void {
  w.u8(p.cfgType).u8(0).u16(0);
  for (const a of p.attributes) w.u16(a.type & 0x7fff).u16(a.value.length).raw(a.value);
}

// ---------------------------------------------------------------- EAP ------

/** EAP payload (RFC 7296 §3.16), decode only: fleetswan does not do EAP. */
export interface EapPayload extends PayloadCommon {
  type: typeof PayloadType.EAP;
  /** EapCode. */
  code: number;
  identifier: number;
  /** EAP method type (Request/Response only). */
  eapType?: number;
  /** Type-Data. */
  data: Buffer;
}

/*
 * RFC 7296 §3.16 EAP Payload
 *                      1                   2                   3
 *  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
 * +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 * | Next Payload  |C|  RESERVED   |         Payload Length        |
 * +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 * ~                       EAP Message                             ~
 * +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 * EAP Message (RFC 3748 §4):
 * |     Code      | Identifier    |           Length              |
 * |     Type      | Type_Data...
 */
function decodeEap(r: Reader): Omit<EapPayload, "critical"> {
  const at = r.offset;
  const total = r.remaining;
  const code = r.u8("EAP code");
  const identifier = r.u8("EAP identifier");
  const len = r.u16("EAP length");
  if (len !== total) throw new IkeDecodeError(DecodeErrorCode.BAD_LENGTH, `EAP length ${len} != payload body ${total}`, at + 2);
  if (code === 1 || code === 2) {
    const eapType = r.u8("EAP type");
    return { type: PayloadType.EAP, code, identifier, eapType, data: r.rest() };
  }
  return { type: PayloadType.EAP, code, identifier, data: r.rest() };
}

// ---------------------------------------------------------------- unknown --

/** A payload of a type we do not understand, kept as bytes (non-critical ones are skipped, §2.5). */
export interface UnknownPayload extends PayloadCommon {
  /** The numeric payload type (never one of the known types). */
  type: number;
  unknown: true;
  body: Buffer;
}

/** Every payload fleetswan understands, plus UnknownPayload. */
export type KnownPayload =
  | SaPayload
  | KePayload
  | IdPayload
  | CertPayload
  | CertReqPayload
  | AuthPayload
  | NoncePayload
  | NotifyPayload
  | DeletePayload
  | VendorIdPayload
  | TsPayload
  | SkPayload
  | SkfPayload
  | CpPayload
  | EapPayload;

/** A decoded payload. Narrow with `p.type === PayloadType.X` (or isUnknown()). */
export type Payload = KnownPayload | UnknownPayload;

/** True for a payload type this codec decodes. */
export function isKnownPayloadType(t: number): boolean {
  return (t >= PayloadType.SA && t <= PayloadType.EAP) || t === PayloadType.SKF;
}

/** True if `p` is an UnknownPayload. */
export function isUnknown(p: Payload): p is UnknownPayload {
  return (p as UnknownPayload).unknown === true;
}

/**
 * Decode one payload body (bytes after the generic header, confined to the declared
 * length). `nextPayload` is only used by SK/SKF (their Next Payload names the inner chain).
 */
export function decodePayloadBody(type: number, critical: boolean, r: Reader, nextPayload: number): Payload {
  let p: Omit<KnownPayload, "critical">;
  switch (type) {
    case PayloadType.SA: p = decodeSa(r); break;
    case PayloadType.KE: p = decodeKe(r); break;
    case PayloadType.IDi:
    case PayloadType.IDr: p = decodeId(type, r); break;
    case PayloadType.CERT: p = decodeCert(PayloadType.CERT, r); break;
    case PayloadType.CERTREQ: p = decodeCert(PayloadType.CERTREQ, r); break;
    case PayloadType.AUTH: p = decodeAuth(r); break;
    case PayloadType.NONCE: p = decodeNonce(r); break;
    case PayloadType.NOTIFY: p = decodeNotify(r); break;
    case PayloadType.DELETE: p = decodeDelete(r); break;
    case PayloadType.VENDOR_ID: p = decodeVendor(r); break;
    case PayloadType.TSi:
    case PayloadType.TSr: p = decodeTs(type, r); break;
    case PayloadType.SK: p = decodeSk(r, nextPayload); break;
    case PayloadType.SKF: p = decodeSkf(r, nextPayload); break;
    case PayloadType.CP: p = decodeCp(r); break;
    case PayloadType.EAP: p = decodeEap(r); break;
    default:
      return { type, unknown: true, critical, body: r.rest() };
  }
  r.end(`payload type ${type}`);
  return { ...p, critical } as Payload;
}

/**
 * Encode one payload body (without generic header). SK/SKF bodies are written as given
 * (already sealed); EAP is decode-only and refused here.
 */
export function encodePayloadBody(p: Payload): Buffer {
  const w = new Writer();
  if (isUnknown(p)) return Buffer.from(p.body);
  switch (p.type) {
    case PayloadType.SA: encodeSa(w, p); break;
    case PayloadType.KE: encodeKe(w, p); break;
    case PayloadType.IDi:
    case PayloadType.IDr: encodeId(w, p); break;
    case PayloadType.CERT:
    case PayloadType.CERTREQ: encodeCert(w, p); break;
    case PayloadType.AUTH: encodeAuth(w, p); break;
    case PayloadType.NONCE: encodeNonce(w, p); break;
    case PayloadType.NOTIFY: encodeNotify(w, p); break;
    case PayloadType.DELETE: encodeDelete(w, p); break;
    case PayloadType.VENDOR_ID: w.raw(p.data); break;
    case PayloadType.TSi:
    case PayloadType.TSr: encodeTs(w, p); break;
    case PayloadType.SK: w.raw(p.body); break;
    case PayloadType.SKF: w.u16(p.fragmentNumber).u16(p.totalFragments).raw(p.body); break;
    case PayloadType.CP: encodeCp(w, p); break;
    case PayloadType.EAP: throw new RangeError("EAP payloads are decode-only");
  }
  return w.toBuffer();
}

/** The Next Payload value a payload contributes to the chain for its successor (SK/SKF: inner first). */
export function innerNextOf(p: Payload): number | undefined {
  if (!isUnknown(p) && (p.type === PayloadType.SK || p.type === PayloadType.SKF)) return p.innerFirst;
  return undefined;
}
