/**
 * A connection as the engine runs it: a fleet.v1.ConnectionDef with its proposals parsed,
 * traffic selectors compiled, identities encoded and defaults applied. Compiled once per
 * apply(); the definition's JSON is kept to detect changes (apply touches only those).
 */
import { isIP } from "node:net";
import { X509Certificate } from "node:crypto";
import { ConfigError } from "@fleetswan/common";
import { fleet } from "@fleetswan/proto";
import { parseProposal } from "../proposal.js";
import { IdType, type Proposal } from "../wire/index.js";
import { parseTs, type Ts } from "./ts.js";
import type { EngineSecret, SecretLookup } from "../../engine-api.js";

/** An IKE identity (RFC 7296 §3.5) in wire form plus its text. */
export interface Identity {
  type: number;
  data: Buffer;
  text: string;
}

export interface ConnRuntime {
  name: string;
  def: fleet.ConnectionDef;
  /** JSON of def (without revision): equal JSON = unchanged. */
  fingerprint: string;
  localAddrs: string[];
  /** "%any" allowed. */
  remoteAddrs: string[];
  remotePort: number;
  /** Our ID; undefined = our address (set when an address is known). */
  localId?: Identity;
  /** Expected peer ID; undefined = the peer's address. "%any" = any. */
  remoteId?: Identity | "%any";
  localAuth: fleet.AuthMethod;
  remoteAuth: fleet.AuthMethod;
  ikeProposals: Proposal[];
  espProposals: Proposal[];
  /** Subnets; empty = the endpoint's own address ("host-to-host", FreeS/WAN). */
  localTs: Ts[];
  remoteTs: Ts[];
  transport: boolean;
  secret?: EngineSecret;
  /** Certificate chain (DER, leaf first) for PUBKEY. */
  certChain: Buffer[];
  /** Trusted CAs for the remote end (PEM). */
  remoteCas: X509Certificate[];
  /** Stable request id for this connection's policies and SAs. */
  reqid: number;
  ikeLifetime: number;
  childLifetime: number;
  rekeyMargin: number;
  rekeyFuzz: number;
  dpdDelay: number;
  dpdTimeout: number;
  keyingTries: number;
  uniqueIds: boolean;
  replayWindow: number;
}

/** Default proposals (strong, what strongSwan 5.9 proposes first, plus GCM). */
export const DEFAULT_IKE = ["aes256gcm16-prfsha384-curve25519", "aes128gcm16-prfsha256-ecp256", "aes256-sha256-modp3072", "chacha20poly1305-prfsha256-curve25519"];
export const DEFAULT_ESP = ["aes256gcm16", "aes128gcm16", "chacha20poly1305", "aes256-sha256"];

/** Parses an identity as strongSwan does: IP address, "@fqdn", "user@host", DN ("CN=...,O=..."), else FQDN. */
export function parseIdentity(text: string): Identity {
  const s = text.trim();
  if (isIP(s) === 4) return { type: IdType.IPV4_ADDR, data: Buffer.from(s.split(".").map(Number)), text: s };
  if (isIP(s) === 6) {
    const b = Buffer.alloc(16);
    let v = addrBig(s);
    for (let i = 15; i >= 0; i--) (b[i] = Number(v & 0xffn)), (v >>= 8n);
    return { type: IdType.IPV6_ADDR, data: b, text: s };
  }
  if (s.startsWith("@")) return { type: IdType.FQDN, data: Buffer.from(s.slice(1)), text: s.slice(1) };
  if (/^[^@\s]+@[^@\s]+$/.test(s)) return { type: IdType.RFC822_ADDR, data: Buffer.from(s), text: s };
  if (/^[A-Za-z][A-Za-z0-9.]*=/.test(s) && s.includes("=")) return { type: IdType.DER_ASN1_DN, data: encodeDn(s), text: s };
  return { type: IdType.FQDN, data: Buffer.from(s), text: s };
}

