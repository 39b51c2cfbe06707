/**
 * Between the dataplane API types (proto) and XFRM structs. Pure code.
 *
 * Algorithm names are the kernel crypto API's, as strongSwan's kernel-netlink uses them:
 *   AES-GCM-16 (RFC 4106)          -> XFRMA_ALG_AEAD "rfc4106(gcm(aes))", ICV 128 bits
 *   ChaCha20-Poly1305 (RFC 7634)   -> XFRMA_ALG_AEAD "rfc7539esp(chacha20,poly1305)", ICV 128
 *   AES-CBC (RFC 3602)             -> XFRMA_ALG_CRYPT "cbc(aes)"
 *   HMAC-SHA2-256/384/512 (RFC 4868) -> XFRMA_ALG_AUTH_TRUNC "hmac(sha256|384|512)", 128/192/256
 */
import { dataplane } from "@fleetswan/proto";
import { ConfigError } from "@fleetswan/common";
import { canonicalAddress, familyOf, isNetworkAddress } from "./addr.js";
import {
  AF_INET,
  IPPROTO_ESP,
  UDP_ENCAP,
  XFRM_INF,
  XFRM_MODE,
  XFRM_POLICY_ACTION,
  XFRM_POLICY_DIR,
  XFRM_STATE,
} from "./constants.js";
import {
  type XfrmAttrs,
  type XfrmSelector,
  type XfrmUserAcquire,
  type XfrmUserTmpl,
  type XfrmUserpolicyInfo,
  type XfrmUsersaInfo,
  emptySelector,
  infiniteLifetime,
  zeroLifetimeCur,
} from "./codec.js";

const E = dataplane.Encryption;
const I = dataplane.Integrity;

export const AEAD_NAMES: Partial<Record<dataplane.Encryption, string>> = {
  [E.ENCRYPTION_AES_GCM_16]: "rfc4106(gcm(aes))",
  [E.ENCRYPTION_CHACHA20_POLY1305]: "rfc7539esp(chacha20,poly1305)",
};
export const CRYPT_NAMES: Partial<Record<dataplane.Encryption, string>> = { [E.ENCRYPTION_AES_CBC]: "cbc(aes)" };
export const AUTH_NAMES: Partial<Record<dataplane.Integrity, { name: string; truncBits: number }>> = {
  [I.INTEGRITY_HMAC_SHA2_256_128]: { name: "hmac(sha256)", truncBits: 128 },
  [I.INTEGRITY_HMAC_SHA2_384_192]: { name: "hmac(sha384)", truncBits: 192 },
  [I.INTEGRITY_HMAC_SHA2_512_256]: { name: "hmac(sha512)", truncBits: 256 },
};

/** Replay windows up to this size fit xfrm_usersa_info.replay_window without ESN state. */
const LEGACY_REPLAY_MAX = 32;

function modeToXfrm(m: dataplane.Mode): number {
  return m === dataplane.Mode.MODE_TRANSPORT ? XFRM_MODE.TRANSPORT : XFRM_MODE.TUNNEL;
}

export function dirToXfrm(d: dataplane.Direction, where: string): number {
  switch (d) {
    case dataplane.Direction.DIRECTION_OUT:
      return XFRM_POLICY_DIR.OUT;
    case dataplane.Direction.DIRECTION_IN:
      return XFRM_POLICY_DIR.IN;
    case dataplane.Direction.DIRECTION_FWD:
      return XFRM_POLICY_DIR.FWD;
    default:
      throw new ConfigError(`direction must be OUT, IN or FWD (got ${d})`, where);
  }
}

export function dirFromXfrm(d: number): dataplane.Direction {
  return d === XFRM_POLICY_DIR.OUT ? dataplane.Direction.DIRECTION_OUT : d === XFRM_POLICY_DIR.IN ? dataplane.Direction.DIRECTION_IN : dataplane.Direction.DIRECTION_FWD;
}

