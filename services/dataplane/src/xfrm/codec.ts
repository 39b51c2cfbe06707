/**
 * The XFRM netlink message codec: pure functions from typed messages to bytes and back.
 * No sockets here (src/xfrm/netlink.ts does the I/O).
 *
 * Layouts follow the kernel's include/uapi/linux/xfrm.h; every struct has its offsets
 * written next to its codec. Native byte order (little-endian on every platform we
 * ship) for host-order fields; SPIs and ports are network order (__be32/__be16).
 *
 * Decoding rules: every length is checked before it is used, each attribute is confined
 * to its declared length, a fixed struct shorter than its size is an error naming the
 * struct and the message, unknown attributes are kept (attrs.unknown), not dropped.
 *
 * Encoding emits attributes in one canonical order (the order iproute2 uses, so goldens
 * captured from `ip xfrm` compare byte for byte): AEAD, CRYPT, AUTH, AUTH_TRUNC, ENCAP,
 * TMPL, REPLAY_VAL, REPLAY_ESN_VAL, SA_EXTRA_FLAGS, SRCADDR, LIFETIME_CUR, MARK, IF_ID,
 * ADDRESS_FILTER, POLICY_TYPE, then unknown attributes as given.
 */
import { FleetswanError } from "@fleetswan/common";
import { readAddress, writeAddress } from "./addr.js";
import { NLMSG, NLM_F, SIZE, XFRMA, XFRM_MSG, msgTypeName } from "./constants.js";

/** A message that is truncated, overlong or inconsistent. Never contains key bytes. */
export class XfrmDecodeError extends FleetswanError {
  constructor(message: string, readonly where: string) {
    super("XFRM_MALFORMED", `${where}: ${message}`, { where });
  }
}

// ---------------------------------------------------------------- structs --

/** struct xfrm_selector (56 octets). */
export interface XfrmSelector {
  /** off 0: daddr, 16: saddr (xfrm_address_t). */
  daddr: string;
  saddr: string;
  /** off 32,34,36,38: __be16 dport, dport_mask, sport, sport_mask. */
  dport: number;
  dportMask: number;
  sport: number;
  sportMask: number;
  /** off 40: __u16 family; 42: prefixlen_d; 43: prefixlen_s; 44: proto; 48: int ifindex; 52: uid user. */
  family: number;
  prefixlenD: number;
  prefixlenS: number;
  proto: number;
  ifindex: number;
  user: number;
}

/** struct xfrm_id (24 octets): daddr 0, __be32 spi 16, proto 20. */
export interface XfrmId {
  daddr: string;
  spi: number;
  proto: number;
}

/** struct xfrm_lifetime_cfg (64 octets, eight __u64; XFRM_INF = no limit). */
export interface XfrmLifetimeCfg {
  softByteLimit: bigint;
  hardByteLimit: bigint;
  softPacketLimit: bigint;
  hardPacketLimit: bigint;
  softAddExpiresSeconds: bigint;
  hardAddExpiresSeconds: bigint;
  softUseExpiresSeconds: bigint;
  hardUseExpiresSeconds: bigint;
}

/** struct xfrm_lifetime_cur (32 octets): bytes, packets, add_time, use_time. */
export interface XfrmLifetimeCur {
  bytes: bigint;
  packets: bigint;
  addTime: bigint;
  useTime: bigint;
}

/** struct xfrm_stats (12 octets). */
export interface XfrmStats {
  replayWindow: number;
  replay: number;
  integrityFailed: number;
}

/**
 * struct xfrm_usersa_info (224 octets): sel 0, id 56, saddr 80, lft 96, curlft 160,
 * stats 192, seq 204, reqid 208, family 212, mode 214, replay_window 215, flags 216.
 */
export interface XfrmUsersaInfo {
  sel: XfrmSelector;
  id: XfrmId;
  saddr: string;
  lft: XfrmLifetimeCfg;
  curlft: XfrmLifetimeCur;
  stats: XfrmStats;
  seq: number;
  reqid: number;
  family: number;
  mode: number;
  replayWindow: number;
  flags: number;
}

/** struct xfrm_usersa_id (24 octets): daddr 0, __be32 spi 16, family 20, proto 22. */
export interface XfrmUsersaId {
  daddr: string;
  spi: number;
  family: number;
  proto: number;
}

/**
 * struct xfrm_userpolicy_info (168 octets): sel 0, lft 56, curlft 120, priority 152,
 * index 156, dir 160, action 161, flags 162, share 163.
 */
export interface XfrmUserpolicyInfo {
  sel: XfrmSelector;
  lft: XfrmLifetimeCfg;
  curlft: XfrmLifetimeCur;
  priority: number;
  index: number;
  dir: number;
  action: number;
  flags: number;
  share: number;
}

/** struct xfrm_userpolicy_id (64 octets): sel 0, index 56, dir 60. */
export interface XfrmUserpolicyId {
  sel: XfrmSelector;
  index: number;
  dir: number;
}

/**
 * struct xfrm_user_tmpl (64 octets): id 0, family 24, saddr 28, reqid 44, mode 48,
 * share 49, optional 50, aalgos 52, ealgos 56, calgos 60.
 */
export interface XfrmUserTmpl {
  id: XfrmId;
  family: number;
  saddr: string;
  reqid: number;
  mode: number;
  share: number;
  optional: number;
  aalgos: number;
  ealgos: number;
  calgos: number;
}

/**
 * struct xfrm_user_acquire (280 octets): id 0, saddr 24, sel 40, policy 96,
 * aalgos 264, ealgos 268, calgos 272, seq 276.
 */
