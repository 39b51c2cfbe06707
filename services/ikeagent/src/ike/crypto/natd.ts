/**
 * NAT detection hashes (RFC 7296 §2.23):
 *   NAT_DETECTION_SOURCE_IP / _DESTINATION_IP data = SHA-1(SPIi | SPIr | IP address | Port)
 * SHA-1 is mandated by the RFC here. It is NOT used for security: the hash only lets each
 * side notice that an address or port changed on the way (collision resistance is
 * irrelevant; an attacker who can rewrite packets can equally rewrite the notify).
 */
import { createHash } from "node:crypto";
import { isIP } from "node:net";

/** Address as 4 (IPv4) or 16 (IPv6) octets. */
export function addressBytes(ip: string): Buffer {
  const v = isIP(ip);
  if (v === 4) return Buffer.from(ip.split(".").map((x) => Number(x)));
  if (v === 6) {
    let s = ip;
    const v4 = /(\d+\.\d+\.\d+\.\d+)$/.exec(s);
    let tail: number[] = [];
    if (v4) {
      tail = v4[1]!.split(".").map((x) => Number(x));
      s = s.slice(0, -v4[1]!.length) + "0:0";
    }
    const [head, rest] = s.split("::") as [string, string | undefined];
    const h = head ? head.split(":") : [];
    const r = rest !== undefined && rest !== "" ? rest.split(":") : [];
    const groups = rest === undefined ? h : [...h, ...Array(8 - h.length - r.length).fill("0"), ...r];
    const b = Buffer.alloc(16);
    groups.forEach((g, i) => b.writeUInt16BE(parseInt(g, 16), 2 * i));
    if (v4) Buffer.from(tail).copy(b, 12);
    return b;
  }
  throw new RangeError(`not an IP address: ${ip}`);
}

/** NAT-D hash for one endpoint (RFC 7296 §2.23). SPIr is zero in the IKE_SA_INIT request. */
export function natDetectionHash(spiI: Buffer, spiR: Buffer, ip: string | Buffer, port: number): Buffer {
  const addr = typeof ip === "string" ? addressBytes(ip) : ip;
  const p = Buffer.alloc(2);
  p.writeUInt16BE(port);
  return createHash("sha1").update(spiI).update(spiR).update(addr).update(p).digest();
}