/** struct xfrm_selector from an API selector (ports get mask 0xffff when set). */
export function selectorToXfrm(s: dataplane.Selector | undefined, where: string): XfrmSelector {
  if (!s?.src || !s.dst) throw new ConfigError("selector needs src and dst prefixes", where);
  const fam = familyOf(s.src.address);
  if (familyOf(s.dst.address) !== fam) throw new ConfigError(`selector mixes address families (${s.src.address}, ${s.dst.address})`, where);
  const max = fam === AF_INET ? 32 : 128;
  for (const [n, p] of [["src", s.src], ["dst", s.dst]] as const) {
    if (p.length > max) throw new ConfigError(`${n} prefix length ${p.length} > ${max}`, where);
    if (!isNetworkAddress(p.address, p.length)) throw new ConfigError(`${n} ${p.address}/${p.length} has host bits set`, where);
  }
  const sel = emptySelector(fam);
  sel.saddr = canonicalAddress(s.src.address);
  sel.daddr = canonicalAddress(s.dst.address);
  sel.prefixlenS = s.src.length;
  sel.prefixlenD = s.dst.length;
  sel.proto = s.protocol;
  sel.sport = s.srcPort;
  sel.sportMask = s.srcPort ? 0xffff : 0;
  sel.dport = s.dstPort;
  sel.dportMask = s.dstPort ? 0xffff : 0;
  return sel;
}

export function selectorFromXfrm(s: XfrmSelector): dataplane.Selector {
  return {
    src: { address: s.saddr, length: s.prefixlenS },
    dst: { address: s.daddr, length: s.prefixlenD },
    protocol: s.proto,
    srcPort: s.sportMask ? s.sport : 0,
    dstPort: s.dportMask ? s.dport : 0,
  };
}

const limit = (v: bigint): bigint => (v === 0n ? XFRM_INF : v);

/** NEWSA/UPDSA body for an API SA. Throws ConfigError (never with key bytes) when invalid. */
export function saToXfrm(sa: dataplane.SecurityAssociation): { info: XfrmUsersaInfo; attrs: XfrmAttrs } {
  const id = sa.id;
  const where = `sa ${id?.dst ?? "?"}/0x${(id?.spi ?? 0).toString(16)}`;
  if (!id || !id.dst) throw new ConfigError("SA needs id.dst", where);
  if ((id.protocol || IPPROTO_ESP) !== IPPROTO_ESP) throw new ConfigError(`only ESP (50) is supported, got protocol ${id.protocol}`, where);
  if (id.spi >>> 0 < 256) throw new ConfigError(`SPI ${id.spi} is reserved (< 256)`, where);
  const family = familyOf(id.dst);
  if (!sa.src || familyOf(sa.src) !== family) throw new ConfigError(`src "${sa.src}" must be an address of the same family as dst`, where);
  const lt = sa.lifetime;
  const info: XfrmUsersaInfo = {
    sel: sa.selector?.src ? selectorToXfrm(sa.selector, where) : emptySelector(0),
    id: { daddr: canonicalAddress(id.dst), spi: id.spi >>> 0, proto: IPPROTO_ESP },
    saddr: canonicalAddress(sa.src),
    lft: {
      ...infiniteLifetime(),
      softByteLimit: limit(lt?.softBytes ?? 0n),
      hardByteLimit: limit(lt?.hardBytes ?? 0n),
      softPacketLimit: limit(lt?.softPackets ?? 0n),
      hardPacketLimit: limit(lt?.hardPackets ?? 0n),
      softAddExpiresSeconds: lt?.softAddSeconds ?? 0n,
      hardAddExpiresSeconds: lt?.hardAddSeconds ?? 0n,
    },
    curlft: zeroLifetimeCur(),
    stats: { replayWindow: 0, replay: 0, integrityFailed: 0 },
    seq: 0,
    reqid: sa.reqid >>> 0,
    family,
    mode: modeToXfrm(sa.mode),
    replayWindow: 0,
    flags: 0,
  };
  const attrs: XfrmAttrs = {};
  const aead = AEAD_NAMES[sa.encryption];
  const crypt = CRYPT_NAMES[sa.encryption];
  if (aead) {
    if (sa.integrity !== I.INTEGRITY_NONE) throw new ConfigError("AEAD encryption takes no integrity algorithm", where);
    const ok = sa.encryption === E.ENCRYPTION_AES_GCM_16 ? [20, 28, 36] : [36];
    if (!ok.includes(sa.encryptionKey.length)) throw new ConfigError(`encryption key is ${sa.encryptionKey.length} octets, expected ${ok.join(" or ")} (key + 4-octet salt)`, where);
    attrs.algAead = { name: aead, key: Buffer.from(sa.encryptionKey), icvLen: 128 };
  } else if (crypt) {
    const auth = AUTH_NAMES[sa.integrity];
    if (!auth) throw new ConfigError("AES-CBC needs an integrity algorithm", where);
    if (![16, 24, 32].includes(sa.encryptionKey.length)) throw new ConfigError(`AES-CBC key is ${sa.encryptionKey.length} octets, expected 16, 24 or 32`, where);
    if (sa.integrityKey.length !== (auth.truncBits / 8) * 2) throw new ConfigError(`integrity key is ${sa.integrityKey.length} octets, expected ${(auth.truncBits / 8) * 2}`, where);
    attrs.algCrypt = { name: crypt, key: Buffer.from(sa.encryptionKey) };
    attrs.algAuthTrunc = { name: auth.name, key: Buffer.from(sa.integrityKey), truncLen: auth.truncBits };
  } else {
    throw new ConfigError(`unsupported encryption ${sa.encryption}`, where);
  }
  if (sa.encap && (sa.encap.srcPort || sa.encap.dstPort)) {
    attrs.encap = { type: UDP_ENCAP.ESPINUDP, sport: sa.encap.srcPort, dport: sa.encap.dstPort, oa: "" };
  }
  // Replay state (RFC 4303 §3.4.3): windows > 32 or ESN need struct xfrm_replay_state_esn,
  // as strongSwan and iproute2 do; replay_window in usersa_info is then 0.
  const win = sa.replayWindow;
  if (sa.esn || win > LEGACY_REPLAY_MAX) {
    if (win > 4096) throw new ConfigError(`replay window ${win} > 4096 (XFRMA_REPLAY_ESN_MAX)`, where);
    attrs.replayEsn = { bmpLen: Math.ceil(win / 32), oseq: 0, seq: 0, oseqHi: 0, seqHi: 0, replayWindow: win, bmp: [] };
    if (sa.esn) info.flags |= XFRM_STATE.ESN;
  } else {
    info.replayWindow = win;
  }
  if (sa.mark) attrs.mark = { value: sa.mark, mask: 0xffffffff };
  if (sa.ifId) attrs.ifId = sa.ifId;
  return { info, attrs };
}