export interface XfrmUserAcquire {
  id: XfrmId;
  saddr: string;
  sel: XfrmSelector;
  policy: XfrmUserpolicyInfo;
  aalgos: number;
  ealgos: number;
  calgos: number;
  seq: number;
}

// ------------------------------------------------------------- attributes --

/** struct xfrm_algo / xfrm_algo_auth / xfrm_algo_aead: name[64], key_len (bits), [trunc/icv bits], key. */
export interface XfrmAlgo {
  name: string;
  key: Buffer;
}
export interface XfrmAlgoAuth extends XfrmAlgo {
  truncLen: number;
}
export interface XfrmAlgoAead extends XfrmAlgo {
  icvLen: number;
}

/** struct xfrm_encap_tmpl (24 octets): type 0, __be16 sport 2, __be16 dport 4, oa 8. */
export interface XfrmEncapTmpl {
  type: number;
  sport: number;
  dport: number;
  oa: string;
}

/** struct xfrm_replay_state_esn (24 octets + bmp_len * 4). */
export interface XfrmReplayEsn {
  bmpLen: number;
  oseq: number;
  seq: number;
  oseqHi: number;
  seqHi: number;
  replayWindow: number;
  bmp: number[];
}

/** struct xfrm_replay_state (12 octets). */
export interface XfrmReplayState {
  oseq: number;
  seq: number;
  bitmap: number;
}

/** struct xfrm_address_filter (36 octets): saddr 0, daddr 16, family 32, splen 34, dplen 35. */
export interface XfrmAddressFilter {
  saddr: string;
  daddr: string;
  family: number;
  splen: number;
  dplen: number;
}

/** An attribute this codec does not interpret, kept as bytes. */
export interface RawAttr {
  type: number;
  data: Buffer;
}

/** Attributes of XFRM messages; each optional. Family for addresses comes from the message. */
export interface XfrmAttrs {
  algAead?: XfrmAlgoAead;
  algCrypt?: XfrmAlgo;
  algAuth?: XfrmAlgo;
  algAuthTrunc?: XfrmAlgoAuth;
  encap?: XfrmEncapTmpl;
  tmpl?: XfrmUserTmpl[];
  replayVal?: XfrmReplayState;
  replayEsn?: XfrmReplayEsn;
  saExtraFlags?: number;
  srcaddr?: string;
  lifetimeCur?: XfrmLifetimeCur;
  mark?: { value: number; mask: number };
  ifId?: number;
  addressFilter?: XfrmAddressFilter;
  policyType?: number;
  /** XFRMA_LASTUSED (__u64, seconds). Decoded only. */
  lastUsed?: bigint;
  /** XFRMA_SA inside DELSA notifications. Decoded only. */
  sa?: XfrmUsersaInfo;
  /** XFRMA_POLICY inside DELPOLICY notifications. Decoded only. */
  policy?: XfrmUserpolicyInfo;
  unknown?: RawAttr[];
}

// --------------------------------------------------------------- messages --

/** The body of a message, by what it carries. */
export type XfrmBody =
  /** NEWSA, UPDSA (requests, dump replies, GETSA/ALLOCSPI replies). */
  | { kind: "sa"; info: XfrmUsersaInfo; attrs: XfrmAttrs }
  /** DELSA, GETSA. */
  | { kind: "saId"; id: XfrmUsersaId; attrs: XfrmAttrs }
  /** ALLOCSPI (struct xfrm_userspi_info: info 0, min 224, max 228). */
  | { kind: "allocSpi"; info: XfrmUsersaInfo; min: number; max: number; attrs: XfrmAttrs }
  /** NEWPOLICY, UPDPOLICY. */
  | { kind: "policy"; info: XfrmUserpolicyInfo; attrs: XfrmAttrs }
  /** DELPOLICY, GETPOLICY. */
  | { kind: "policyId"; id: XfrmUserpolicyId; attrs: XfrmAttrs }
  /** GETSA/GETPOLICY with NLM_F_DUMP, FLUSHPOLICY: no fixed part. */
  | { kind: "bare"; attrs: XfrmAttrs }
  /** FLUSHSA (struct xfrm_usersa_flush: proto). */
  | { kind: "flushSa"; proto: number }
  | { kind: "acquire"; acquire: XfrmUserAcquire; attrs: XfrmAttrs }
  /** EXPIRE (struct xfrm_user_expire: state 0, hard 224). */
  | { kind: "expire"; info: XfrmUsersaInfo; hard: boolean; attrs: XfrmAttrs }
  /** POLEXPIRE (struct xfrm_user_polexpire: pol 0, hard 168). */
  | { kind: "polexpire"; info: XfrmUserpolicyInfo; hard: boolean; attrs: XfrmAttrs }
  /** NLMSG_ERROR (struct nlmsgerr: int error, then the request's nlmsghdr). errno is positive; 0 = ACK. */
  | { kind: "error"; errno: number; request: NlHeader }
  | { kind: "done" }
  /** A type this codec does not decode (kept as bytes). */
  | { kind: "raw"; data: Buffer };

/** struct nlmsghdr (16 octets): len 0, type 4, flags 6, seq 8, pid 12. */
export interface NlHeader {
  len: number;
  type: number;
  flags: number;
  seq: number;
  pid: number;
}

export interface XfrmMessage {
  type: number;
  flags: number;
  seq: number;
  pid: number;
  body: XfrmBody;
}

// ------------------------------------------------------------- helpers --

const align4 = (n: number): number => (n + 3) & ~3;

/** A lifetime config with every limit XFRM_INF (what iproute2 sends when none is given). */
export function infiniteLifetime(): XfrmLifetimeCfg {
  const inf = 0xffffffffffffffffn;
  return {
    softByteLimit: inf,
    hardByteLimit: inf,
    softPacketLimit: inf,
    hardPacketLimit: inf,
    softAddExpiresSeconds: 0n,
    hardAddExpiresSeconds: 0n,
    softUseExpiresSeconds: 0n,
    hardUseExpiresSeconds: 0n,
  };
}