function addrBig(a: string): bigint {
  // Small local copy to avoid a cycle with ts.ts in type-only contexts.
  const [head, tail] = a.split("::");
  const h = head ? head.split(":") : [];
  const t = tail !== undefined ? (tail ? tail.split(":") : []) : [];
  const groups = tail !== undefined ? [...h, ...Array<string>(8 - h.length - t.length).fill("0"), ...t] : h;
  return groups.reduce((acc, g) => (acc << 16n) | BigInt(parseInt(g || "0", 16)), 0n);
}

/** Text of a received ID payload for logs and matching. */
export function identityText(type: number, data: Buffer): string {
  switch (type) {
    case IdType.IPV4_ADDR:
      return [...data].join(".");
    case IdType.IPV6_ADDR: {
      const g: string[] = [];
      for (let i = 0; i < 16; i += 2) g.push(data.readUInt16BE(i).toString(16));
      return g.join(":").replace(/(^|:)0(:0)+(:|$)/, "::");
    }
    case IdType.FQDN:
    case IdType.RFC822_ADDR:
      return data.toString("utf8");
    case IdType.DER_ASN1_DN:
      return decodeDn(data);
    default:
      return `${type}:${data.toString("hex")}`;
  }
}

/** Identity match: type and data equal (DNs compared by normalized text). */
export function identityMatches(want: Identity, type: number, data: Buffer): boolean {
  if (want.type === IdType.DER_ASN1_DN && type === IdType.DER_ASN1_DN) return normDn(want.text) === normDn(decodeDn(data));
  return want.type === type && want.data.equals(data);
}

const normDn = (s: string): string =>
  s
    .split(/\s*,\s*/)
    .map((p) => p.replace(/\s*=\s*/, "=").toLowerCase())
    .join(",");

// ---- minimal DER for Distinguished Names (RFC 5280 §4.1.2.4) ----
const OIDS: Record<string, string> = { CN: "2.5.4.3", C: "2.5.4.6", L: "2.5.4.7", ST: "2.5.4.8", O: "2.5.4.10", OU: "2.5.4.11", E: "1.2.840.113549.1.9.1", emailAddress: "1.2.840.113549.1.9.1", SN: "2.5.4.4", serialNumber: "2.5.4.5", DC: "0.9.2342.19200300.100.1.25", UID: "0.9.2342.19200300.100.1.1" };
const OID_NAMES = Object.fromEntries(Object.entries(OIDS).filter(([k]) => k !== "emailAddress").map(([k, v]) => [v, k]));

function derLen(n: number): Buffer {
  if (n < 0x80) return Buffer.from([n]);
  const bytes: number[] = [];
  while (n > 0) (bytes.unshift(n & 0xff)), (n >>= 8);
  return Buffer.from([0x80 | bytes.length, ...bytes]);
}
const tlv = (tag: number, body: Buffer): Buffer => Buffer.concat([Buffer.from([tag]), derLen(body.length), body]);
function encOid(oid: string): Buffer {
  const parts = oid.split(".").map(Number);
  const out = [parts[0]! * 40 + parts[1]!];
  for (const p of parts.slice(2)) {
    const stack = [p & 0x7f];
    let v = p >> 7;
    while (v > 0) (stack.unshift((v & 0x7f) | 0x80)), (v >>= 7);
    out.push(...stack);
  }
  return tlv(0x06, Buffer.from(out));
}

/** "C=CH, O=strongSwan, CN=moon" -> DER Name (RDNs in the order written, as strongSwan does). */
export function encodeDn(dn: string): Buffer {
  const rdns = dn.split(/\s*,\s*/).filter(Boolean).map((part) => {
    const eq = part.indexOf("=");
    const key = part.slice(0, eq).trim();
    const val = part.slice(eq + 1).trim();
    const oid = OIDS[key] ?? (/^\d+(\.\d+)+$/.test(key) ? key : undefined);
    if (!oid) throw new ConfigError(`unknown DN attribute "${key}"`, dn);
    const str = key === "C" ? tlv(0x13, Buffer.from(val)) : key === "E" || key === "emailAddress" ? tlv(0x16, Buffer.from(val)) : tlv(0x0c, Buffer.from(val, "utf8"));
    return tlv(0x31, tlv(0x30, Buffer.concat([encOid(oid), str])));
  });
  return tlv(0x30, Buffer.concat(rdns));
}

