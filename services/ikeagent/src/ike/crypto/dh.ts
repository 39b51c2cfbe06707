/**
 * Key exchange (the KE payload, RFC 7296 §1.2, §2.14): MODP groups 14, 15, 16 (RFC 3526
 * primes, generator 2), ECP groups 19, 20, 21 (RFC 5903: public value x||y without the
 * 0x04 prefix; shared secret = x), Curve25519 (RFC 8031: 32-octet u-coordinate).
 * Peer public values are checked (RFC 6989): range for MODP, point on the curve for ECP,
 * length and non-zero result for Curve25519.
 */
import { createDiffieHellman, createECDH, createPrivateKey, createPublicKey, diffieHellman, generateKeyPairSync, getDiffieHellman, type KeyObject } from "node:crypto";
import { FleetswanError, WeakCryptoError } from "@fleetswan/common";
import { DhId, nameOf, NotifyType } from "../wire/constants.js";

/** A peer's KE data is invalid (wrong length, out of range, not on the curve). Answer INVALID_SYNTAX (RFC 6989 §2). */
export class KeyExchangeError extends FleetswanError {
  /** Notify to send (INVALID_SYNTAX). */
  readonly notifyType = NotifyType.INVALID_SYNTAX;
  constructor(message: string, readonly group: number) {
    super("IKE_INVALID_KE_DATA", `${nameOf(DhId, group)}: ${message}`, { group });
  }
}

/** Groups fleetswan implements (policy: nothing below 2048-bit MODP / 256-bit ECP). */
export const SUPPORTED_DH_GROUPS: readonly number[] = [DhId.MODP_2048, DhId.MODP_3072, DhId.MODP_4096, DhId.ECP_256, DhId.ECP_384, DhId.ECP_521, DhId.CURVE25519];

/** One side of a key exchange: our public value, and the shared secret once the peer's value is known. */
export interface KeyExchange {
  readonly group: number;
  /** KE payload data to send. */
  readonly publicValue: Buffer;
  /**
   * g^ir: MODP zero-padded to the prime length (§2.14), ECP the x coordinate (RFC 5903 §7),
   * Curve25519 the 32-octet X25519 output (RFC 8031 §2). Validates `peer` first.
   * @throws KeyExchangeError
   */
  computeSharedSecret(peer: Buffer): Buffer;
}

const MODP: Record<number, { name: string; bytes: number }> = {
  [DhId.MODP_2048]: { name: "modp14", bytes: 256 },
  [DhId.MODP_3072]: { name: "modp15", bytes: 384 },
  [DhId.MODP_4096]: { name: "modp16", bytes: 512 },
};

const ECP: Record<number, { curve: string; coord: number }> = {
  [DhId.ECP_256]: { curve: "prime256v1", coord: 32 },
  [DhId.ECP_384]: { curve: "secp384r1", coord: 48 },
  [DhId.ECP_521]: { curve: "secp521r1", coord: 66 },
};

/** KE data length of a group (MODP: prime length; ECP: 2 × coordinate; Curve25519: 32). */
export function publicValueLength(group: number): number {
  if (MODP[group]) return MODP[group]!.bytes;
  if (ECP[group]) return 2 * ECP[group]!.coord;
  if (group === DhId.CURVE25519) return 32;
  throw new WeakCryptoError(`DH group ${nameOf(DhId, group)} not supported`, { group });
}

/** The RFC 3526 prime of a MODP group (big-endian). */
export function modpPrime(group: number): Buffer {
  const m = MODP[group];
  if (!m) throw new WeakCryptoError(`DH group ${nameOf(DhId, group)} is not a supported MODP group`, { group });
  return getDiffieHellman(m.name).getPrime();
}

function leftPad(b: Buffer, len: number): Buffer {
  if (b.length === len) return b;
  if (b.length > len) throw new RangeError("value longer than field");
  return Buffer.concat([Buffer.alloc(len - b.length), b]);
}

/**
 * RFC 6989 §2.1 / RFC 7296: a MODP public value must be 1 < y < p-1 and exactly the prime
 * length. (The RFC 3526 primes are safe primes, so the range check suffices.)
 */
function checkModp(group: number, y: Buffer): void {
  const len = MODP[group]!.bytes;
  if (y.length !== len) throw new KeyExchangeError(`public value is ${y.length} octets, want ${len}`, group);
  const p = BigInt("0x" + modpPrime(group).toString("hex"));
  const v = BigInt("0x" + y.toString("hex"));
  if (v <= 1n || v >= p - 1n) throw new KeyExchangeError("public value out of range (must be 1 < y < p-1)", group);
}

/** Validate a peer's KE data for `group` without computing anything secret. */
export function validatePublicValue(group: number, value: Buffer): void {
  if (MODP[group]) return checkModp(group, value);
  const e = ECP[group];
  if (e) {
    if (value.length !== 2 * e.coord) throw new KeyExchangeError(`public value is ${value.length} octets, want ${2 * e.coord}`, group);
    try {
      // RFC 5903 §7: KE data is x||y; prefix 0x04 to get the SEC1 uncompressed point
      createPublicKey({ key: { kty: "EC", crv: jwkCurve(group), x: value.subarray(0, e.coord).toString("base64url"), y: value.subarray(e.coord).toString("base64url") }, format: "jwk" });
    } catch {
      throw new KeyExchangeError("public value is not a point on the curve", group);
    }
    return;
  }
  if (group === DhId.CURVE25519) {
    if (value.length !== 32) throw new KeyExchangeError(`public value is ${value.length} octets, want 32`, group);
    return;
  }
  throw new WeakCryptoError(`DH group ${nameOf(DhId, group)} not supported`, { group });
}