export function zeroLifetimeCur(): XfrmLifetimeCur {
  return { bytes: 0n, packets: 0n, addTime: 0n, useTime: 0n };
}

export function emptySelector(family = 0): XfrmSelector {
  return { daddr: "", saddr: "", dport: 0, dportMask: 0, sport: 0, sportMask: 0, family, prefixlenD: 0, prefixlenS: 0, proto: 0, ifindex: 0, user: 0 };
}

class Reader {
  constructor(
    readonly buf: Buffer,
    readonly where: string,
  ) {}
  need(off: number, n: number, what: string): void {
    if (off < 0 || off + n > this.buf.length) {
      throw new XfrmDecodeError(`truncated ${what}: need ${n} octets at offset ${off}, have ${Math.max(0, this.buf.length - off)}`, this.where);
    }
  }
}

// ---------------------------------------------------------- struct codecs --

function writeSelector(b: Buffer, o: number, s: XfrmSelector): void {
  writeAddress(b, o, s.daddr);
  writeAddress(b, o + 16, s.saddr);
  b.writeUInt16BE(s.dport, o + 32);
  b.writeUInt16BE(s.dportMask, o + 34);
  b.writeUInt16BE(s.sport, o + 36);
  b.writeUInt16BE(s.sportMask, o + 38);
  b.writeUInt16LE(s.family, o + 40);
  b.writeUInt8(s.prefixlenD, o + 42);
  b.writeUInt8(s.prefixlenS, o + 43);
  b.writeUInt8(s.proto, o + 44);
  b.writeInt32LE(s.ifindex, o + 48);
  b.writeUInt32LE(s.user >>> 0, o + 52);
}

function readSelector(b: Buffer, o: number): XfrmSelector {
  const family = b.readUInt16LE(o + 40);
  return {
    daddr: readAddress(b, o, family),
    saddr: readAddress(b, o + 16, family),
    dport: b.readUInt16BE(o + 32),
    dportMask: b.readUInt16BE(o + 34),
    sport: b.readUInt16BE(o + 36),
    sportMask: b.readUInt16BE(o + 38),
    family,
    prefixlenD: b[o + 42],
    prefixlenS: b[o + 43],
    proto: b[o + 44],
    ifindex: b.readInt32LE(o + 48),
    user: b.readUInt32LE(o + 52),
  };
}

function writeId(b: Buffer, o: number, id: XfrmId): void {
  writeAddress(b, o, id.daddr);
  b.writeUInt32BE(id.spi >>> 0, o + 16);
  b.writeUInt8(id.proto, o + 20);
}

function readId(b: Buffer, o: number, family: number): XfrmId {
  return { daddr: readAddress(b, o, family), spi: b.readUInt32BE(o + 16), proto: b[o + 20] };
}

const LFT_FIELDS = [
  "softByteLimit",
  "hardByteLimit",
  "softPacketLimit",
  "hardPacketLimit",
  "softAddExpiresSeconds",
  "hardAddExpiresSeconds",
  "softUseExpiresSeconds",
  "hardUseExpiresSeconds",
] as const;

function writeLft(b: Buffer, o: number, l: XfrmLifetimeCfg): void {
  LFT_FIELDS.forEach((f, i) => b.writeBigUInt64LE(l[f], o + i * 8));
}
function readLft(b: Buffer, o: number): XfrmLifetimeCfg {
  const l = {} as XfrmLifetimeCfg;
  LFT_FIELDS.forEach((f, i) => (l[f] = b.readBigUInt64LE(o + i * 8)));
  return l;
}
function writeCur(b: Buffer, o: number, c: XfrmLifetimeCur): void {
  b.writeBigUInt64LE(c.bytes, o);
  b.writeBigUInt64LE(c.packets, o + 8);
  b.writeBigUInt64LE(c.addTime, o + 16);
  b.writeBigUInt64LE(c.useTime, o + 24);
}
function readCur(b: Buffer, o: number): XfrmLifetimeCur {
  return { bytes: b.readBigUInt64LE(o), packets: b.readBigUInt64LE(o + 8), addTime: b.readBigUInt64LE(o + 16), useTime: b.readBigUInt64LE(o + 24) };
}

function writeUsersaInfo(b: Buffer, o: number, s: XfrmUsersaInfo): void {
  writeSelector(b, o, s.sel);
  writeId(b, o + 56, s.id);
  writeAddress(b, o + 80, s.saddr);
  writeLft(b, o + 96, s.lft);
  writeCur(b, o + 160, s.curlft);
  b.writeUInt32LE(s.stats.replayWindow >>> 0, o + 192);
  b.writeUInt32LE(s.stats.replay >>> 0, o + 196);
  b.writeUInt32LE(s.stats.integrityFailed >>> 0, o + 200);
  b.writeUInt32LE(s.seq >>> 0, o + 204);
  b.writeUInt32LE(s.reqid >>> 0, o + 208);
  b.writeUInt16LE(s.family, o + 212);
  b.writeUInt8(s.mode, o + 214);
  b.writeUInt8(s.replayWindow, o + 215);
  b.writeUInt8(s.flags, o + 216);
}

