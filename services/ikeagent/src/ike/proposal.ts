/**
 * Proposals: strongSwan-syntax strings ("aes256gcm16-prfsha384-curve25519") to SA
 * proposals and back, the crypto policy (nothing weaker than the list below is offered or
 * accepted), and responder proposal selection (RFC 7296 §2.7, §3.3.6) with a per-proposal
 * refusal report for the "no acceptable transform" log line.
 *
 * Allowed: ENCR_AES_GCM_16 (128/256), ENCR_CHACHA20_POLY1305, ENCR_AES_CBC (128/256);
 * AUTH_HMAC_SHA2_256_128 / 384_192 / 512_256; PRF_HMAC_SHA2_256/384/512;
 * DH 14, 15, 16, 19, 20, 21, 31; ESN / no ESN.
 */
import { FleetswanError, WeakCryptoError } from "@fleetswan/common";
import { DhId, EncrId, EsnId, IntegId, nameOf, PrfId, ProtocolId, TransformAttr, TransformType } from "./wire/constants.js";
import { keyLengthOf, type Proposal, type Transform } from "./wire/payloads.js";

/** A proposal string that does not parse (unknown token, missing or conflicting transforms). */
export class ProposalSyntaxError extends FleetswanError {
  constructor(message: string, readonly proposal: string, readonly token?: string) {
    super("PROPOSAL_INVALID", `proposal "${proposal}": ${message}`, { proposal, token });
  }
}

/** Which SA a proposal string is for. */
export type ProposalKind = "ike" | "esp";

interface TokenDef {
  type: number;
  id: number;
  keyLength?: number;
}

const t = (type: number, id: number, keyLength?: number): TokenDef => (keyLength === undefined ? { type, id } : { type, id, keyLength });
const E = TransformType.ENCR;
const I = TransformType.INTEG;
const P = TransformType.PRF;
const D = TransformType.DH;
const N = TransformType.ESN;

/** Allowed tokens (first one per transform is the canonical spelling used by formatProposal). */
const ALLOWED: ReadonlyArray<[string, TokenDef]> = [
  ["aes128gcm16", t(E, EncrId.AES_GCM_16, 128)],
  ["aes256gcm16", t(E, EncrId.AES_GCM_16, 256)],
  ["aes128gcm128", t(E, EncrId.AES_GCM_16, 128)],
  ["aes256gcm128", t(E, EncrId.AES_GCM_16, 256)],
  ["aes128gcm", t(E, EncrId.AES_GCM_16, 128)],
  ["aes256gcm", t(E, EncrId.AES_GCM_16, 256)],
  ["chacha20poly1305", t(E, EncrId.CHACHA20_POLY1305)],
  ["aes128", t(E, EncrId.AES_CBC, 128)],
  ["aes256", t(E, EncrId.AES_CBC, 256)],
  ["sha256", t(I, IntegId.HMAC_SHA2_256_128)],
  ["sha384", t(I, IntegId.HMAC_SHA2_384_192)],
  ["sha512", t(I, IntegId.HMAC_SHA2_512_256)],
  ["sha2_256", t(I, IntegId.HMAC_SHA2_256_128)],
  ["sha2_384", t(I, IntegId.HMAC_SHA2_384_192)],
  ["sha2_512", t(I, IntegId.HMAC_SHA2_512_256)],
  ["prfsha256", t(P, PrfId.HMAC_SHA2_256)],
  ["prfsha384", t(P, PrfId.HMAC_SHA2_384)],
  ["prfsha512", t(P, PrfId.HMAC_SHA2_512)],
  ["modp2048", t(D, DhId.MODP_2048)],
  ["modp3072", t(D, DhId.MODP_3072)],
  ["modp4096", t(D, DhId.MODP_4096)],
  ["ecp256", t(D, DhId.ECP_256)],
  ["ecp384", t(D, DhId.ECP_384)],
  ["ecp521", t(D, DhId.ECP_521)],
  ["curve25519", t(D, DhId.CURVE25519)],
  ["x25519", t(D, DhId.CURVE25519)],
  ["esn", t(N, EsnId.ESN)],
  ["noesn", t(N, EsnId.NO_ESN)],
];
const ALLOWED_MAP = new Map(ALLOWED);

