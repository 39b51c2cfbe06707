/**
 * prf, prf+ and the key derivations of RFC 7296: SKEYSEED and the seven IKE SA keys
 * (§2.14), SKEYSEED of a rekeyed IKE SA (§2.18), and CHILD SA KEYMAT (§2.17).
 * Keys are plain Buffers: callers wrap them in Secret (@fleetswan/common) when they keep
 * them, and never log them.
 */
import { createHmac, hkdfSync } from "node:crypto";
import { prfHash, prfLength, integParams, encrKeyMaterialLength } from "./algorithms.js";

/** prf(K, S) (RFC 7296 §2.13): HMAC with the PRF's hash (RFC 4868). */
export function prf(prfId: number, key: Buffer, data: Buffer): Buffer {
  return createHmac(prfHash(prfId), key).update(data).digest();
}

/**
 * prf+ (RFC 7296 §2.13):
 *   prf+ (K,S) = T1 | T2 | T3 | T4 | ...
 *   T1 = prf (K, S | 0x01)
 *   T2 = prf (K, T1 | S | 0x02)
 *   ...
 * "The prf+ function is not defined beyond 255 times the size of the prf function output."
 */
export function prfPlus(prfId: number, key: Buffer, seed: Buffer, length: number): Buffer {
  const hLen = prfLength(prfId);
  const n = Math.ceil(length / hLen);
  if (n > 255) throw new RangeError(`prf+ output of ${length} bytes exceeds 255 iterations`);
  const out: Buffer[] = [];
  let prev = Buffer.alloc(0);
  for (let i = 1; i <= n; i++) {
    prev = createHmac(prfHash(prfId), key).update(prev).update(seed).update(Buffer.from([i])).digest();
    out.push(prev);
  }
  return Buffer.concat(out).subarray(0, length);
}

/**
 * Cuts keys from prf+ output into one buffer of their own (not a slice of Node's shared
 * 8 KiB Buffer pool: keys live as long as the SA, and one small slice kept alive pins the
 * whole pool slab; with thousands of SAs that was most of an SA's memory).
 */
function keyCutter(km: Buffer): (n: number) => Buffer {
  const store = Buffer.allocUnsafeSlow(km.length);
  km.copy(store);
  let o = 0;
  return (n) => store.subarray(o, (o += n));
}

/** The algorithms key derivation needs (from the chosen IKE proposal). */
export interface IkeKeyAlgorithms {
  prf: number;
  encr: number;
  /** Encryption key length in bits (KEY_LENGTH attribute; 256 for ChaCha20-Poly1305). */
  encrKeyBits: number;
  /** INTEG id, 0 for AEAD. */
  integ: number;
}

/** The seven secrets of an IKE SA (RFC 7296 §2.14). SK_e* include the 4-octet salt for AEAD. */
export interface IkeSaKeys {
  skD: Buffer;
  skAi: Buffer;
  skAr: Buffer;
  skEi: Buffer;
  skEr: Buffer;
  skPi: Buffer;
  skPr: Buffer;
}

/** SKEYSEED = prf(Ni | Nr, g^ir) (RFC 7296 §2.14). */
export function skeyseed(prfId: number, ni: Buffer, nr: Buffer, sharedSecret: Buffer): Buffer {
  return prf(prfId, Buffer.concat([ni, nr]), sharedSecret);
}

/** SKEYSEED = prf(SK_d (old), g^ir (new) | Ni | Nr) for a rekeyed IKE SA (RFC 7296 §2.18); prfId is the old SA's PRF. */
export function rekeySkeyseed(oldPrfId: number, oldSkD: Buffer, sharedSecret: Buffer, ni: Buffer, nr: Buffer): Buffer {
  return prf(oldPrfId, oldSkD, Buffer.concat([sharedSecret, ni, nr]));
}

/**
 * {SK_d | SK_ai | SK_ar | SK_ei | SK_er | SK_pi | SK_pr} = prf+ (SKEYSEED, Ni | Nr | SPIi | SPIr)
 * (RFC 7296 §2.14). SK_d, SK_pi, SK_pr have the PRF's preferred key length; SK_a* the
 * integrity key length (none for AEAD); SK_e* the cipher key plus salt (RFC 5282 §7.1).
 */
