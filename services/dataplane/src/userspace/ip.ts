/**
 * IP address and packet helpers for the userspace ESP data path: textual addresses to
 * bytes, prefix matching against selectors, and the 5-tuple of an IPv4/IPv6 packet.
 * Everything works on Buffers without allocation on the per-packet path.
 */
import { isIPv4, isIPv6 } from "node:net";
import type { dataplane } from "@fleetswan/proto";
import { FleetswanError } from "@fleetswan/common";

export class AddressError extends FleetswanError {
  constructor(message: string, details: Record<string, unknown> = {}) {
    super("ESP_BAD_ADDRESS", message, details);
  }
}

/** 4 or 16 bytes of a textual IPv4/IPv6 address. */
export function addressBytes(addr: string): Buffer {
  if (isIPv4(addr)) return Buffer.from(addr.split(".").map((x) => Number(x)));
  if (isIPv6(addr)) {
    let s = addr;
    // an embedded IPv4 tail ("::ffff:1.2.3.4")
    const m = /^(.*:)(\d+\.\d+\.\d+\.\d+)$/.exec(s);
    if (m) {
      const v4 = addressBytes(m[2]!);
      s = `${m[1]}${v4.readUInt16BE(0).toString(16)}:${v4.readUInt16BE(2).toString(16)}`;
    }
    const [head, tail] = s.includes("::") ? s.split("::") : [s, undefined];
    const h = head ? head.split(":") : [];
    const t = tail !== undefined && tail !== "" ? tail.split(":") : [];
    const groups = tail === undefined ? h : [...h, ...new Array<string>(8 - h.length - t.length).fill("0"), ...t];
    const b = Buffer.alloc(16);
    groups.forEach((g, i) => b.writeUInt16BE(parseInt(g, 16), i * 2));
    return b;
  }
  throw new AddressError(`not an IP address: "${addr}"`, { address: addr });
}

/** Textual form of 4 or 16 address bytes. */
export function addressText(b: Buffer | Uint8Array, off = 0, len = b.length - off): string {
  if (len === 4) return `${b[off]}.${b[off + 1]}.${b[off + 2]}.${b[off + 3]}`;
  const g: string[] = [];
  for (let i = 0; i < 16; i += 2) g.push(((b[off + i]! << 8) | b[off + i + 1]!).toString(16));
  // compress the longest run of zero groups (RFC 5952)
  let best = -1, bestLen = 0;
  for (let i = 0; i < 8; ) {
    if (g[i] !== "0") { i++; continue; }
    let j = i;
    while (j < 8 && g[j] === "0") j++;
    if (j - i > bestLen && j - i > 1) { best = i; bestLen = j - i; }
    i = j;
  }
  if (best < 0) return g.join(":");
  return `${g.slice(0, best).join(":")}::${g.slice(best + bestLen).join(":")}`;
}

export function familyOf(addr: string): 4 | 6 {
  if (isIPv4(addr)) return 4;
  if (isIPv6(addr)) return 6;
  throw new AddressError(`not an IP address: "${addr}"`, { address: addr });
}

/** A compiled prefix: family, network bytes and length; matches packet bytes in place. */
export interface CompiledPrefix {
  family: 4 | 6;
  net: Buffer;
  length: number;
  /** For IPv4: network and mask as uint32 (fast path). */
  net4: number;
  mask4: number;
}

export function compilePrefix(p: dataplane.Prefix | undefined, family: 4 | 6): CompiledPrefix {
  if (!p || p.address === "") {
    return { family, net: Buffer.alloc(family === 4 ? 4 : 16), length: 0, net4: 0, mask4: 0 };
  }
  const net = addressBytes(p.address);
  const fam = net.length === 4 ? 4 : 6;
  const max = fam === 4 ? 32 : 128;
  if (p.length > max) throw new AddressError(`prefix length ${p.length} too long for ${p.address}`, { prefix: `${p.address}/${p.length}` });
  const mask4 = fam === 4 ? (p.length === 0 ? 0 : (0xffffffff << (32 - p.length)) >>> 0) : 0;
  return { family: fam, net, length: p.length, net4: fam === 4 ? (net.readUInt32BE(0) & mask4) >>> 0 : 0, mask4 };
}

/** Does the address at buf[off..] (family bytes) lie in the prefix? */
export function prefixMatches(p: CompiledPrefix, buf: Buffer, off: number): boolean {
  if (p.length === 0) return true;
  if (p.family === 4) return ((buf.readUInt32BE(off) & p.mask4) >>> 0) === p.net4;
  let bits = p.length;
  for (let i = 0; bits > 0; i++, bits -= 8) {
    const m = bits >= 8 ? 0xff : (0xff << (8 - bits)) & 0xff;
    if ((buf[off + i]! & m) !== (p.net[i]! & m)) return false;
  }
  return true;
}

