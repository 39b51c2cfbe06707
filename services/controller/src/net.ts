import { isIPv4, isIPv6 } from "node:net";

/** A parsed CIDR prefix: family, network address as bigint, prefix length. */
export interface Prefix {
  readonly family: 4 | 6;
  readonly addr: bigint;
  readonly len: number;
  /** Canonical text, e.g. "10.1.0.0/16". */
  readonly text: string;
}

function v4ToBig(ip: string): bigint {
  return ip.split(".").reduce((acc, o) => (acc << 8n) | BigInt(Number(o)), 0n);
}

function v6ToBig(ip: string): bigint {
  let s = ip;
  // embedded IPv4 tail (::ffff:192.0.2.1)
  const v4tail = /(\d+\.\d+\.\d+\.\d+)$/.exec(s);
  if (v4tail) {
    const n = v4ToBig(v4tail[1]!);
    s = s.slice(0, -v4tail[1]!.length) + ((n >> 16n) & 0xffffn).toString(16) + ":" + (n & 0xffffn).toString(16);
  }
  const [head, tail] = s.split("::") as [string, string | undefined];
  const h = head ? head.split(":") : [];
  const t = tail !== undefined && tail !== "" ? tail.split(":") : [];
  const groups = tail === undefined ? h : [...h, ...Array<string>(8 - h.length - t.length).fill("0"), ...t];
  return groups.reduce((acc, g) => (acc << 16n) | BigInt(parseInt(g, 16)), 0n);
}

function bigToV4(n: bigint): string {
  return [24n, 16n, 8n, 0n].map((s) => String((n >> s) & 0xffn)).join(".");
}

function bigToV6(n: bigint): string {
  const groups: number[] = [];
  for (let i = 7; i >= 0; i--) groups.push(Number((n >> BigInt(i * 16)) & 0xffffn));
  // RFC 5952: compress the longest run (>= 2) of zero groups.
  let best = -1, bestLen = 0;
  for (let i = 0; i < 8; ) {
    if (groups[i] !== 0) { i++; continue; }
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > bestLen && j - i >= 2) { best = i; bestLen = j - i; }
    i = j;
  }
  const hex = groups.map((g) => g.toString(16));
  if (best < 0) return hex.join(":");
  return hex.slice(0, best).join(":") + "::" + hex.slice(best + bestLen).join(":");
}

export function isIpLiteral(s: string): boolean {
  return isIPv4(s) || isIPv6(s);
}

/** A plausible DNS host name (not an IP literal). */
export function isHostName(s: string): boolean {
  return !isIpLiteral(s) && s.length <= 253 && /^(?=.*[a-zA-Z])([a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?)(\.[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?)*\.?$/.test(s);
}

/**
 * Parse "10.1.0.0/16", "2001:db8::/32", or a bare address (a host prefix). A traffic
 * selector suffix "[proto/port]" is allowed and ignored. Returns an error message
 * (string) when invalid; host bits set is an error so operators notice typos.
 */
export function parsePrefix(input: string): Prefix | string {
  const sel = input.replace(/\[[^\]]*\]$/, "");
  const [ip, lenText, extra] = sel.split("/");
  if (extra !== undefined || !ip) return `not a CIDR prefix: "${input}"`;
  const family = isIPv4(ip) ? 4 : isIPv6(ip) ? 6 : 0;
  if (family === 0) return `not an IP address or CIDR prefix: "${input}"`;
  const bits = family === 4 ? 32 : 128;
  let len = bits;
  if (lenText !== undefined) {
    if (!/^\d{1,3}$/.test(lenText) || Number(lenText) > bits) return `bad prefix length in "${input}" (0..${bits})`;
    len = Number(lenText);
  }
  const addr = family === 4 ? v4ToBig(ip) : v6ToBig(ip);
  const hostMask = (1n << BigInt(bits - len)) - 1n;
  if ((addr & hostMask) !== 0n) {
    const net = addr & ~hostMask;
    return `host bits set in "${input}" (did you mean ${family === 4 ? bigToV4(net) : bigToV6(net)}/${len}?)`;
  }
  const text = `${family === 4 ? bigToV4(addr) : bigToV6(addr)}/${len}`;
  return { family, addr, len, text };
}

/** True when the two prefixes share at least one address. */
export function overlaps(a: Prefix, b: Prefix): boolean {
  if (a.family !== b.family) return false;
  const bits = a.family === 4 ? 32 : 128;
  const len = Math.min(a.len, b.len);
  const shift = BigInt(bits - len);
  return a.addr >> shift === b.addr >> shift;
}

/** True when `inner` lies entirely inside `outer`. */
export function contains(outer: Prefix, inner: Prefix): boolean {
  return outer.family === inner.family && outer.len <= inner.len && overlaps(outer, inner);
}

/** The overlap of two overlapping prefixes is the longer (more specific) one. */
export function intersection(a: Prefix, b: Prefix): Prefix {
  return a.len >= b.len ? a : b;
}

/** Host prefix of a literal address ("192.0.2.1" -> 192.0.2.1/32). */
export function hostPrefix(ip: string): Prefix {
  const p = parsePrefix(ip);
  if (typeof p === "string") throw new Error(p);
  return p;
}