/** Tokens strongSwan knows that our policy refuses as weak, with the reason. */
const WEAK: ReadonlyMap<string, string> = new Map([
  ["des", "DES (56-bit key)"],
  ["3des", "3DES (64-bit block, Sweet32)"],
  ["cast128", "CAST-128 (64-bit block)"],
  ["blowfish", "Blowfish (64-bit block)"],
  ["blowfish128", "Blowfish (64-bit block)"],
  ["blowfish192", "Blowfish (64-bit block)"],
  ["blowfish256", "Blowfish (64-bit block)"],
  ["null", "NULL encryption"],
  ["md5", "HMAC-MD5"],
  ["md5_128", "HMAC-MD5"],
  ["sha1", "HMAC-SHA1 integrity"],
  ["sha", "HMAC-SHA1 integrity"],
  ["sha1_160", "HMAC-SHA1 integrity"],
  ["sha256_96", "HMAC-SHA2-256 truncated to 96 bits (non-standard)"],
  ["aesxcbc", "AES-XCBC-96 integrity"],
  ["prfmd5", "PRF HMAC-MD5"],
  ["prfsha1", "PRF HMAC-SHA1"],
  ["prfaesxcbc", "PRF AES-XCBC"],
  ["modp768", "MODP group 1 (768 bits)"],
  ["modp1024", "MODP group 2 (1024 bits)"],
  ["modp1536", "MODP group 5 (1536 bits)"],
  ["modp1024s160", "MODP group 22 (RFC 5114, 1024 bits)"],
  ["modp2048s224", "MODP group 23 (RFC 5114, 224-bit subgroup)"],
  ["modp2048s256", "MODP group 24 (RFC 5114)"],
  ["ecp192", "ECP group 25 (192 bits)"],
  ["ecp224", "ECP group 26 (224 bits)"],
  ["aes128gcm8", "AES-GCM with 8-octet ICV"],
  ["aes256gcm8", "AES-GCM with 8-octet ICV"],
  ["aes128gcm64", "AES-GCM with 8-octet ICV"],
  ["aes256gcm64", "AES-GCM with 8-octet ICV"],
]);

function isAead(encrId: number): boolean {
  return encrId === EncrId.AES_GCM_16 || encrId === EncrId.CHACHA20_POLY1305 || encrId === EncrId.AES_GCM_8 || encrId === EncrId.AES_GCM_12 ||
    encrId === EncrId.AES_CCM_8 || encrId === EncrId.AES_CCM_12 || encrId === EncrId.AES_CCM_16;
}

function toTransform(d: TokenDef): Transform {
  return { type: d.type, id: d.id, attributes: d.keyLength === undefined ? [] : [{ type: TransformAttr.KEY_LENGTH, value: d.keyLength }] };
}

function sameTransform(a: Transform, b: Transform): boolean {
  return a.type === b.type && a.id === b.id && keyLengthOf(a) === keyLengthOf(b);
}

/**
 * Parse one strongSwan-syntax proposal ("aes256gcm16-prfsha384-curve25519"). Several
 * algorithms of one type may be listed (in preference order). For ESP, a DH group means
 * PFS, and "noesn" is added when neither esn nor noesn is given (RFC 7296 §3.3.3: ESP
 * proposals carry an ESN transform).
 * @throws WeakCryptoError naming a token our policy refuses; ProposalSyntaxError otherwise.
 */
export function parseProposal(text: string, kind: ProposalKind, num = 1): Proposal {
  const src = text.trim().toLowerCase();
  if (!src) throw new ProposalSyntaxError("empty proposal", text);
  const transforms: Transform[] = [];
  for (const token of src.split("-")) {
    const weak = WEAK.get(token);
    if (weak) throw new WeakCryptoError(`proposal "${text}": "${token}" is refused by policy: ${weak}`, { proposal: text, token });
    const def = ALLOWED_MAP.get(token);
    if (!def) throw new ProposalSyntaxError(`unknown or unsupported algorithm "${token}"`, text, token);
    const tr = toTransform(def);
    if (!transforms.some((x) => sameTransform(x, tr))) transforms.push(tr);
  }
  const of = (type: number) => transforms.filter((x) => x.type === type);
  const encr = of(E);
  if (encr.length === 0) throw new ProposalSyntaxError("no encryption algorithm", text);
  const aead = encr.filter((x) => isAead(x.id)).length;
  if (aead !== 0 && aead !== encr.length) {
    throw new ProposalSyntaxError("AEAD and non-AEAD ciphers in one proposal (write two proposals separated by a comma)", text);
  }
  if (aead && of(I).length) throw new ProposalSyntaxError("integrity algorithm with an AEAD cipher", text);
  if (!aead && of(I).length === 0) throw new ProposalSyntaxError("no integrity algorithm for a non-AEAD cipher", text);
  if (kind === "ike") {
    if (of(N).length) throw new ProposalSyntaxError("esn/noesn is for ESP proposals", text);
    if (of(P).length === 0) {
      // strongSwan derives the PRF from the integrity algorithm when none is given
      if (aead) throw new ProposalSyntaxError("AEAD IKE proposal needs a PRF (e.g. prfsha256)", text);
      for (const i of of(I)) {
        const prf = i.id === IntegId.HMAC_SHA2_256_128 ? PrfId.HMAC_SHA2_256 : i.id === IntegId.HMAC_SHA2_384_192 ? PrfId.HMAC_SHA2_384 : PrfId.HMAC_SHA2_512;
        const tr = toTransform(t(P, prf));
        if (!transforms.some((x) => sameTransform(x, tr))) transforms.push(tr);
      }
    }
    if (of(D).length === 0) throw new ProposalSyntaxError("no key exchange (DH) group", text);
  } else {
    if (of(P).length) throw new ProposalSyntaxError("PRF in an ESP proposal", text);
    if (of(N).length === 0) transforms.push(toTransform(t(N, EsnId.NO_ESN)));
  }
  // RFC 7296 §3.3.2 lists transforms by type; order within a type is preference order
  const order: number[] = [E, P, I, D, N];
  transforms.sort((a, b) => order.indexOf(a.type) - order.indexOf(b.type));
  return { num, protocol: kind === "ike" ? ProtocolId.IKE : ProtocolId.ESP, spi: Buffer.alloc(0), transforms };
}