/** An API SA (keys empty) and counters from a dumped SA. */
export function saFromXfrm(info: XfrmUsersaInfo, attrs: XfrmAttrs): dataplane.SaState {
  let encryption = E.ENCRYPTION_UNSPECIFIED;
  let integrity = I.INTEGRITY_NONE;
  for (const [k, v] of Object.entries(AEAD_NAMES)) if (attrs.algAead?.name === v) encryption = Number(k);
  for (const [k, v] of Object.entries(CRYPT_NAMES)) if (attrs.algCrypt?.name === v) encryption = Number(k);
  for (const [k, v] of Object.entries(AUTH_NAMES)) if (attrs.algAuthTrunc?.name === v?.name) integrity = Number(k);
  const inf = (v: bigint) => (v === XFRM_INF ? 0n : v);
  const sa: dataplane.SecurityAssociation = {
    id: { dst: info.id.daddr, spi: info.id.spi, protocol: info.id.proto },
    src: info.saddr,
    mode: info.mode === XFRM_MODE.TRANSPORT ? dataplane.Mode.MODE_TRANSPORT : dataplane.Mode.MODE_TUNNEL,
    reqid: info.reqid,
    encryption,
    encryptionKey: Buffer.alloc(0),
    integrity,
    integrityKey: Buffer.alloc(0),
    encap: attrs.encap ? { srcPort: attrs.encap.sport, dstPort: attrs.encap.dport } : undefined,
    replayWindow: attrs.replayEsn ? attrs.replayEsn.replayWindow : info.replayWindow,
    esn: (info.flags & XFRM_STATE.ESN) !== 0,
    lifetime: {
      softBytes: inf(info.lft.softByteLimit),
      hardBytes: inf(info.lft.hardByteLimit),
      softPackets: inf(info.lft.softPacketLimit),
      hardPackets: inf(info.lft.hardPacketLimit),
      softAddSeconds: info.lft.softAddExpiresSeconds,
      hardAddSeconds: info.lft.hardAddExpiresSeconds,
    },
    direction: dataplane.Direction.DIRECTION_UNSPECIFIED,
    selector: info.sel.family ? selectorFromXfrm(info.sel) : undefined,
    mark: attrs.mark?.value ?? 0,
    ifId: attrs.ifId ?? 0,
    connection: "",
    childId: 0n,
  };
  const cur = attrs.lifetimeCur ?? info.curlft;
  return {
    sa,
    counters: {
      bytes: cur.bytes,
      packets: cur.packets,
      replayErrors: BigInt(info.stats.replay),
      integrityErrors: BigInt(info.stats.integrityFailed),
      addedAt: cur.addTime ? new Date(Number(cur.addTime) * 1000) : undefined,
      usedAt: cur.useTime ? new Date(Number(cur.useTime) * 1000) : undefined,
    },
  };
}