function readUsersaInfo(b: Buffer, o: number): XfrmUsersaInfo {
  const family = b.readUInt16LE(o + 212);
  return {
    sel: readSelector(b, o),
    id: readId(b, o + 56, family),
    saddr: readAddress(b, o + 80, family),
    lft: readLft(b, o + 96),
    curlft: readCur(b, o + 160),
    stats: { replayWindow: b.readUInt32LE(o + 192), replay: b.readUInt32LE(o + 196), integrityFailed: b.readUInt32LE(o + 200) },
    seq: b.readUInt32LE(o + 204),
    reqid: b.readUInt32LE(o + 208),
    family,
    mode: b[o + 214],
    replayWindow: b[o + 215],
    flags: b[o + 216],
  };
}

function writeUsersaId(b: Buffer, o: number, s: XfrmUsersaId): void {
  writeAddress(b, o, s.daddr);
  b.writeUInt32BE(s.spi >>> 0, o + 16);
  b.writeUInt16LE(s.family, o + 20);
  b.writeUInt8(s.proto, o + 22);
}
function readUsersaId(b: Buffer, o: number): XfrmUsersaId {
  const family = b.readUInt16LE(o + 20);
  return { daddr: readAddress(b, o, family), spi: b.readUInt32BE(o + 16), family, proto: b[o + 22] };
}

function writeUserpolicyInfo(b: Buffer, o: number, p: XfrmUserpolicyInfo): void {
  writeSelector(b, o, p.sel);
  writeLft(b, o + 56, p.lft);
  writeCur(b, o + 120, p.curlft);
  b.writeUInt32LE(p.priority >>> 0, o + 152);
  b.writeUInt32LE(p.index >>> 0, o + 156);
  b.writeUInt8(p.dir, o + 160);
  b.writeUInt8(p.action, o + 161);
  b.writeUInt8(p.flags, o + 162);
  b.writeUInt8(p.share, o + 163);
}
function readUserpolicyInfo(b: Buffer, o: number): XfrmUserpolicyInfo {
  return {
    sel: readSelector(b, o),
    lft: readLft(b, o + 56),
    curlft: readCur(b, o + 120),
    priority: b.readUInt32LE(o + 152),
    index: b.readUInt32LE(o + 156),
    dir: b[o + 160],
    action: b[o + 161],
    flags: b[o + 162],
    share: b[o + 163],
  };
}

function writeUserpolicyId(b: Buffer, o: number, p: XfrmUserpolicyId): void {
  writeSelector(b, o, p.sel);
  b.writeUInt32LE(p.index >>> 0, o + 56);
  b.writeUInt8(p.dir, o + 60);
}
function readUserpolicyId(b: Buffer, o: number): XfrmUserpolicyId {
  return { sel: readSelector(b, o), index: b.readUInt32LE(o + 56), dir: b[o + 60] };
}

function writeTmpl(b: Buffer, o: number, t: XfrmUserTmpl): void {
  writeId(b, o, t.id);
  b.writeUInt16LE(t.family, o + 24);
  writeAddress(b, o + 28, t.saddr);
  b.writeUInt32LE(t.reqid >>> 0, o + 44);
  b.writeUInt8(t.mode, o + 48);
  b.writeUInt8(t.share, o + 49);
  b.writeUInt8(t.optional, o + 50);
  b.writeUInt32LE(t.aalgos >>> 0, o + 52);
  b.writeUInt32LE(t.ealgos >>> 0, o + 56);
  b.writeUInt32LE(t.calgos >>> 0, o + 60);
}
function readTmpl(b: Buffer, o: number): XfrmUserTmpl {
  const family = b.readUInt16LE(o + 24);
  return {
    id: readId(b, o, family),
    family,
    saddr: readAddress(b, o + 28, family),
    reqid: b.readUInt32LE(o + 44),
    mode: b[o + 48],
    share: b[o + 49],
    optional: b[o + 50],
    aalgos: b.readUInt32LE(o + 52),
    ealgos: b.readUInt32LE(o + 56),
    calgos: b.readUInt32LE(o + 60),
  };
}

function writeAcquire(b: Buffer, o: number, a: XfrmUserAcquire): void {
  writeId(b, o, a.id);
  writeAddress(b, o + 24, a.saddr);
  writeSelector(b, o + 40, a.sel);
  writeUserpolicyInfo(b, o + 96, a.policy);
  b.writeUInt32LE(a.aalgos >>> 0, o + 264);
  b.writeUInt32LE(a.ealgos >>> 0, o + 268);
  b.writeUInt32LE(a.calgos >>> 0, o + 272);
  b.writeUInt32LE(a.seq >>> 0, o + 276);
}
function readAcquire(b: Buffer, o: number, family: number): XfrmUserAcquire {
  return {
    id: readId(b, o, family),
    saddr: readAddress(b, o + 24, family),
    sel: readSelector(b, o + 40),
    policy: readUserpolicyInfo(b, o + 96),
    aalgos: b.readUInt32LE(o + 264),
    ealgos: b.readUInt32LE(o + 268),
    calgos: b.readUInt32LE(o + 272),
    seq: b.readUInt32LE(o + 276),
  };
}

// ---------------------------------------------------------- attribute codec --

function algName(name: string, where: string): Buffer {
  const n = Buffer.from(name, "utf8");
  if (n.length >= 64) throw new XfrmDecodeError(`algorithm name "${name}" longer than 63 octets`, where);
  const out = Buffer.alloc(64);
  n.copy(out);
  return out;
}

function readAlgName(b: Buffer): string {
  const end = b.indexOf(0);
  return b.subarray(0, end < 0 ? 64 : Math.min(end, 64)).toString("utf8");
}

function attr(type: number, data: Buffer): Buffer {
  const len = SIZE.nlattr + data.length;
  const out = Buffer.alloc(align4(len));
  out.writeUInt16LE(len, 0);
  out.writeUInt16LE(type, 2);
  data.copy(out, 4);
  return out;
}

