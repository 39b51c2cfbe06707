/**
 * IKE_AUTH authentication (RFC 7296 §2.15, RFC 7427):
 *  - the octets each side signs or MACs,
 *  - PSK: AUTH = prf(prf(Shared Secret, "Key Pad for IKEv2"), <SignedOctets>),
 *  - Digital Signature (Auth Method 14, RFC 7427 §3) with Ed25519 (RFC 8420), ECDSA
 *    P-256/SHA-256, P-384/SHA-384, RSASSA-PSS/SHA-256, and verification of those plus
 *    RSA PKCS#1 v1.5 with SHA-256/384/512 (what strongSwan sends for RSA keys by default),
 *  - the SIGNATURE_HASH_ALGORITHMS notify data (RFC 7427 §4).
 */
import { createHash, sign, timingSafeEqual, verify, constants, type KeyObject } from "node:crypto";
import { FleetswanError } from "@fleetswan/common";
import { HashAlgorithm, NotifyType } from "../wire/constants.js";
import { prf } from "./prf.js";

/** Authentication failed (bad AUTH data, unknown or refused signature scheme). Answer AUTHENTICATION_FAILED. */
export class AuthError extends FleetswanError {
  readonly notifyType = NotifyType.AUTHENTICATION_FAILED;
  constructor(message: string, details: Record<string, unknown> = {}) {
    super("IKE_AUTH_FAILED", message, details);
  }
}

/**
 * RFC 7296 §2.15:
 *   InitiatorSignedOctets = RealMessage1 | NonceRData | MACedIDForI
 *   MACedIDForI = prf(SK_pi, RestOfInitIDPayload)
 *   ResponderSignedOctets = RealMessage2 | NonceIData | MACedIDForR
 *   MACedIDForR = prf(SK_pr, RestOfRespIDPayload)
 * `realMessage` is our (or the peer's) whole IKE_SA_INIT message as sent, `peerNonce` the
 * other side's nonce data, `skP` SK_pi (initiator octets) or SK_pr (responder octets),
 * `idBody` the ID payload without its generic header (idPayloadBody()).
 */
export function signedOctets(prfId: number, realMessage: Buffer, peerNonce: Buffer, skP: Buffer, idBody: Buffer): Buffer {
  return Buffer.concat([realMessage, peerNonce, prf(prfId, skP, idBody)]);
}

/** RFC 7296 §2.15: the key pad for PSK authentication. */
export const KEY_PAD = Buffer.from("Key Pad for IKEv2", "ascii");

/**
 * prf(Shared Secret, "Key Pad for IKEv2") per PSK buffer and PRF, computed once: it is as
 * secret as the PSK and lives exactly as long (weakly keyed by the PSK's Buffer, which a
 * Secret keeps for its life).
 */
const padCache = new WeakMap<Buffer, Map<number, Buffer>>();
function keyPad(prfId: number, psk: Buffer): Buffer {
  let m = padCache.get(psk);
  if (!m) padCache.set(psk, (m = new Map()));
  let pad = m.get(prfId);
  if (!pad) m.set(prfId, (pad = prf(prfId, psk, KEY_PAD)));
  return pad;
}

/** AUTH = prf( prf(Shared Secret, "Key Pad for IKEv2"), <SignedOctets>) (RFC 7296 §2.15). */
export function pskAuthData(prfId: number, psk: Buffer, octets: Buffer): Buffer {
  return prf(prfId, keyPad(prfId, psk), octets);
}

/** Constant-time check of a received PSK AUTH value. */
export function verifyPskAuth(prfId: number, psk: Buffer, octets: Buffer, received: Buffer): boolean {
  const want = pskAuthData(prfId, psk, octets);
  return want.length === received.length && timingSafeEqual(want, received);
}

/** Signature schemes for Auth Method 14. */
export const SignatureScheme = {
  ED25519: "ed25519",
  ECDSA_SHA256: "ecdsa-sha256",
  ECDSA_SHA384: "ecdsa-sha384",
  ECDSA_SHA512: "ecdsa-sha512",
  RSA_PSS_SHA256: "rsa-pss-sha256",
  RSA_PKCS1_SHA256: "rsa-pkcs1-sha256",
  RSA_PKCS1_SHA384: "rsa-pkcs1-sha384",
  RSA_PKCS1_SHA512: "rsa-pkcs1-sha512",
} as const;

/** A value of SignatureScheme. */
export type SignatureSchemeName = (typeof SignatureScheme)[keyof typeof SignatureScheme];

/**
 * DER AlgorithmIdentifier blobs (RFC 7427 Appendix A, RFC 8420 §2 for Ed25519). These
 * exact octets follow the one-octet "ASN.1 Length" in the AUTH data.
 */
