/**
 * SK payload protection (RFC 7296 §3.14) for the ciphers we allow:
 *  - AES-GCM-16 (RFC 5282): SK_e = key | 4-octet salt; nonce = salt | 8-octet explicit IV;
 *    AAD = IKE header + SK generic header (everything before the IV, RFC 5282 §5.1);
 *    16-octet ICV.
 *  - ChaCha20-Poly1305 (RFC 7634 §3/§4): same layout, 32-octet key + 4-octet salt.
 *  - AES-CBC (RFC 3602) + HMAC-SHA2 truncated (RFC 4868): random 16-octet IV; ICV =
 *    HMAC(SK_a, IKE header .. end of ciphertext) truncated (encrypt-then-MAC, §3.14).
 * Padding (§3.14): payloads | Padding | Pad Length, padded to the cipher block size
 * (AEAD: no padding needed; we send none). Receivers accept any padding length.
 */
import { createCipheriv, createDecipheriv, createHmac, timingSafeEqual } from "node:crypto";
import { EncrId } from "../wire/constants.js";
import { IkeIntegrityError } from "../wire/errors.js";
import type { SkCipher } from "../wire/message.js";
import { encrParams, integParams } from "./algorithms.js";
import { randomPublic } from "./random.js";
import type { IkeSaKeys } from "./prf.js";

/** Algorithms protecting SK payloads (from the chosen IKE proposal). */
export interface SkAlgorithms {
  encr: number;
  encrKeyBits: number;
  /** 0 for AEAD. */
  integ: number;
}

/** Options for createSkCipher (tests only: fixed IVs for published vectors). */
export interface SkCipherOptions {
  /** IV source; random by default. Must return ivLength octets. */
  iv?: (length: number) => Buffer;
}

function padPlaintext(plain: Buffer, blockSize: number): Buffer {
  // total = payloads + padding + 1 (Pad Length) must be a multiple of the block size
  const padLen = (blockSize - ((plain.length + 1) % blockSize)) % blockSize;
  const out = Buffer.alloc(plain.length + padLen + 1);
  plain.copy(out);
  out[out.length - 1] = padLen; // padding octets are zero: "MAY contain any value"
  return out;
}

function unpad(padded: Buffer): Buffer {
  if (padded.length < 1) throw new IkeIntegrityError("decrypted SK payload is empty");
  const padLen = padded[padded.length - 1]!;
  if (padLen + 1 > padded.length) throw new IkeIntegrityError(`Pad Length ${padLen} exceeds decrypted data (${padded.length})`);
  return padded.subarray(0, padded.length - 1 - padLen);
}

/**
 * An SkCipher for one direction: encrypt with (SK_ei, SK_ai) as initiator, decrypt with
 * (SK_er, SK_ar), and the other way round for the responder. `encKey` includes the salt
 * for AEAD ciphers. Keys are copied; never log them.
 */