const u32 = (v: number): Buffer => {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(v >>> 0);
  return b;
};

/** Encode attributes in the canonical order (see the file comment). `family` is for addresses. */
export function encodeAttrs(a: XfrmAttrs, where = "attributes"): Buffer {
  const parts: Buffer[] = [];
  if (a.algAead) {
    const d = Buffer.alloc(SIZE.algoAead + a.algAead.key.length);
    algName(a.algAead.name, where).copy(d);
    d.writeUInt32LE(a.algAead.key.length * 8, 64);
    d.writeUInt32LE(a.algAead.icvLen, 68);
    a.algAead.key.copy(d, 72);
    parts.push(attr(XFRMA.ALG_AEAD, d));
  }
  if (a.algCrypt) parts.push(attr(XFRMA.ALG_CRYPT, encodeAlgo(a.algCrypt, where)));
  if (a.algAuth) parts.push(attr(XFRMA.ALG_AUTH, encodeAlgo(a.algAuth, where)));
  if (a.algAuthTrunc) {
    const d = Buffer.alloc(SIZE.algoAuth + a.algAuthTrunc.key.length);
    algName(a.algAuthTrunc.name, where).copy(d);
    d.writeUInt32LE(a.algAuthTrunc.key.length * 8, 64);
    d.writeUInt32LE(a.algAuthTrunc.truncLen, 68);
    a.algAuthTrunc.key.copy(d, 72);
    parts.push(attr(XFRMA.ALG_AUTH_TRUNC, d));
  }
  if (a.encap) {
    const d = Buffer.alloc(SIZE.encapTmpl);
    d.writeUInt16LE(a.encap.type, 0);
    d.writeUInt16BE(a.encap.sport, 2);
    d.writeUInt16BE(a.encap.dport, 4);
    writeAddress(d, 8, a.encap.oa);
    parts.push(attr(XFRMA.ENCAP, d));
  }
  if (a.tmpl && a.tmpl.length > 0) {
    const d = Buffer.alloc(SIZE.userTmpl * a.tmpl.length);
    a.tmpl.forEach((t, i) => writeTmpl(d, i * SIZE.userTmpl, t));
    parts.push(attr(XFRMA.TMPL, d));
  }
  if (a.replayVal) {
    const d = Buffer.alloc(SIZE.replayState);
    d.writeUInt32LE(a.replayVal.oseq >>> 0, 0);
    d.writeUInt32LE(a.replayVal.seq >>> 0, 4);
    d.writeUInt32LE(a.replayVal.bitmap >>> 0, 8);
    parts.push(attr(XFRMA.REPLAY_VAL, d));
  }
  if (a.replayEsn) {
    const r = a.replayEsn;
    // The bitmap may be omitted (iproute2 sends the 24-octet header only; the kernel
    // zero-fills it, xfrm_alloc_replay_state_esn()); when present it has bmp_len words.
    if (r.bmp.length !== 0 && r.bmp.length !== r.bmpLen) throw new XfrmDecodeError(`replay ESN bmp has ${r.bmp.length} words, bmp_len says ${r.bmpLen}`, where);
    const d = Buffer.alloc(SIZE.replayStateEsn + r.bmp.length * 4);
    [r.bmpLen, r.oseq, r.seq, r.oseqHi, r.seqHi, r.replayWindow].forEach((v, i) => d.writeUInt32LE(v >>> 0, i * 4));
    r.bmp.forEach((w, i) => d.writeUInt32LE(w >>> 0, 24 + i * 4));
    parts.push(attr(XFRMA.REPLAY_ESN_VAL, d));
  }
  if (a.saExtraFlags !== undefined) parts.push(attr(XFRMA.SA_EXTRA_FLAGS, u32(a.saExtraFlags)));
  if (a.srcaddr !== undefined) {
    const d = Buffer.alloc(16);
    writeAddress(d, 0, a.srcaddr);
    parts.push(attr(XFRMA.SRCADDR, d));
  }
  if (a.lifetimeCur) {
    const d = Buffer.alloc(SIZE.lifetimeCur);
    writeCur(d, 0, a.lifetimeCur);
    parts.push(attr(XFRMA.LTIME_VAL, d));
  }
  if (a.mark) {
    const d = Buffer.alloc(SIZE.mark);
    d.writeUInt32LE(a.mark.value >>> 0, 0);
    d.writeUInt32LE(a.mark.mask >>> 0, 4);
    parts.push(attr(XFRMA.MARK, d));
  }
  if (a.ifId !== undefined) parts.push(attr(XFRMA.IF_ID, u32(a.ifId)));
  if (a.addressFilter) {
    const f = a.addressFilter;
    const d = Buffer.alloc(SIZE.addressFilter);
    writeAddress(d, 0, f.saddr);
    writeAddress(d, 16, f.daddr);
    d.writeUInt16LE(f.family, 32);
    d.writeUInt8(f.splen, 34);
    d.writeUInt8(f.dplen, 35);
    parts.push(attr(XFRMA.ADDRESS_FILTER, d));
  }
  if (a.policyType !== undefined) {
    const d = Buffer.alloc(6);
    d.writeUInt8(a.policyType, 0);
    parts.push(attr(XFRMA.POLICY_TYPE, d));
  }
  for (const u of a.unknown ?? []) parts.push(attr(u.type, u.data));
  return Buffer.concat(parts);
}

function encodeAlgo(a: XfrmAlgo, where: string): Buffer {
  const d = Buffer.alloc(SIZE.algo + a.key.length);
  algName(a.name, where).copy(d);
  d.writeUInt32LE(a.key.length * 8, 64);
  a.key.copy(d, 68);
  return d;
}