export function deriveIkeKeys(alg: IkeKeyAlgorithms, seed: Buffer, ni: Buffer, nr: Buffer, spiI: Buffer, spiR: Buffer): IkeSaKeys {
  const pl = prfLength(alg.prf);
  const al = integParams(alg.integ)?.keyLength ?? 0;
  const el = encrKeyMaterialLength(alg.encr, alg.encrKeyBits);
  const km = prfPlus(alg.prf, seed, Buffer.concat([ni, nr, spiI, spiR]), 3 * pl + 2 * al + 2 * el);
  const take = keyCutter(km);
  const skD = take(pl);
  const skAi = take(al);
  const skAr = take(al);
  const skEi = take(el);
  const skEr = take(el);
  const skPi = take(pl);
  const skPr = take(pl);
  km.fill(0);
  return { skD, skAi, skAr, skEi, skEr, skPi, skPr };
}

/**
 * SKEYSEED and the seven IKE SA keys of a new IKE SA in one native call (RFC 7296 §2.14,
 * the same octets as skeyseed() + deriveIkeKeys()). For the HMAC PRFs (the only ones
 * fleetswan implements, RFC 4868) the two steps are exactly HKDF (RFC 5869):
 *   SKEYSEED = prf(Ni | Nr, g^ir)                 = HKDF-Extract(salt = Ni | Nr, IKM = g^ir)
 *   prf+ (SKEYSEED, Ni | Nr | SPIi | SPIr)        = HKDF-Expand(PRK = SKEYSEED, info = Ni | Nr | SPIi | SPIr, L)
 * (prf+ §2.13: T1 = prf(K, S | 0x01), T2 = prf(K, T1 | S | 0x02) ... is HKDF-Expand's
 * T(i) = HMAC(PRK, T(i-1) | info | i)). SKEYSEED never exists outside OpenSSL.
 */
export function deriveInitialIkeKeys(alg: IkeKeyAlgorithms, sharedSecret: Buffer, ni: Buffer, nr: Buffer, spiI: Buffer, spiR: Buffer): IkeSaKeys {
  const pl = prfLength(alg.prf);
  const al = integParams(alg.integ)?.keyLength ?? 0;
  const el = encrKeyMaterialLength(alg.encr, alg.encrKeyBits);
  const nonces = Buffer.concat([ni, nr]);
  // A buffer of its own (not the shared pool), as keyCutter makes: the keys live as long as the SA.
  const store = Buffer.from(hkdfSync(prfHash(alg.prf), sharedSecret, nonces, Buffer.concat([nonces, spiI, spiR]), 3 * pl + 2 * al + 2 * el));
  let o = 0;
  const take = (n: number): Buffer => store.subarray(o, (o += n));
  const skD = take(pl);
  const skAi = take(al);
  const skAr = take(al);
  const skEi = take(el);
  const skEr = take(el);
  const skPi = take(pl);
  const skPr = take(pl);
  return { skD, skAi, skAr, skEi, skEr, skPi, skPr };
}

/** Algorithms of a CHILD SA (ESP) for KEYMAT. */
export interface ChildKeyAlgorithms {
  encr: number;
  encrKeyBits: number;
  /** 0 for AEAD. */
  integ: number;
}

/** ESP keys of one CHILD SA: one set per direction. `encrKey` includes the salt for AEAD (RFC 4106 §8.1, RFC 7634 §2). */
export interface ChildSaKeys {
  /** Initiator -> responder. */
  encrI: Buffer;
  integI: Buffer;
  /** Responder -> initiator. */
  encrR: Buffer;
  integR: Buffer;
}

/**
 * KEYMAT = prf+(SK_d, Ni | Nr), or prf+(SK_d, g^ir (new) | Ni | Nr) with PFS (RFC 7296 §2.17).
 * "All keys for SAs carrying data from the initiator to the responder are taken before
 * SAs going from the responder to the initiator"; within a direction the encryption key
 * comes first, then the integrity key.
 */
export function deriveChildKeys(prfId: number, skD: Buffer, alg: ChildKeyAlgorithms, ni: Buffer, nr: Buffer, pfsSharedSecret?: Buffer): ChildSaKeys {
  const el = encrKeyMaterialLength(alg.encr, alg.encrKeyBits);
  const al = integParams(alg.integ)?.keyLength ?? 0;
  const seed = pfsSharedSecret ? Buffer.concat([pfsSharedSecret, ni, nr]) : Buffer.concat([ni, nr]);
  const km = prfPlus(prfId, skD, seed, 2 * (el + al));
  const take = keyCutter(km);
  const encrI = take(el);
  const integI = take(al);
  const encrR = take(el);
  const integR = take(al);
  km.fill(0);
  return { encrI, integI, encrR, integR };
}