export const SIGNATURE_ALGORITHM_IDENTIFIERS: Readonly<Record<SignatureSchemeName, Buffer>> = {
  // SEQUENCE { OID 1.3.101.112 (id-Ed25519) }
  [SignatureScheme.ED25519]: Buffer.from("300506032b6570", "hex"),
  // SEQUENCE { OID 1.2.840.10045.4.3.2 (ecdsa-with-SHA256) }
  [SignatureScheme.ECDSA_SHA256]: Buffer.from("300a06082a8648ce3d040302", "hex"),
  // SEQUENCE { OID 1.2.840.10045.4.3.3 (ecdsa-with-SHA384) }
  [SignatureScheme.ECDSA_SHA384]: Buffer.from("300a06082a8648ce3d040303", "hex"),
  // SEQUENCE { OID 1.2.840.10045.4.3.4 (ecdsa-with-SHA512) }
  [SignatureScheme.ECDSA_SHA512]: Buffer.from("300a06082a8648ce3d040304", "hex"),
  // SEQUENCE { OID 1.2.840.113549.1.1.10 (id-RSASSA-PSS), RSASSA-PSS-params {
  //   [0] sha256 (NULL params), [1] mgf1(sha256), [2] saltLength 32 } }
  [SignatureScheme.RSA_PSS_SHA256]: Buffer.from(
    "3041" + "06092a864886f70d01010a" + "3034" +
      "a00f300d06096086480165030402010500" +
      "a11c301a06092a864886f70d010108300d06096086480165030402010500" +
      "a203020120",
    "hex",
  ),
  // SEQUENCE { OID 1.2.840.113549.1.1.11 (sha256WithRSAEncryption), NULL }
  [SignatureScheme.RSA_PKCS1_SHA256]: Buffer.from("300d06092a864886f70d01010b0500", "hex"),
  [SignatureScheme.RSA_PKCS1_SHA384]: Buffer.from("300d06092a864886f70d01010c0500", "hex"),
  [SignatureScheme.RSA_PKCS1_SHA512]: Buffer.from("300d06092a864886f70d01010d0500", "hex"),
};

/** RFC 7427 §4 hash algorithm each scheme needs the peer to support. */
export const SCHEME_HASH: Readonly<Record<SignatureSchemeName, number>> = {
  [SignatureScheme.ED25519]: HashAlgorithm.IDENTITY,
  [SignatureScheme.ECDSA_SHA256]: HashAlgorithm.SHA2_256,
  [SignatureScheme.ECDSA_SHA384]: HashAlgorithm.SHA2_384,
  [SignatureScheme.ECDSA_SHA512]: HashAlgorithm.SHA2_512,
  [SignatureScheme.RSA_PSS_SHA256]: HashAlgorithm.SHA2_256,
  [SignatureScheme.RSA_PKCS1_SHA256]: HashAlgorithm.SHA2_256,
  [SignatureScheme.RSA_PKCS1_SHA384]: HashAlgorithm.SHA2_384,
  [SignatureScheme.RSA_PKCS1_SHA512]: HashAlgorithm.SHA2_512,
};

/** Key type a scheme needs (KeyObject.asymmetricKeyType). */
function keyTypeOk(scheme: SignatureSchemeName, key: KeyObject): boolean {
  const kt = key.asymmetricKeyType;
  if (scheme === SignatureScheme.ED25519) return kt === "ed25519";
  if (scheme.startsWith("ecdsa")) return kt === "ec";
  return kt === "rsa" || (scheme === SignatureScheme.RSA_PSS_SHA256 && kt === "rsa-pss");
}

function hashOf(scheme: SignatureSchemeName): string | null {
  if (scheme === SignatureScheme.ED25519) return null;
  return scheme.endsWith("sha256") ? "sha256" : scheme.endsWith("sha384") ? "sha384" : "sha512";
}

function pssOptions(scheme: SignatureSchemeName): { padding?: number; saltLength?: number } {
  return scheme === SignatureScheme.RSA_PSS_SHA256 ? { padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: 32 } : {};
}

/**
 * The default scheme for a private/public key: Ed25519; ECDSA with the curve's hash
 * (P-256/SHA-256, P-384/SHA-384, P-521/SHA-512); RSA-PSS with SHA-256 for RSA.
 */
export function defaultSchemeFor(key: KeyObject): SignatureSchemeName {
  switch (key.asymmetricKeyType) {
    case "ed25519": return SignatureScheme.ED25519;
    case "ec": {
      const c = key.asymmetricKeyDetails?.namedCurve;
      return c === "secp384r1" ? SignatureScheme.ECDSA_SHA384 : c === "secp521r1" ? SignatureScheme.ECDSA_SHA512 : SignatureScheme.ECDSA_SHA256;
    }
    case "rsa":
    case "rsa-pss": return SignatureScheme.RSA_PSS_SHA256;
    default: throw new AuthError(`no signature scheme for ${key.asymmetricKeyType} keys`, { keyType: key.asymmetricKeyType });
  }
}