export function createSkCipher(alg: SkAlgorithms, encKey: Buffer, integKey: Buffer, opts: SkCipherOptions = {}): SkCipher {
  const ep = encrParams(alg.encr, alg.encrKeyBits);
  const newIv = opts.iv ?? ((n: number) => randomPublic(n));
  if (encKey.length !== ep.keyLength + ep.saltLength) throw new RangeError(`SK_e must be ${ep.keyLength + ep.saltLength} octets`);
  // One copy of its own (not from the shared Buffer pool: it lives as long as the SA).
  const own = Buffer.allocUnsafeSlow(encKey.length);
  encKey.copy(own);
  const key = own.subarray(0, ep.keyLength);
  const salt = own.subarray(ep.keyLength);
  if (ep.aead) {
    if (alg.integ !== 0) throw new RangeError("AEAD cipher with an integrity algorithm");
    const name = alg.encr === EncrId.CHACHA20_POLY1305 ? "chacha20-poly1305" : ep.keyLength === 16 ? "aes-128-gcm" : "aes-256-gcm";
    return {
      sealedLength: (n) => ep.ivLength + n + 1 + ep.icvLength,
      seal(aad, plaintext) {
        const iv = newIv(ep.ivLength);
        if (iv.length !== ep.ivLength) throw new RangeError("bad IV length");
        const c = createCipheriv(name as "aes-256-gcm", key, Buffer.concat([salt, iv]), { authTagLength: ep.icvLength });
        c.setAAD(aad);
        const ct = Buffer.concat([c.update(padPlaintext(plaintext, ep.blockSize)), c.final()]);
        return Buffer.concat([iv, ct, c.getAuthTag()]);
      },
      open(aad, body) {
        if (body.length < ep.ivLength + 1 + ep.icvLength) throw new IkeIntegrityError(`SK payload of ${body.length} octets too short for IV, Pad Length and ICV`);
        const iv = body.subarray(0, ep.ivLength);
        const ct = body.subarray(ep.ivLength, body.length - ep.icvLength);
        const tag = body.subarray(body.length - ep.icvLength);
        const d = createDecipheriv(name as "aes-256-gcm", key, Buffer.concat([salt, iv]), { authTagLength: ep.icvLength });
        d.setAAD(aad);
        d.setAuthTag(tag);
        let padded: Buffer;
        try {
          padded = Buffer.concat([d.update(ct), d.final()]);
        } catch {
          throw new IkeIntegrityError("SK payload ICV does not verify");
        }
        return Buffer.from(unpad(padded));
      },
    };
  }
  const ip = integParams(alg.integ);
  if (!ip) throw new RangeError("non-AEAD cipher without an integrity algorithm");
  if (integKey.length !== ip.keyLength) throw new RangeError(`SK_a must be ${ip.keyLength} octets`);
  const ikey = Buffer.allocUnsafeSlow(integKey.length);
  integKey.copy(ikey);
  const name = ep.keyLength === 16 ? "aes-128-cbc" : "aes-256-cbc";
  const mac = (aad: Buffer, ivct: Buffer) => createHmac(ip.hash, ikey).update(aad).update(ivct).digest().subarray(0, ip.icvLength);
  return {
    sealedLength: (n) => {
      const padded = Math.ceil((n + 1) / ep.blockSize) * ep.blockSize;
      return ep.ivLength + padded + ip.icvLength;
    },
    seal(aad, plaintext) {
      const iv = newIv(ep.ivLength);
      if (iv.length !== ep.ivLength) throw new RangeError("bad IV length");
      const c = createCipheriv(name, key, iv);
      c.setAutoPadding(false);
      const ivct = Buffer.concat([iv, c.update(padPlaintext(plaintext, ep.blockSize)), c.final()]);
      return Buffer.concat([ivct, mac(aad, ivct)]);
    },
    open(aad, body) {
      const ctLen = body.length - ep.ivLength - ip.icvLength;
      if (ctLen < ep.blockSize || ctLen % ep.blockSize !== 0) throw new IkeIntegrityError(`SK payload ciphertext of ${ctLen} octets is not a positive multiple of ${ep.blockSize}`);
      const ivct = body.subarray(0, body.length - ip.icvLength);
      const icv = body.subarray(body.length - ip.icvLength);
      // §3.14: verify the ICV before decrypting (encrypt-then-MAC)
      if (!timingSafeEqual(mac(aad, ivct), icv)) throw new IkeIntegrityError("SK payload ICV does not verify");
      const d = createDecipheriv(name, key, ivct.subarray(0, ep.ivLength));
      d.setAutoPadding(false);
      return Buffer.from(unpad(Buffer.concat([d.update(ivct.subarray(ep.ivLength)), d.final()])));
    },
  };
}

/** The two SkCiphers of an IKE SA for one side: `out` protects what we send, `in` opens what we receive. */
export function ikeSaCiphers(alg: SkAlgorithms, keys: IkeSaKeys, weAreInitiator: boolean, opts: SkCipherOptions = {}): { out: SkCipher; in: SkCipher } {
  const i = createSkCipher(alg, keys.skEi, keys.skAi, opts);
  const r = createSkCipher(alg, keys.skEr, keys.skAr, opts);
  return weAreInitiator ? { out: i, in: r } : { out: r, in: i };
}