/** Parse a comma-separated list of proposals, numbered from 1 (RFC 7296 §3.3.1). */
export function parseProposals(text: string, kind: ProposalKind): Proposal[] {
  const parts = text.split(",").map((s) => s.trim()).filter((s) => s.length);
  if (!parts.length) throw new ProposalSyntaxError("empty proposal list", text);
  return parts.map((p, i) => parseProposal(p, kind, i + 1));
}

/** strongSwan token for a transform, or "TYPE_NAME(id)" for one outside our policy. */
function tokenOf(tr: Transform): string {
  for (const [tok, d] of ALLOWED) if (sameTransform(tr, toTransform(d))) return tok;
  return transformName(tr);
}

/** A proposal back in strongSwan syntax ("aes256gcm16-prfsha384-curve25519"). */
export function formatProposal(p: Proposal): string {
  return p.transforms.map(tokenOf).join("-");
}

/** Several proposals, comma-separated. */
export function formatProposals(ps: readonly Proposal[]): string {
  return ps.map(formatProposal).join(",");
}

/** IANA-style name of a transform for logs: "ENCR_AES_CBC-128", "PRF_HMAC_SHA2_256", "DH_CURVE25519". */
export function transformName(tr: Transform): string {
  const kl = keyLengthOf(tr);
  const suffix = kl === undefined ? "" : `-${kl}`;
  switch (tr.type) {
    case E: return `ENCR_${nameOf(EncrId, tr.id)}${suffix}`;
    case P: return `PRF_${nameOf(PrfId, tr.id)}${suffix}`;
    case I: return `AUTH_${nameOf(IntegId, tr.id)}${suffix}`;
    case D: return `DH_${nameOf(DhId, tr.id)}`;
    case N: return nameOf(EsnId, tr.id);
    default: return `TRANSFORM_${tr.type}(${tr.id})${suffix}`;
  }
}

/** Why one offered proposal was refused (or that it was chosen). */
export interface ProposalVerdict {
  /** Proposal Num as offered. */
  num: number;
  accepted: boolean;
  /** For refusals: which transforms did not match, e.g. "ENCR_AES_CBC-128 not in local proposals aes256gcm16-prfsha384-curve25519". */
  reason: string;
}

/** Result of selectProposal(). */
export interface SelectionResult {
  /**
   * The chosen proposal: the offered proposal's number, protocol and SPI, with one
   * transform per type (RFC 7296 §2.7, §3.3.6). Undefined when nothing matched
   * (answer NO_PROPOSAL_CHOSEN).
   */
  chosen?: Proposal;
  /** Index into `local` of the proposal that matched. */
  localIndex?: number;
  /** One verdict per offered proposal, in offer order (stops after the accepted one). */
  report: ProposalVerdict[];
}

const TYPE_LABEL: Record<number, string> = { [E]: "ENCR", [P]: "PRF", [I]: "INTEG", [D]: "DH", [N]: "ESN" };

/** Transforms of `type` in p; a missing INTEG or DH counts as NONE (id 0), §3.3.3. */
function choicesOf(p: Proposal, type: number): Transform[] {
  const xs = p.transforms.filter((x) => x.type === type);
  if (xs.length === 0 && (type === I || type === D)) return [{ type, id: 0, attributes: [] }];
  return xs;
}

/** Match one offered proposal against one local: the chosen transforms, or the failing type. */
function matchOne(offered: Proposal, local: Proposal): { chosen: Transform[] } | { failType: number; offeredOfType: Transform[] } {
  const types = new Set<number>([...offered.transforms.map((x) => x.type), ...local.transforms.map((x) => x.type)]);
  const chosen: Transform[] = [];
  const known: number[] = [E, P, I, D, N];
  for (const type of [...known, ...[...types].filter((x) => !known.includes(x))]) {
    if (!types.has(type)) continue;
    const off = choicesOf(offered, type);
    const loc = choicesOf(local, type);
    // §2.7: the responder picks one of the transforms the initiator offered (its order first)
    const pick = off.find((o) => loc.some((l) => sameTransform(o, l)));
    if (!pick) return { failType: type, offeredOfType: off };
    if (offered.transforms.some((x) => x.type === type)) chosen.push({ type: pick.type, id: pick.id, attributes: pick.attributes.map((a) => ({ ...a })) });
  }
  return { chosen };
}