/**
 * Authentication Data for Auth Method 14 (RFC 7427 §3):
 *   | ASN.1 Length (1 octet) | AlgorithmIdentifier ASN.1 object | Signature Value |
 * ECDSA signatures are DER ECDSA-Sig-Value (as the ecdsa-with-SHA* identifiers imply).
 */
export function signAuthData(scheme: SignatureSchemeName, privateKey: KeyObject, octets: Buffer): Buffer {
  if (!keyTypeOk(scheme, privateKey)) throw new AuthError(`key type ${privateKey.asymmetricKeyType} cannot sign with ${scheme}`, { scheme });
  const algId = SIGNATURE_ALGORITHM_IDENTIFIERS[scheme];
  const sig = sign(hashOf(scheme), octets, { key: privateKey, dsaEncoding: "der", ...pssOptions(scheme) });
  return Buffer.concat([Buffer.from([algId.length]), algId, sig]);
}

/** Parse method-14 AUTH data: which scheme, and the signature bytes. */
export function parseSignatureAuthData(data: Buffer): { scheme: SignatureSchemeName; signature: Buffer } {
  if (data.length < 1) throw new AuthError("empty signature AUTH data");
  const n = data[0]!;
  if (data.length < 1 + n) throw new AuthError(`AlgorithmIdentifier length ${n} exceeds AUTH data (${data.length - 1})`);
  const algId = data.subarray(1, 1 + n);
  for (const [scheme, blob] of Object.entries(SIGNATURE_ALGORITHM_IDENTIFIERS) as [SignatureSchemeName, Buffer][]) {
    if (blob.equals(algId)) return { scheme, signature: Buffer.from(data.subarray(1 + n)) };
  }
  throw new AuthError(`unsupported signature AlgorithmIdentifier ${algId.toString("hex")}`, { algorithmIdentifier: algId.toString("hex") });
}

/**
 * Verify method-14 AUTH data against the peer's public key (from its certificate).
 * `allowed` limits acceptable schemes (default: all in SignatureScheme).
 * @returns the scheme used. @throws AuthError.
 */
export function verifySignatureAuthData(data: Buffer, publicKey: KeyObject, octets: Buffer, allowed?: readonly SignatureSchemeName[]): SignatureSchemeName {
  const { scheme, signature } = parseSignatureAuthData(data);
  if (allowed && !allowed.includes(scheme)) throw new AuthError(`signature scheme ${scheme} not allowed`, { scheme });
  if (!keyTypeOk(scheme, publicKey)) throw new AuthError(`signature scheme ${scheme} does not match ${publicKey.asymmetricKeyType} key`, { scheme });
  let ok = false;
  try {
    ok = verify(hashOf(scheme), octets, { key: publicKey, dsaEncoding: "der", ...pssOptions(scheme) }, signature);
  } catch {
    ok = false;
  }
  if (!ok) throw new AuthError(`${scheme} signature does not verify`, { scheme });
  return scheme;
}

/** SIGNATURE_HASH_ALGORITHMS notify data (RFC 7427 §4): a list of 2-octet hash IDs. */
export function encodeSignatureHashAlgorithms(ids: readonly number[]): Buffer {
  const b = Buffer.alloc(2 * ids.length);
  ids.forEach((id, i) => b.writeUInt16BE(id, 2 * i));
  return b;
}

/** Parse SIGNATURE_HASH_ALGORITHMS notify data; unknown IDs are kept. @throws AuthError on odd length. */
export function decodeSignatureHashAlgorithms(data: Buffer): number[] {
  if (data.length % 2 !== 0) throw new AuthError(`SIGNATURE_HASH_ALGORITHMS data of odd length ${data.length}`);
  const out: number[] = [];
  for (let i = 0; i < data.length; i += 2) out.push(data.readUInt16BE(i));
  return out;
}

/** What fleetswan announces: SHA2-256/384/512 and Identity (for Ed25519). */
export const LOCAL_SIGNATURE_HASHES: readonly number[] = [HashAlgorithm.SHA2_256, HashAlgorithm.SHA2_384, HashAlgorithm.SHA2_512, HashAlgorithm.IDENTITY];

/** SHA-1 hash of a SubjectPublicKeyInfo, as CERTREQ carries for CAs (RFC 7296 §3.7). */
export function certReqHash(spkiDer: Buffer): Buffer {
  return createHash("sha1").update(spkiDer).digest();
}
