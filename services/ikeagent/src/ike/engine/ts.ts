/**
 * Traffic selectors (RFC 7296 §3.13, RFC 4301 §4.4.1): parsing from config ("10.1.0.0/24",
 * "10.1.0.0/24[tcp/443]"), narrowing (§2.9), conversion to the wire and to the dataplane's
 * prefix selectors. Addresses are bigints so IPv4 and IPv6 share the arithmetic.
 */
import { isIP } from "node:net";
import { dataplane } from "@fleetswan/proto";
import { TsType, type TrafficSelector } from "../wire/index.js";

/** One selector: an address range, an IP protocol (0 = any) and a port range. */
export interface Ts {
  v6: boolean;
  start: bigint;
  end: bigint;
  proto: number;
  startPort: number;
  endPort: number;
}

const PROTOS: Record<string, number> = { tcp: 6, udp: 17, icmp: 1, sctp: 132, "ipv6-icmp": 58, icmpv6: 58 };
const PROTO_NAMES: Record<number, string> = { 6: "tcp", 17: "udp", 1: "icmp", 132: "sctp", 58: "ipv6-icmp" };

export function addrToBig(a: string): bigint {
  const fam = isIP(a);
  if (fam === 4) return a.split(".").reduce((acc, o) => (acc << 8n) | BigInt(Number(o)), 0n);
  if (fam === 6) {
    let s = a;
    // IPv4-mapped tail
    const m = /(\d+\.\d+\.\d+\.\d+)$/.exec(s);
    if (m) {
      const v4 = addrToBig(m[1]!);
      s = s.slice(0, -m[1]!.length) + `${((v4 >> 16n) & 0xffffn).toString(16)}:${(v4 & 0xffffn).toString(16)}`;
    }
    const [head, tail] = s.split("::");
    const h = head ? head.split(":") : [];
    const t = tail !== undefined ? (tail ? tail.split(":") : []) : [];
    const groups = tail !== undefined ? [...h, ...Array<string>(8 - h.length - t.length).fill("0"), ...t] : h;
    return groups.reduce((acc, g) => (acc << 16n) | BigInt(parseInt(g || "0", 16)), 0n);
  }
  throw new RangeError(`not an IP address: ${a}`);
}

export function bigToAddr(v: bigint, v6: boolean): string {
  if (!v6) return [24n, 16n, 8n, 0n].map((s) => Number((v >> s) & 0xffn)).join(".");
  const groups: string[] = [];
  for (let i = 7; i >= 0; i--) groups.push(((v >> BigInt(i * 16)) & 0xffffn).toString(16));
  // compress the longest run of zero groups
  let best = -1;
  let bestLen = 0;
  for (let i = 0; i < 8; ) {
    if (groups[i] !== "0") {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === "0") j++;
    if (j - i > bestLen && j - i > 1) (best = i), (bestLen = j - i);
    i = j;
  }
  if (best < 0) return groups.join(":");
  return `${groups.slice(0, best).join(":")}::${groups.slice(best + bestLen).join(":")}`;
}

const maxOf = (v6: boolean): bigint => (v6 ? (1n << 128n) - 1n : (1n << 32n) - 1n);

/** "10.1.0.0/24", "10.1.0.1", "2001:db8::/32[tcp/443]", "10.0.0.0/8[udp]". */
export function parseTs(spec: string): Ts {
  const m = /^([^/[\]]+)(?:\/(\d{1,3}))?(?:\[([a-z0-9-]+|\d+)?(?:\/(\d+|%any))?\])?$/i.exec(spec.trim());
  if (!m || !isIP(m[1]!)) throw new RangeError(`bad traffic selector "${spec}" (address/prefix[proto/port])`);
  const v6 = isIP(m[1]!) === 6;
  const bits = v6 ? 128 : 32;
  const len = m[2] === undefined ? bits : Number(m[2]);
  if (len > bits) throw new RangeError(`bad prefix length in "${spec}"`);
  const hostMask = len === bits ? 0n : (1n << BigInt(bits - len)) - 1n;
  const start = addrToBig(m[1]!) & ~hostMask & maxOf(v6);
  let proto = 0;
  if (m[3]) {
    proto = /^\d+$/.test(m[3]) ? Number(m[3]) : (PROTOS[m[3].toLowerCase()] ?? -1);
    if (proto < 0 || proto > 255) throw new RangeError(`unknown protocol in "${spec}"`);
  }
  let startPort = 0;
  let endPort = 65535;
  if (m[4] && m[4] !== "%any") startPort = endPort = Number(m[4]);
  if (startPort > 65535) throw new RangeError(`bad port in "${spec}"`);
  return { v6, start, end: start | hostMask, proto, startPort, endPort };
}

/** A single host. */
export function hostTs(addr: string): Ts {
  const v6 = isIP(addr) === 6;
  const v = addrToBig(addr);
  return { v6, start: v, end: v, proto: 0, startPort: 0, endPort: 65535 };
}