/** NEWPOLICY/UPDPOLICY body for an API policy (priority already effective). */
export function policyToXfrm(p: dataplane.Policy): { info: XfrmUserpolicyInfo; attrs: XfrmAttrs } {
  const where = `policy ${p.connection || "?"}`;
  const sel = selectorToXfrm(p.selector, where);
  const info: XfrmUserpolicyInfo = {
    sel,
    lft: infiniteLifetime(),
    curlft: zeroLifetimeCur(),
    priority: p.priority >>> 0,
    index: 0,
    dir: dirToXfrm(p.direction, where),
    action: XFRM_POLICY_ACTION.ALLOW,
    flags: 0,
    share: 0,
  };
  const attrs: XfrmAttrs = {};
  switch (p.action) {
    case dataplane.PolicyAction.POLICY_ACTION_PROTECT:
    case dataplane.PolicyAction.POLICY_ACTION_TRAP: {
      const t = p.template;
      if (!t) throw new ConfigError("PROTECT and TRAP policies need a template", where);
      const tunnel = t.mode !== dataplane.Mode.MODE_TRANSPORT;
      if (tunnel && (!t.src || !t.dst)) throw new ConfigError("tunnel-mode template needs src and dst", where);
      const fam = tunnel ? familyOf(t.dst) : sel.family;
      const tmpl: XfrmUserTmpl = {
        id: { daddr: tunnel ? canonicalAddress(t.dst) : "", spi: 0, proto: IPPROTO_ESP },
        family: fam,
        saddr: tunnel ? canonicalAddress(t.src) : "",
        reqid: t.reqid >>> 0,
        mode: modeToXfrm(t.mode),
        share: 0,
        optional: 0,
        aalgos: 0xffffffff,
        ealgos: 0xffffffff,
        calgos: 0xffffffff,
      };
      attrs.tmpl = [tmpl];
      break;
    }
    case dataplane.PolicyAction.POLICY_ACTION_BYPASS:
      break;
    case dataplane.PolicyAction.POLICY_ACTION_DROP:
      info.action = XFRM_POLICY_ACTION.BLOCK;
      break;
    default:
      throw new ConfigError(`policy action must be PROTECT, BYPASS, DROP or TRAP (got ${p.action})`, where);
  }
  if (p.mark) attrs.mark = { value: p.mark, mask: 0xffffffff };
  if (p.ifId) attrs.ifId = p.ifId;
  return { info, attrs };
}

/** An API policy from a dumped one. PROTECT and TRAP look the same in the kernel: PROTECT is reported. */
export function policyFromXfrm(info: XfrmUserpolicyInfo, attrs: XfrmAttrs): dataplane.PolicyState {
  const t = attrs.tmpl?.[0];
  const action =
    info.action === XFRM_POLICY_ACTION.BLOCK
      ? dataplane.PolicyAction.POLICY_ACTION_DROP
      : t
        ? dataplane.PolicyAction.POLICY_ACTION_PROTECT
        : dataplane.PolicyAction.POLICY_ACTION_BYPASS;
  const policy: dataplane.Policy = {
    selector: selectorFromXfrm(info.sel),
    direction: dirFromXfrm(info.dir),
    action,
    priority: info.priority,
    template: t
      ? {
          src: t.mode === XFRM_MODE.TRANSPORT ? "" : t.saddr,
          dst: t.mode === XFRM_MODE.TRANSPORT ? "" : t.id.daddr,
          mode: t.mode === XFRM_MODE.TRANSPORT ? dataplane.Mode.MODE_TRANSPORT : dataplane.Mode.MODE_TUNNEL,
          reqid: t.reqid,
          protocol: t.id.proto,
        }
      : undefined,
    mark: attrs.mark?.value ?? 0,
    ifId: attrs.ifId ?? 0,
    connection: "",
  };
  return {
    policy,
    counters: {
      addedAt: info.curlft.addTime ? new Date(Number(info.curlft.addTime) * 1000) : undefined,
      usedAt: info.curlft.useTime ? new Date(Number(info.curlft.useTime) * 1000) : undefined,
    },
    effectivePriority: info.priority,
  };
}

/** The Acquire event for an XFRM_MSG_ACQUIRE. */
export function acquireFromXfrm(a: XfrmUserAcquire, attrs: XfrmAttrs): dataplane.Acquire {
  const t = attrs.tmpl?.[0];
  return {
    policySelector: selectorFromXfrm(a.policy.sel),
    reqid: t?.reqid ?? 0,
    packet: selectorFromXfrm(a.sel),
    src: a.saddr,
    dst: a.id.daddr,
  };
}
