/**
 * Stateless COOKIE (RFC 7296 §2.6):
 *   Cookie = <VersionIDofSecret> | Hash(Ni | IPi | SPIi | <secret>)
 * with SHA-256 as Hash and a one-octet secret version. After rotate(), cookies made with
 * the previous secret still verify (a client in flight keeps working), older ones do not.
 */
import { createHash, randomBytes, timingSafeEqual } from "node:crypto";
import { Secret } from "@fleetswan/common";
import { addressBytes } from "./natd.js";

/** Length of a cookie we issue: 1 + 32 (RFC 7296 §3.10.1 allows 1..64). */
export const COOKIE_LENGTH = 33;

/** Issues and checks cookies; holds the secrets (never printable). */
export class CookieJar {
  private version = 0;
  private current: Secret;
  private previous?: Secret;

  /** `secret` fixes the first secret (tests); otherwise 32 random octets. */
  constructor(secret?: Buffer) {
    this.current = new Secret(secret ?? randomBytes(32));
  }

  /** Start a new secret (RFC 7296 §2.6: "change the value of <secret> frequently"). */
  rotate(next?: Buffer): void {
    this.previous?.wipe();
    this.previous = this.current;
    this.current = new Secret(next ?? randomBytes(32));
    this.version = (this.version + 1) & 0xff;
  }

  private hash(secret: Secret, ni: Buffer, ip: string | Buffer, spiI: Buffer): Buffer {
    const addr = typeof ip === "string" ? addressBytes(ip) : ip;
    return createHash("sha256").update(ni).update(addr).update(spiI).update(secret.reveal()).digest();
  }

  /** Cookie for an IKE_SA_INIT request from `ip` with nonce `ni` and SPI `spiI`. */
  make(ni: Buffer, ip: string | Buffer, spiI: Buffer): Buffer {
    return Buffer.concat([Buffer.from([this.version]), this.hash(this.current, ni, ip, spiI)]);
  }

  /** True if `cookie` was made by make() with the current or the previous secret. */
  verify(cookie: Buffer, ni: Buffer, ip: string | Buffer, spiI: Buffer): boolean {
    if (cookie.length !== COOKIE_LENGTH) return false;
    const v = cookie[0]!;
    let secret: Secret | undefined;
    if (v === this.version) secret = this.current;
    else if (v === ((this.version + 255) & 0xff)) secret = this.previous;
    if (!secret) return false;
    return timingSafeEqual(cookie.subarray(1), this.hash(secret, ni, ip, spiI));
  }
}
