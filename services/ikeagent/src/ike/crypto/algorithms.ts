/**
 * Key, IV and ICV sizes of the algorithms fleetswan implements, and the policy error for
 * everything else. Sources: RFC 4868 (HMAC-SHA2), RFC 5282 / RFC 4106 (AES-GCM),
 * RFC 7634 (ChaCha20-Poly1305), RFC 3602 (AES-CBC).
 */
import { WeakCryptoError } from "@fleetswan/common";
import { EncrId, IntegId, nameOf, PrfId } from "../wire/constants.js";

/** node:crypto hash name of a PRF. */
export function prfHash(prf: number): "sha256" | "sha384" | "sha512" {
  switch (prf) {
    case PrfId.HMAC_SHA2_256: return "sha256";
    case PrfId.HMAC_SHA2_384: return "sha384";
    case PrfId.HMAC_SHA2_512: return "sha512";
    default: throw new WeakCryptoError(`PRF ${nameOf(PrfId, prf)} not supported`, { prf });
  }
}

/** PRF output length = preferred key length for HMAC-SHA2 PRFs (RFC 4868 §2.1.2), bytes. */
export function prfLength(prf: number): number {
  return { sha256: 32, sha384: 48, sha512: 64 }[prfHash(prf)];
}

/** Integrity algorithm parameters (RFC 4868 §2.1). */
export interface IntegParams {
  hash: "sha256" | "sha384" | "sha512";
  /** Key length in bytes (= hash output length). */
  keyLength: number;
  /** Truncated ICV length in bytes (half the hash output). */
  icvLength: number;
}

/** Parameters of an INTEG transform; 0 (NONE) yields undefined. */
export function integParams(integ: number): IntegParams | undefined {
  switch (integ) {
    case IntegId.NONE: return undefined;
    case IntegId.HMAC_SHA2_256_128: return { hash: "sha256", keyLength: 32, icvLength: 16 };
    case IntegId.HMAC_SHA2_384_192: return { hash: "sha384", keyLength: 48, icvLength: 24 };
    case IntegId.HMAC_SHA2_512_256: return { hash: "sha512", keyLength: 64, icvLength: 32 };
    default: throw new WeakCryptoError(`integrity algorithm ${nameOf(IntegId, integ)} not supported`, { integ });
  }
}

/** Encryption algorithm parameters for IKE SK payloads and ESP. */
export interface EncrParams {
  aead: boolean;
  /** Cipher key length in bytes (without salt). */
  keyLength: number;
  /** Salt (implicit nonce part) taken from the key material, bytes: 4 for GCM (RFC 4106 §8.1, RFC 5282 §7.1) and ChaCha20-Poly1305 (RFC 7634 §2, §4). */
  saltLength: number;
  /** Length of the IV carried in each message. */
  ivLength: number;
  /** ICV (tag) length of an AEAD cipher; 0 otherwise. */
  icvLength: number;
  /** Cipher block size for padding (1 for AEAD in IKE: no alignment needed). */
  blockSize: number;
}

/** Parameters of an ENCR transform with a key length in bits (KEY_LENGTH attribute). */
export function encrParams(encr: number, keyBits: number): EncrParams {
  switch (encr) {
    case EncrId.AES_GCM_16:
      if (keyBits !== 128 && keyBits !== 256) break;
      return { aead: true, keyLength: keyBits / 8, saltLength: 4, ivLength: 8, icvLength: 16, blockSize: 1 };
    case EncrId.CHACHA20_POLY1305:
      if (keyBits !== 256 && keyBits !== 0) break;
      return { aead: true, keyLength: 32, saltLength: 4, ivLength: 8, icvLength: 16, blockSize: 1 };
    case EncrId.AES_CBC:
      if (keyBits !== 128 && keyBits !== 256) break;
      return { aead: false, keyLength: keyBits / 8, saltLength: 0, ivLength: 16, icvLength: 0, blockSize: 16 };
  }
  throw new WeakCryptoError(`encryption algorithm ${nameOf(EncrId, encr)} with ${keyBits}-bit key not supported`, { encr, keyBits });
}

/** Length of the key material one direction of an SA needs for encryption (key + salt). */
export function encrKeyMaterialLength(encr: number, keyBits: number): number {
  const p = encrParams(encr, keyBits);
  return p.keyLength + p.saltLength;
}