/** Decode a run of netlink attributes; `family` decodes address-carrying ones. */
export function decodeAttrs(buf: Buffer, family: number, where: string): XfrmAttrs {
  const a: XfrmAttrs = {};
  let off = 0;
  while (off < buf.length) {
    if (buf.length - off < SIZE.nlattr) throw new XfrmDecodeError(`truncated attribute header at offset ${off} (${buf.length - off} octets left)`, where);
    const len = buf.readUInt16LE(off);
    const type = buf.readUInt16LE(off + 2) & 0x3fff; // strip NLA_F_NESTED / NLA_F_NET_BYTEORDER
    if (len < SIZE.nlattr) throw new XfrmDecodeError(`attribute type ${type} at offset ${off} has length ${len} < 4`, where);
    if (off + len > buf.length) throw new XfrmDecodeError(`attribute type ${type} at offset ${off} has length ${len}, only ${buf.length - off} octets left`, where);
    const d = buf.subarray(off + 4, off + len);
    const w = `${where} attribute ${type}`;
    const need = (n: number, what: string) => {
      if (d.length < n) throw new XfrmDecodeError(`truncated ${what}: ${d.length} octets, need ${n}`, w);
    };
    switch (type) {
      case XFRMA.ALG_AEAD:
      case XFRMA.ALG_AUTH_TRUNC: {
        need(72, type === XFRMA.ALG_AEAD ? "xfrm_algo_aead" : "xfrm_algo_auth");
        const bits = d.readUInt32LE(64);
        const keyLen = Math.ceil(bits / 8);
        need(72 + keyLen, "algorithm key");
        const v = { name: readAlgName(d), key: Buffer.from(d.subarray(72, 72 + keyLen)) };
        if (type === XFRMA.ALG_AEAD) a.algAead = { ...v, icvLen: d.readUInt32LE(68) };
        else a.algAuthTrunc = { ...v, truncLen: d.readUInt32LE(68) };
        break;
      }
      case XFRMA.ALG_CRYPT:
      case XFRMA.ALG_AUTH: {
        need(68, "xfrm_algo");
        const keyLen = Math.ceil(d.readUInt32LE(64) / 8);
        need(68 + keyLen, "algorithm key");
        const v = { name: readAlgName(d), key: Buffer.from(d.subarray(68, 68 + keyLen)) };
        if (type === XFRMA.ALG_CRYPT) a.algCrypt = v;
        else a.algAuth = v;
        break;
      }
      case XFRMA.ENCAP:
        need(SIZE.encapTmpl, "xfrm_encap_tmpl");
        a.encap = { type: d.readUInt16LE(0), sport: d.readUInt16BE(2), dport: d.readUInt16BE(4), oa: readAddress(d, 8, family) };
        break;
      case XFRMA.TMPL: {
        if (d.length % SIZE.userTmpl !== 0) throw new XfrmDecodeError(`XFRMA_TMPL length ${d.length} is not a multiple of ${SIZE.userTmpl}`, w);
        a.tmpl = [];
        for (let i = 0; i < d.length; i += SIZE.userTmpl) a.tmpl.push(readTmpl(d, i));
        break;
      }
      case XFRMA.REPLAY_VAL:
        need(SIZE.replayState, "xfrm_replay_state");
        a.replayVal = { oseq: d.readUInt32LE(0), seq: d.readUInt32LE(4), bitmap: d.readUInt32LE(8) };
        break;
      case XFRMA.REPLAY_ESN_VAL: {
        need(SIZE.replayStateEsn, "xfrm_replay_state_esn");
        const bmpLen = d.readUInt32LE(0);
        if (bmpLen > 4096 / 32) throw new XfrmDecodeError(`replay ESN bmp_len ${bmpLen} exceeds XFRMA_REPLAY_ESN_MAX`, w);
        // Header only (bitmap omitted, as iproute2 sends it) or header + bmp_len words.
        if (d.length !== SIZE.replayStateEsn) need(SIZE.replayStateEsn + bmpLen * 4, "xfrm_replay_state_esn bitmap");
        const bmp: number[] = [];
        if (d.length !== SIZE.replayStateEsn) for (let i = 0; i < bmpLen; i++) bmp.push(d.readUInt32LE(24 + i * 4));
        a.replayEsn = { bmpLen, oseq: d.readUInt32LE(4), seq: d.readUInt32LE(8), oseqHi: d.readUInt32LE(12), seqHi: d.readUInt32LE(16), replayWindow: d.readUInt32LE(20), bmp };
        break;
      }
      case XFRMA.SA_EXTRA_FLAGS:
        need(4, "SA_EXTRA_FLAGS");
        a.saExtraFlags = d.readUInt32LE(0);
        break;
      case XFRMA.SRCADDR:
        need(16, "SRCADDR");
        a.srcaddr = readAddress(d, 0, family);
        break;
      case XFRMA.LTIME_VAL:
        need(SIZE.lifetimeCur, "xfrm_lifetime_cur");
        a.lifetimeCur = readCur(d, 0);
        break;
      case XFRMA.MARK:
        need(SIZE.mark, "xfrm_mark");
        a.mark = { value: d.readUInt32LE(0), mask: d.readUInt32LE(4) };
        break;
      case XFRMA.IF_ID:
        need(4, "IF_ID");
        a.ifId = d.readUInt32LE(0);
        break;
      case XFRMA.ADDRESS_FILTER: {
        need(SIZE.addressFilter, "xfrm_address_filter");
        const fam = d.readUInt16LE(32);
        a.addressFilter = { saddr: readAddress(d, 0, fam), daddr: readAddress(d, 16, fam), family: fam, splen: d[34], dplen: d[35] };
        break;
      }
      case XFRMA.POLICY_TYPE:
        need(1, "xfrm_userpolicy_type");
        a.policyType = d[0];
        break;
      case XFRMA.LASTUSED:
        need(8, "LASTUSED");
        a.lastUsed = d.readBigUInt64LE(0);
        break;
      case XFRMA.SA:
        need(SIZE.usersaInfo, "XFRMA_SA xfrm_usersa_info");
        a.sa = readUsersaInfo(d, 0);
        break;
      case XFRMA.POLICY:
        need(SIZE.userpolicyInfo, "XFRMA_POLICY xfrm_userpolicy_info");
        a.policy = readUserpolicyInfo(d, 0);
        break;
      default:
        (a.unknown ??= []).push({ type, data: Buffer.from(d) });
    }
    off += align4(len);
  }
  return a;
}