/** DER Name -> "C=CH, O=strongSwan, CN=moon" (best effort for logs and matching). */
export function decodeDn(der: Buffer): string {
  try {
    const parts: string[] = [];
    const read = (buf: Buffer, off: number): { tag: number; body: Buffer; next: number } => {
      const tag = buf[off]!;
      let len = buf[off + 1]!;
      let p = off + 2;
      if (len & 0x80) {
        const n = len & 0x7f;
        len = 0;
        for (let i = 0; i < n; i++) len = (len << 8) | buf[p++]!;
      }
      return { tag, body: buf.subarray(p, p + len), next: p + len };
    };
    const name = read(der, 0);
    let off = 0;
    while (off < name.body.length) {
      const set = read(name.body, off);
      off = set.next;
      let o2 = 0;
      while (o2 < set.body.length) {
        const seq = read(set.body, o2);
        o2 = seq.next;
        const oid = read(seq.body, 0);
        const val = read(seq.body, oid.next);
        const b = oid.body;
        const arcs = [Math.floor(b[0]! / 40), b[0]! % 40];
        let v = 0;
        for (let i = 1; i < b.length; i++) {
          v = (v << 7) | (b[i]! & 0x7f);
          if (!(b[i]! & 0x80)) (arcs.push(v)), (v = 0);
        }
        const o = arcs.join(".");
        parts.push(`${OID_NAMES[o] ?? o}=${val.body.toString("utf8")}`);
      }
    }
    return parts.join(", ");
  } catch {
    return `DN:${der.toString("hex")}`;
  }
}

function parseProposals(list: string[], fallback: string[], kind: "ike" | "esp", field: string, conn: string): Proposal[] {
  const src = list.length ? list : fallback;
  return src.flatMap((s) => s.split(",")).filter((s) => s.trim()).map((s, i) => {
    try {
      return parseProposal(s, kind, i + 1);
    } catch (err) {
      throw new ConfigError((err as Error).message, `connection ${conn}: ${field}`);
    }
  });
}