function describe(ts: Transform[], type: number): string {
  if (ts.length === 0) return `no ${TYPE_LABEL[type] ?? `transform type ${type}`}`;
  return ts.map((x) => (x.id === 0 && (type === I || type === D) ? `${TYPE_LABEL[type]}_NONE` : transformName(x))).join("/");
}

/**
 * Responder proposal selection (RFC 7296 §2.7): the first offered proposal (peer's
 * order) that matches one of `local`, with one transform of each type, preferring the
 * peer's order of transforms. Proposals for another protocol are refused.
 */
export function selectProposal(offered: readonly Proposal[], local: readonly Proposal[]): SelectionResult {
  const report: ProposalVerdict[] = [];
  const localText = formatProposals(local);
  for (const off of offered) {
    const reasons: { type: number; text: string; local: string }[] = [];
    let protoMismatch = true;
    for (let li = 0; li < local.length; li++) {
      const loc = local[li]!;
      if (loc.protocol !== off.protocol) continue;
      protoMismatch = false;
      const m = matchOne(off, loc);
      if ("chosen" in m) {
        report.push({ num: off.num, accepted: true, reason: `matches local proposal ${formatProposal(loc)}` });
        return { chosen: { num: off.num, protocol: off.protocol, spi: Buffer.from(off.spi), transforms: m.chosen }, localIndex: li, report };
      }
      reasons.push({ type: m.failType, text: describe(m.offeredOfType, m.failType), local: formatProposal(loc) });
    }
    let reason: string;
    if (protoMismatch) {
      reason = `protocol ${nameOf(ProtocolId, off.protocol)} not in local proposals ${localText}`;
    } else if (reasons.every((r) => r.type === reasons[0]!.type && r.text === reasons[0]!.text)) {
      reason = `${reasons[0]!.text} not in local proposals ${localText}`;
    } else {
      reason = reasons.map((r) => `${r.text} not in local proposal ${r.local}`).join("; ");
    }
    report.push({ num: off.num, accepted: false, reason });
  }
  return { report };
}

/** One line for the log: "proposal 1 (aes128-sha256-modp2048): ENCR_AES_CBC-128 not in ...; proposal 2 ...". */
export function formatSelectionReport(offered: readonly Proposal[], result: SelectionResult): string {
  return result.report
    .map((v) => {
      const p = offered.find((x) => x.num === v.num);
      return `proposal ${v.num}${p ? ` (${formatProposal(p)})` : ""}: ${v.accepted ? "accepted, " : ""}${v.reason}`;
    })
    .join("; ");
}

/** The algorithms of a chosen proposal (one per type), for key derivation. */
export interface NegotiatedAlgorithms {
  protocol: number;
  encr: number;
  /** Key length in bits (from KEY_LENGTH; 256 for ChaCha20-Poly1305). */
  encrKeyBits: number;
  /** INTEG id, or 0 (NONE) for AEAD. */
  integ: number;
  /** PRF id (IKE only; 0 for ESP). */
  prf: number;
  /** DH group, or 0 (none / no PFS). */
  dh: number;
  /** ESP only. */
  esn: boolean;
}

/** Read the single transform of each type out of a chosen proposal. */
export function algorithmsOf(p: Proposal): NegotiatedAlgorithms {
  const one = (type: number) => {
    const xs = p.transforms.filter((x) => x.type === type);
    if (xs.length > 1) throw new ProposalSyntaxError(`more than one ${TYPE_LABEL[type]} transform in a chosen proposal`, formatProposal(p));
    return xs[0];
  };
  const encr = one(E);
  if (!encr) throw new ProposalSyntaxError("chosen proposal has no encryption algorithm", formatProposal(p));
  const kl = keyLengthOf(encr) ?? (encr.id === EncrId.CHACHA20_POLY1305 ? 256 : 0);
  return {
    protocol: p.protocol,
    encr: encr.id,
    encrKeyBits: kl,
    integ: one(I)?.id ?? 0,
    prf: one(P)?.id ?? 0,
    dh: one(D)?.id ?? 0,
    esn: (one(N)?.id ?? 0) === EsnId.ESN,
  };
}

/** True if `p` lists only algorithms our policy allows (for checking what a peer chose). */
export function isAllowedProposal(p: Proposal): boolean {
  return p.transforms.every((tr) => ALLOWED.some(([, d]) => sameTransform(tr, toTransform(d))) || ((tr.type === I || tr.type === D) && tr.id === 0));
}