// ------------------------------------------------------------ message codec --

function fixedSize(body: XfrmBody): number {
  switch (body.kind) {
    case "sa":
      return SIZE.usersaInfo;
    case "saId":
      return SIZE.usersaId;
    case "allocSpi":
      return SIZE.userspiInfo;
    case "policy":
      return SIZE.userpolicyInfo;
    case "policyId":
      return SIZE.userpolicyId;
    case "bare":
      return 0;
    case "flushSa":
      return SIZE.usersaFlush;
    case "acquire":
      return SIZE.userAcquire;
    case "expire":
      return SIZE.userExpire;
    case "polexpire":
      return SIZE.userPolexpire;
    case "error":
      return SIZE.nlmsgerr;
    case "done":
      return 4;
    case "raw":
      return body.data.length;
  }
}

/** Encode one netlink message (header + fixed part + attributes). */
export function encodeMessage(m: XfrmMessage): Buffer {
  const body = m.body;
  const where = msgTypeName(m.type);
  const fixed = Buffer.alloc(align4(fixedSize(body)));
  let attrs: Buffer = Buffer.alloc(0);
  switch (body.kind) {
    case "sa":
      writeUsersaInfo(fixed, 0, body.info);
      attrs = encodeAttrs(body.attrs, where);
      break;
    case "saId":
      writeUsersaId(fixed, 0, body.id);
      attrs = encodeAttrs(body.attrs, where);
      break;
    case "allocSpi":
      writeUsersaInfo(fixed, 0, body.info);
      fixed.writeUInt32LE(body.min >>> 0, 224);
      fixed.writeUInt32LE(body.max >>> 0, 228);
      attrs = encodeAttrs(body.attrs, where);
      break;
    case "policy":
      writeUserpolicyInfo(fixed, 0, body.info);
      attrs = encodeAttrs(body.attrs, where);
      break;
    case "policyId":
      writeUserpolicyId(fixed, 0, body.id);
      attrs = encodeAttrs(body.attrs, where);
      break;
    case "bare":
      attrs = encodeAttrs(body.attrs, where);
      break;
    case "flushSa":
      fixed.writeUInt8(body.proto, 0);
      break;
    case "acquire":
      writeAcquire(fixed, 0, body.acquire);
      attrs = encodeAttrs(body.attrs, where);
      break;
    case "expire":
      writeUsersaInfo(fixed, 0, body.info);
      fixed.writeUInt8(body.hard ? 1 : 0, 224);
      attrs = encodeAttrs(body.attrs, where);
      break;
    case "polexpire":
      writeUserpolicyInfo(fixed, 0, body.info);
      fixed.writeUInt8(body.hard ? 1 : 0, 168);
      attrs = encodeAttrs(body.attrs, where);
      break;
    case "error":
      fixed.writeInt32LE(-body.errno, 0);
      writeHeader(fixed, 4, body.request);
      break;
    case "done":
      break;
    case "raw":
      body.data.copy(fixed);
      break;
  }
  // nlmsg_len counts the unpadded fixed part when there are no attributes (as the kernel
  // and iproute2 do for FLUSHSA's 1-octet struct).
  const bodyLen = attrs.length > 0 ? fixed.length + attrs.length : fixedSize(body);
  const len = SIZE.nlmsghdr + bodyLen;
  const out = Buffer.alloc(align4(len));
  writeHeader(out, 0, { len, type: m.type, flags: m.flags, seq: m.seq, pid: m.pid });
  fixed.copy(out, SIZE.nlmsghdr);
  attrs.copy(out, SIZE.nlmsghdr + fixed.length);
  return out.subarray(0, len);
}

function writeHeader(b: Buffer, o: number, h: NlHeader): void {
  b.writeUInt32LE(h.len >>> 0, o);
  b.writeUInt16LE(h.type, o + 4);
  b.writeUInt16LE(h.flags, o + 6);
  b.writeUInt32LE(h.seq >>> 0, o + 8);
  b.writeUInt32LE(h.pid >>> 0, o + 12);
}

function readHeader(b: Buffer, o: number): NlHeader {
  return { len: b.readUInt32LE(o), type: b.readUInt16LE(o + 4), flags: b.readUInt16LE(o + 6), seq: b.readUInt32LE(o + 8), pid: b.readUInt32LE(o + 12) };
}

/**
 * Split a datagram into netlink messages and decode each. Throws XfrmDecodeError on a
 * truncated header, a length that runs past the datagram, or a malformed body.
 */
export function decodeMessages(buf: Buffer): XfrmMessage[] {
  const out: XfrmMessage[] = [];
  let off = 0;
  while (off < buf.length) {
    if (buf.length - off < SIZE.nlmsghdr) throw new XfrmDecodeError(`truncated nlmsghdr: ${buf.length - off} octets, need 16`, `netlink message at offset ${off}`);
    const len = buf.readUInt32LE(off);
    if (len < SIZE.nlmsghdr) throw new XfrmDecodeError(`nlmsg_len ${len} < 16`, `netlink message at offset ${off}`);
    if (off + len > buf.length) throw new XfrmDecodeError(`nlmsg_len ${len} runs past the datagram (${buf.length - off} octets left)`, `netlink message at offset ${off}`);
    out.push(decodeMessage(buf.subarray(off, off + len)));
    off += align4(len);
  }
  return out;
}

