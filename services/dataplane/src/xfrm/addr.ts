/**
 * xfrm_address_t (16 octets, IPv4 in the first 4) to and from text. IPv6 text follows
 * RFC 5952 (lower case, longest zero run compressed, IPv4-mapped not special-cased).
 */
import { isIPv4, isIPv6 } from "node:net";
import { FleetswanError } from "@fleetswan/common";
import { AF_INET, AF_INET6 } from "./constants.js";

/** An address that is not IPv4 or IPv6 text, or a family mismatch. */
export class AddressError extends FleetswanError {
  constructor(message: string, readonly input: string) {
    super("ADDRESS_INVALID", message, { input });
  }
}

/** AF_INET or AF_INET6 for an address literal; throws AddressError otherwise. */
export function familyOf(addr: string): number {
  if (isIPv4(addr)) return AF_INET;
  if (isIPv6(addr)) return AF_INET6;
  throw new AddressError(`not an IPv4 or IPv6 address: "${addr}"`, addr);
}

/** Write `addr` as xfrm_address_t into buf[off..off+16). "" writes zeros. */
export function writeAddress(buf: Buffer, off: number, addr: string): void {
  buf.fill(0, off, off + 16);
  if (addr === "") return;
  const bytes = addressBytes(addr);
  bytes.copy(buf, off);
}

/** The 4 or 16 octets of an address literal. */
export function addressBytes(addr: string): Buffer {
  if (isIPv4(addr)) return Buffer.from(addr.split(".").map((x) => Number(x)));
  if (!isIPv6(addr)) throw new AddressError(`not an IPv4 or IPv6 address: "${addr}"`, addr);
  let text = addr.toLowerCase();
  const zone = text.indexOf("%");
  if (zone >= 0) text = text.slice(0, zone);
  // Embedded IPv4 tail ("::ffff:192.0.2.1") becomes two hextets.
  const lastColon = text.lastIndexOf(":");
  const tail = text.slice(lastColon + 1);
  if (isIPv4(tail)) {
    const o = tail.split(".").map(Number);
    text = `${text.slice(0, lastColon + 1)}${((o[0] << 8) | o[1]).toString(16)}:${((o[2] << 8) | o[3]).toString(16)}`;
  }
  const [head, rest] = text.split("::");
  const h = head ? head.split(":") : [];
  const r = rest !== undefined && rest !== "" ? rest.split(":") : [];
  const groups = rest === undefined ? h : [...h, ...new Array<string>(8 - h.length - r.length).fill("0"), ...r];
  const out = Buffer.alloc(16);
  groups.forEach((g, i) => out.writeUInt16BE(parseInt(g, 16), i * 2));
  return out;
}

/** Read an xfrm_address_t of the given family as text. AF_UNSPEC with zero bytes gives "". */
export function readAddress(buf: Buffer, off: number, family: number): string {
  if (family === AF_INET) return `${buf[off]}.${buf[off + 1]}.${buf[off + 2]}.${buf[off + 3]}`;
  if (family === AF_INET6) return formatIPv6(buf.subarray(off, off + 16));
  // Unknown family: all zero is "no address"; otherwise guess by the unused tail.
  const b = buf.subarray(off, off + 16);
  if (b.every((x) => x === 0)) return "";
  return b.subarray(4).every((x) => x === 0) ? readAddress(buf, off, AF_INET) : formatIPv6(b);
}

/** RFC 5952 text of 16 octets. */
export function formatIPv6(b: Buffer): string {
  const g: number[] = [];
  for (let i = 0; i < 8; i++) g.push(b.readUInt16BE(i * 2));
  let bestStart = -1;
  let bestLen = 0;
  for (let i = 0; i < 8; ) {
    if (g[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && g[j] === 0) j++;
    if (j - i > bestLen && j - i >= 2) {
      bestStart = i;
      bestLen = j - i;
    }
    i = j;
  }
  const hex = g.map((x) => x.toString(16));
  if (bestStart < 0) return hex.join(":");
  return `${hex.slice(0, bestStart).join(":")}::${hex.slice(bestStart + bestLen).join(":")}`;
}

/** Canonical text of an address literal (IPv6 compressed, lower case); "" stays "". */
export function canonicalAddress(addr: string): string {
  if (addr === "") return "";
  const fam = familyOf(addr);
  return fam === AF_INET ? addr.split(".").map(Number).join(".") : formatIPv6(addressBytes(addr));
}

/** True when the host bits of `addr`/`len` are all zero. */
export function isNetworkAddress(addr: string, len: number): boolean {
  const b = addressBytes(addr);
  for (let bit = len; bit < b.length * 8; bit++) if ((b[bit >> 3] >> (7 - (bit & 7))) & 1) return false;
  return true;
}