/** The fields of an IP packet that selectors look at. Reused across packets (no allocation). */
export class PacketInfo {
  family: 4 | 6 = 4;
  /** Offsets of the source and destination address in the packet. */
  srcOff = 12;
  dstOff = 16;
  /** Upper-layer protocol (after IPv6 extension headers we know) and its offset. */
  protocol = 0;
  l4Off = 0;
  srcPort = 0;
  dstPort = 0;
  /** Total length from the IP header (may be less than the buffer). */
  totalLength = 0;

  /** Parse; false when the packet is not a well-formed IPv4/IPv6 packet. */
  parse(p: Buffer): boolean {
    if (p.length < 1) return false;
    const v = p[0]! >> 4;
    if (v === 4) {
      if (p.length < 20) return false;
      const ihl = (p[0]! & 0x0f) * 4;
      if (ihl < 20 || p.length < ihl) return false;
      this.family = 4;
      this.srcOff = 12;
      this.dstOff = 16;
      this.protocol = p[9]!;
      this.l4Off = ihl;
      this.totalLength = p.readUInt16BE(2);
      // ports only in the first fragment
      const frag = p.readUInt16BE(6) & 0x1fff;
      this.ports(p, frag === 0);
      return this.totalLength <= p.length && this.totalLength >= ihl;
    }
    if (v === 6) {
      if (p.length < 40) return false;
      this.family = 6;
      this.srcOff = 8;
      this.dstOff = 24;
      this.totalLength = 40 + p.readUInt16BE(4);
      let nh = p[6]!;
      let off = 40;
      // hop-by-hop, routing, destination options: skip to the upper layer (RFC 8200 §4)
      while ((nh === 0 || nh === 43 || nh === 60) && off + 8 <= p.length) {
        const next = p[off]!;
        off += (p[off + 1]! + 1) * 8;
        nh = next;
      }
      this.protocol = nh;
      this.l4Off = off;
      this.ports(p, nh !== 44);
      return this.totalLength <= p.length;
    }
    return false;
  }

  private ports(p: Buffer, first: boolean): void {
    const pr = this.protocol;
    if (first && (pr === 6 || pr === 17 || pr === 132 || pr === 136) && this.l4Off + 4 <= p.length) {
      this.srcPort = p.readUInt16BE(this.l4Off);
      this.dstPort = p.readUInt16BE(this.l4Off + 2);
    } else {
      this.srcPort = 0;
      this.dstPort = 0;
    }
  }
}

/** A compiled selector (RFC 4301 §4.4.1.1): prefixes, protocol and ports; 0 = any. */
export class CompiledSelector {
  readonly family: 4 | 6;
  readonly src: CompiledPrefix;
  readonly dst: CompiledPrefix;
  readonly protocol: number;
  readonly srcPort: number;
  readonly dstPort: number;

  constructor(readonly selector: dataplane.Selector) {
    const fam = selector.src?.address ? familyOf(selector.src.address) : selector.dst?.address ? familyOf(selector.dst.address) : 4;
    this.family = fam;
    this.src = compilePrefix(selector.src, fam);
    this.dst = compilePrefix(selector.dst, fam);
    if (this.src.family !== this.dst.family) {
      throw new AddressError("selector mixes IPv4 and IPv6", { src: selector.src?.address, dst: selector.dst?.address });
    }
    this.protocol = selector.protocol;
    this.srcPort = selector.srcPort;
    this.dstPort = selector.dstPort;
  }

  matches(p: Buffer, info: PacketInfo): boolean {
    if (info.family !== this.family) return false;
    if (this.protocol !== 0 && this.protocol !== info.protocol) return false;
    if (this.srcPort !== 0 && this.srcPort !== info.srcPort) return false;
    if (this.dstPort !== 0 && this.dstPort !== info.dstPort) return false;
    return prefixMatches(this.src, p, info.srcOff) && prefixMatches(this.dst, p, info.dstOff);
  }

  /** The packet's own addresses/ports as a Selector (host prefixes), for Acquire events. */
  static ofPacket(p: Buffer, info: PacketInfo): dataplane.Selector {
    const n = info.family === 4 ? 4 : 16;
    return {
      src: { address: addressText(p, info.srcOff, n), length: n * 8 },
      dst: { address: addressText(p, info.dstOff, n), length: n * 8 },
      protocol: info.protocol,
      srcPort: info.srcPort,
      dstPort: info.dstPort,
    };
  }
}