/** Decode exactly one netlink message; leftover or missing octets are errors. */
export function decodeMessage(msg: Buffer): XfrmMessage {
  const r0 = new Reader(msg, "netlink message");
  r0.need(0, SIZE.nlmsghdr, "nlmsghdr");
  const h = readHeader(msg, 0);
  if (h.len !== msg.length) throw new XfrmDecodeError(`nlmsg_len ${h.len} but message is ${msg.length} octets`, msgTypeName(h.type));
  const where = `${msgTypeName(h.type)} seq ${h.seq}`;
  const p = msg.subarray(SIZE.nlmsghdr);
  const r = new Reader(p, where);
  const rest = (n: number): Buffer => p.subarray(Math.min(align4(n), p.length));
  const base = { type: h.type, flags: h.flags, seq: h.seq, pid: h.pid };
  const isDump = (h.flags & NLM_F.DUMP) === NLM_F.DUMP && (h.flags & NLM_F.REQUEST) !== 0;
  let body: XfrmBody;
  switch (h.type) {
    case NLMSG.ERROR: {
      r.need(0, 4, "nlmsgerr.error");
      const err = p.readInt32LE(0);
      r.need(4, SIZE.nlmsghdr, "nlmsgerr.msg (the request header)");
      body = { kind: "error", errno: -err, request: readHeader(p, 4) };
      break;
    }
    case NLMSG.DONE:
      body = { kind: "done" };
      break;
    case XFRM_MSG.NEWSA:
    case XFRM_MSG.UPDSA: {
      r.need(0, SIZE.usersaInfo, "xfrm_usersa_info");
      const info = readUsersaInfo(p, 0);
      body = { kind: "sa", info, attrs: decodeAttrs(rest(SIZE.usersaInfo), info.family, where) };
      break;
    }
    case XFRM_MSG.DELSA:
    case XFRM_MSG.GETSA: {
      if (h.type === XFRM_MSG.GETSA && isDump) {
        body = { kind: "bare", attrs: decodeAttrs(p, 0, where) };
        break;
      }
      r.need(0, SIZE.usersaId, "xfrm_usersa_id");
      const id = readUsersaId(p, 0);
      body = { kind: "saId", id, attrs: decodeAttrs(rest(SIZE.usersaId), id.family, where) };
      break;
    }
    case XFRM_MSG.ALLOCSPI: {
      r.need(0, SIZE.userspiInfo, "xfrm_userspi_info");
      const info = readUsersaInfo(p, 0);
      body = { kind: "allocSpi", info, min: p.readUInt32LE(224), max: p.readUInt32LE(228), attrs: decodeAttrs(rest(SIZE.userspiInfo), info.family, where) };
      break;
    }
    case XFRM_MSG.NEWPOLICY:
    case XFRM_MSG.UPDPOLICY: {
      r.need(0, SIZE.userpolicyInfo, "xfrm_userpolicy_info");
      const info = readUserpolicyInfo(p, 0);
      body = { kind: "policy", info, attrs: decodeAttrs(rest(SIZE.userpolicyInfo), info.sel.family, where) };
      break;
    }
    case XFRM_MSG.DELPOLICY:
    case XFRM_MSG.GETPOLICY: {
      if (h.type === XFRM_MSG.GETPOLICY && isDump) {
        body = { kind: "bare", attrs: decodeAttrs(p, 0, where) };
        break;
      }
      r.need(0, SIZE.userpolicyId, "xfrm_userpolicy_id");
      const id = readUserpolicyId(p, 0);
      body = { kind: "policyId", id, attrs: decodeAttrs(rest(SIZE.userpolicyId), id.sel.family, where) };
      break;
    }
    case XFRM_MSG.FLUSHSA:
      r.need(0, 1, "xfrm_usersa_flush");
      body = { kind: "flushSa", proto: p[0] };
      break;
    case XFRM_MSG.FLUSHPOLICY:
      body = { kind: "bare", attrs: decodeAttrs(p, 0, where) };
      break;
    case XFRM_MSG.ACQUIRE: {
      r.need(0, SIZE.userAcquire, "xfrm_user_acquire");
      // Addresses in xfrm_id/saddr have the template's family; find it first.
      const sel = readSelector(p, 40);
      const attrs = decodeAttrs(rest(SIZE.userAcquire), sel.family, where);
      const family = attrs.tmpl?.[0]?.family || sel.family;
      body = { kind: "acquire", acquire: readAcquire(p, 0, family), attrs };
      break;
    }
    case XFRM_MSG.EXPIRE: {
      r.need(0, SIZE.userExpire - 7, "xfrm_user_expire");
      const info = readUsersaInfo(p, 0);
      body = { kind: "expire", info, hard: p[224] !== 0, attrs: decodeAttrs(rest(SIZE.userExpire), info.family, where) };
      break;
    }
    case XFRM_MSG.POLEXPIRE: {
      r.need(0, SIZE.userPolexpire - 7, "xfrm_user_polexpire");
      const info = readUserpolicyInfo(p, 0);
      body = { kind: "polexpire", info, hard: p[168] !== 0, attrs: decodeAttrs(rest(SIZE.userPolexpire), info.sel.family, where) };
      break;
    }
    default:
      body = { kind: "raw", data: Buffer.from(p) };
  }
  return { ...base, body };
}