/** a ∩ b, or undefined when empty (§2.9 narrowing of one pair). */
export function intersect(a: Ts, b: Ts): Ts | undefined {
  if (a.v6 !== b.v6) return undefined;
  if (a.proto !== 0 && b.proto !== 0 && a.proto !== b.proto) return undefined;
  const start = a.start > b.start ? a.start : b.start;
  const end = a.end < b.end ? a.end : b.end;
  if (start > end) return undefined;
  const startPort = Math.max(a.startPort, b.startPort);
  const endPort = Math.min(a.endPort, b.endPort);
  if (startPort > endPort) return undefined;
  return { v6: a.v6, start, end, proto: a.proto || b.proto, startPort, endPort };
}

/** a ⊇ b. */
export function contains(a: Ts, b: Ts): boolean {
  return a.v6 === b.v6 && a.start <= b.start && a.end >= b.end && (a.proto === 0 || a.proto === b.proto) && a.startPort <= b.startPort && a.endPort >= b.endPort;
}

export function tsEqual(a: Ts, b: Ts): boolean {
  return a.v6 === b.v6 && a.start === b.start && a.end === b.end && a.proto === b.proto && a.startPort === b.startPort && a.endPort === b.endPort;
}

/**
 * RFC 7296 §2.9: the responder narrows the initiator's proposal to what its policy allows.
 * Every proposed selector is intersected with every configured one; empty results are
 * dropped, duplicates and selectors contained in another are removed.
 */
export function narrow(proposed: Ts[], configured: Ts[]): Ts[] {
  const out: Ts[] = [];
  for (const c of configured) {
    for (const p of proposed) {
      const i = intersect(p, c);
      if (i && !out.some((o) => contains(o, i))) {
        for (let k = out.length - 1; k >= 0; k--) if (contains(i, out[k]!)) out.splice(k, 1);
        out.push(i);
      }
    }
  }
  return out;
}

/** Size of a selector (for "most specific wins"): number of addresses × ports, smaller = more specific. */
export function tsSize(t: Ts): bigint {
  return (t.end - t.start + 1n) * BigInt(t.endPort - t.startPort + 1) * (t.proto === 0 ? 256n : 1n);
}

export function toWire(t: Ts): TrafficSelector {
  const n = t.v6 ? 16 : 4;
  const buf = (v: bigint): Buffer => {
    const b = Buffer.alloc(n);
    for (let i = n - 1; i >= 0; i--) (b[i] = Number(v & 0xffn)), (v >>= 8n);
    return b;
  };
  return { tsType: t.v6 ? TsType.IPV6_ADDR_RANGE : TsType.IPV4_ADDR_RANGE, ipProtocol: t.proto, startPort: t.startPort, endPort: t.endPort, startAddress: buf(t.start), endAddress: buf(t.end) };
}

/** Wire selector to Ts; unknown TS types yield undefined (ignored, §3.13.1). */
export function fromWire(s: TrafficSelector): Ts | undefined {
  if (s.tsType !== TsType.IPV4_ADDR_RANGE && s.tsType !== TsType.IPV6_ADDR_RANGE) return undefined;
  const big = (b: Buffer): bigint => b.reduce((acc, x) => (acc << 8n) | BigInt(x), 0n);
  return { v6: s.tsType === TsType.IPV6_ADDR_RANGE, start: big(s.startAddress), end: big(s.endAddress), proto: s.ipProtocol, startPort: s.startPort, endPort: s.endPort };
}

/** The range as CIDR prefixes (a range need not be one prefix). */
export function toPrefixes(t: Ts): dataplane.Prefix[] {
  const bits = t.v6 ? 128 : 32;
  const out: dataplane.Prefix[] = [];
  let cur = t.start;
  while (cur <= t.end) {
    let size = 0;
    while (size < bits) {
      const block = 1n << BigInt(size + 1);
      if (cur % block !== 0n || cur + block - 1n > t.end) break;
      size++;
    }
    out.push({ address: bigToAddr(cur, t.v6), length: bits - size });
    cur += 1n << BigInt(size);
    if (out.length > 64) throw new RangeError("traffic selector range needs more than 64 prefixes");
  }
  return out;
}

/** "10.1.0.0/24", "10.1.0.0/24[tcp/443]", or "a-b" for a range that is not a prefix. */
export function tsToString(t: Ts): string {
  const p = toPrefixes(t);
  const addr = p.length === 1 ? `${p[0]!.address}/${p[0]!.length}` : `${bigToAddr(t.start, t.v6)}..${bigToAddr(t.end, t.v6)}`;
  if (t.proto === 0 && t.startPort === 0 && t.endPort === 65535) return addr;
  const proto = PROTO_NAMES[t.proto] ?? String(t.proto);
  const port = t.startPort === 0 && t.endPort === 65535 ? "" : t.startPort === t.endPort ? `/${t.startPort}` : `/${t.startPort}-${t.endPort}`;
  return `${addr}[${proto}${port}]`;
}

/**
 * Dataplane selectors for traffic from `src` to `dst` (cartesian product of prefixes).
 * Port ranges other than one port or all ports cannot be expressed and are widened to any.
 */
export function toSelectors(src: Ts, dst: Ts): dataplane.Selector[] {
  const out: dataplane.Selector[] = [];
  const proto = src.proto || dst.proto;
  const port = (t: Ts): number => (t.startPort === t.endPort ? t.startPort : 0);
  for (const s of toPrefixes(src)) for (const d of toPrefixes(dst)) out.push({ src: s, dst: d, protocol: proto, srcPort: port(src), dstPort: port(dst) });
  return out;
}