function jwkCurve(group: number): string {
  return group === DhId.ECP_256 ? "P-256" : group === DhId.ECP_384 ? "P-384" : "P-521";
}

/** DER prefix wrapping a raw 32-octet X25519 private key (RFC 8410). */
const X25519_PKCS8_PREFIX = Buffer.from("302e020100300506032b656e04220420", "hex");

/**
 * A peer's raw X25519 public value as a KeyObject. Imported as a JWK: node/OpenSSL 3 take
 * ~10x longer to decode the same key from DER (SPKI), which made key import the biggest
 * single cost of a responder's handshake.
 */
function x25519Public(raw: Buffer): KeyObject {
  return createPublicKey({ key: { kty: "OKP", crv: "X25519", x: raw.toString("base64url") }, format: "jwk" });
}

/** Our raw public value (exported as a JWK for the same reason). */
function x25519Raw(pub: KeyObject): Buffer {
  return Buffer.from(pub.export({ format: "jwk" }).x!, "base64url");
}

/**
 * Start a key exchange in `group`. `privateKey` fixes the private value (tests with
 * published vectors only); by default a fresh random one is generated.
 */
export function createKeyExchange(group: number, opts: { privateKey?: Buffer } = {}): KeyExchange {
  const m = MODP[group];
  if (m) {
    const dh = createDiffieHellman(modpPrime(group), Buffer.from([2]));
    if (opts.privateKey) dh.setPrivateKey(opts.privateKey);
    dh.generateKeys();
    return {
      group,
      publicValue: leftPad(dh.getPublicKey(), m.bytes),
      computeSharedSecret(peer: Buffer): Buffer {
        checkModp(group, peer);
        return leftPad(dh.computeSecret(peer), m.bytes);
      },
    };
  }
  const e = ECP[group];
  if (e) {
    const ecdh = createECDH(e.curve);
    if (opts.privateKey) ecdh.setPrivateKey(opts.privateKey);
    else ecdh.generateKeys();
    const pub = ecdh.getPublicKey(); // 0x04 | x | y
    return {
      group,
      publicValue: Buffer.from(pub.subarray(1)),
      computeSharedSecret(peer: Buffer): Buffer {
        if (peer.length !== 2 * e.coord) throw new KeyExchangeError(`public value is ${peer.length} octets, want ${2 * e.coord}`, group);
        try {
          // computeSecret checks the point is on the curve; result is the x coordinate
          return leftPad(ecdh.computeSecret(Buffer.concat([Buffer.from([4]), peer])), e.coord);
        } catch {
          throw new KeyExchangeError("public value is not a point on the curve", group);
        }
      },
    };
  }
  if (group === DhId.CURVE25519) {
    let priv: KeyObject;
    let pubRaw: Buffer;
    if (opts.privateKey) {
      if (opts.privateKey.length !== 32) throw new RangeError("X25519 private key must be 32 octets");
      priv = createPrivateKey({ key: Buffer.concat([X25519_PKCS8_PREFIX, opts.privateKey]), format: "der", type: "pkcs8" });
      pubRaw = x25519Raw(createPublicKey(priv));
    } else {
      // The public value comes DER-encoded (SPKI) out of the key generation itself, not from
      // exporting the new public KeyObject afterwards: node 20.20 can deadlock when a GC
      // during that export (ExportJWKEdKey holds the key's mutex while allocating) finalizes
      // the generation job that shares the key and takes the same mutex (seen in a crypto
      // worker under the handshake benchmark; gdb: ~KeyGenJob waiting in ExportJWK).
      // (only the public key encoded: node returns it as a Buffer, the private key as a KeyObject; @types/node has no overload for that)
      const kp = generateKeyPairSync("x25519", { publicKeyEncoding: { type: "spki", format: "der" } } as never) as unknown as { publicKey: Buffer; privateKey: KeyObject };
      priv = kp.privateKey;
      pubRaw = Buffer.from(kp.publicKey.subarray(kp.publicKey.length - 32)); // SPKI = 12-octet prefix | 32-octet u (RFC 8410)
    }
    return {
      group,
      publicValue: pubRaw,
      computeSharedSecret(peer: Buffer): Buffer {
        if (peer.length !== 32) throw new KeyExchangeError(`public value is ${peer.length} octets, want 32`, group);
        let s: Buffer;
        try {
          s = diffieHellman({ privateKey: priv, publicKey: x25519Public(peer) });
        } catch {
          throw new KeyExchangeError("X25519 failed (low-order point)", group);
        }
        // RFC 8031 §2 / RFC 7748 §6.1: an all-zero result MUST be rejected
        if (s.every((b) => b === 0)) throw new KeyExchangeError("X25519 result is all zero (low-order point)", group);
        return s;
      },
    };
  }
  throw new WeakCryptoError(`DH group ${nameOf(DhId, group)} not supported`, { group });
}