/** Compiles a definition. Throws ConfigError naming the connection and field. */
export function compileConnection(def: fleet.ConnectionDef, secrets: SecretLookup, cas: string[], reqid: number): ConnRuntime {
  const name = def.name;
  const where = (f: string) => `connection ${name}: ${f}`;
  if (!/^[A-Za-z0-9._-]{1,64}$/.test(name)) throw new ConfigError(`invalid connection name "${name}"`, where("name"));
  const local = def.local ?? fleet.Endpoint.fromPartial({});
  const remote = def.remote ?? fleet.Endpoint.fromPartial({});
  for (const a of local.addresses) if (!isIP(a)) throw new ConfigError(`local address "${a}" is not an IP address`, where("local.addresses"));
  for (const a of remote.addresses) if (a !== "%any" && !isIP(a)) throw new ConfigError(`remote address "${a}" is not an IP address`, where("remote.addresses"));
  const ts = (list: string[], f: string): Ts[] =>
    list.map((s) => {
      try {
        return parseTs(s);
      } catch (err) {
        throw new ConfigError((err as Error).message, where(f));
      }
    });
  const secret = def.secretRef ? secrets(def.secretRef) : undefined;
  const localAuth = local.auth || fleet.AuthMethod.AUTH_METHOD_PSK;
  const remoteAuth = remote.auth || localAuth;
  let certChain: Buffer[] = [];
  const pem = secret?.certificateChainPem || local.certificatePem;
  if (localAuth === fleet.AuthMethod.AUTH_METHOD_PUBKEY && pem) {
    certChain = [...pem.matchAll(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g)].map((m) => new X509Certificate(m[0]).raw);
  }
  const caPems = remote.caPem ? [remote.caPem] : cas;
  const remoteCas = caPems.flatMap((p) => [...p.matchAll(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g)].map((m) => new X509Certificate(m[0])));
  let localId: Identity | undefined = local.id ? parseIdentity(local.id) : undefined;
  if (!localId && certChain[0]) localId = { type: IdType.DER_ASN1_DN, data: Buffer.from(subjectDer(certChain[0])), text: new X509Certificate(certChain[0]).subject.split("\n").join(", ") };
  const remoteId = remote.id === "%any" ? "%any" : remote.id ? parseIdentity(remote.id) : undefined;
  const n = (v: number, d: number) => (v > 0 ? v : d);
  const { secretRef: _ignored, revision: _rev, ...rest } = def;
  return {
    name,
    def,
    // What forces a renegotiation: the definition, minus what can change under a running SA
    // (rotated secrets, a renewed certificate: picked up for the next authentication).
    fingerprint: JSON.stringify(fleet.ConnectionDef.toJSON({ ...rest, local: { ...local, certificatePem: "" }, secretRef: def.secretRef, revision: 0n } as fleet.ConnectionDef)) + (secret ? `|${secret.kind}` : ""),
    localAddrs: local.addresses,
    remoteAddrs: remote.addresses.length ? remote.addresses : ["%any"],
    remotePort: local.port && remote.port ? remote.port : remote.port || 500,
    localId,
    remoteId,
    localAuth,
    remoteAuth,
    ikeProposals: parseProposals(def.ikeProposals, DEFAULT_IKE, "ike", "ike_proposals", name),
    espProposals: parseProposals(def.espProposals, DEFAULT_ESP, "esp", "esp_proposals", name),
    localTs: ts(local.subnets, "local.subnets"),
    remoteTs: ts(remote.subnets, "remote.subnets"),
    transport: def.mode === "transport",
    secret,
    certChain,
    remoteCas,
    reqid,
    ikeLifetime: n(def.ikeLifetimeSeconds, 10800),
    childLifetime: n(def.childLifetimeSeconds, 3600),
    rekeyMargin: def.rekeyMarginSeconds > 0 ? def.rekeyMarginSeconds : 540,
    // 0 is an explicit "no jitter" (rekeyfuzz=0%): every source fills the default 100 when omitted.
    rekeyFuzz: def.rekeyFuzzPercent,
    dpdDelay: def.dpdDelaySeconds,
    dpdTimeout: n(def.dpdTimeoutSeconds, 150),
    keyingTries: def.keyingTries,
    uniqueIds: def.uniqueIds,
    replayWindow: n(def.replayWindow, 1024),
  };
}

/** The DER subject Name of a certificate (tbsCertificate.subject). */
export function subjectDer(certDer: Buffer): Buffer {
  // Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version?, serial, sigAlg, issuer, validity, subject, ... } }
  const read = (buf: Buffer, off: number): { tag: number; start: number; end: number; next: number } => {
    const tag = buf[off]!;
    let len = buf[off + 1]!;
    let p = off + 2;
    if (len & 0x80) {
      const k = len & 0x7f;
      len = 0;
      for (let i = 0; i < k; i++) len = len * 256 + buf[p++]!;
    }
    return { tag, start: p, end: p + len, next: p + len };
  };
  const cert = read(certDer, 0);
  const tbs = read(certDer, cert.start);
  let off = tbs.start;
  let el = read(certDer, off);
  if (el.tag === 0xa0) (off = el.next), (el = read(certDer, off)); // version
  off = el.next; // serial
  off = read(certDer, off).next; // signature alg
  off = read(certDer, off).next; // issuer
  off = read(certDer, off).next; // validity
  const subj = read(certDer, off);
  return certDer.subarray(off, subj.end);
}
