/**
 * keymgr's cryptography: sealing secrets to an agent's X25519 key (the format in
 * proto/fleetswan/fleet/v1/fleet.proto, SealedSecret) and encrypting records at rest
 * with the master key. Everything is node:crypto; no key material is ever logged or
 * placed in an error message.
 */
import {
  createCipheriv,
  createDecipheriv,
  createHash,
  createPrivateKey,
  createPublicKey,
  diffieHellman,
  generateKeyPairSync,
  hkdfSync,
  randomBytes,
  type KeyObject,
} from "node:crypto";
import { FleetswanError, Secret } from "@fleetswan/common";
import { fleet } from "@fleetswan/proto";

/** A sealed blob or a record that does not decrypt, or is not for us. */
export class SealError extends FleetswanError {
  constructor(message: string, details: Record<string, unknown> = {}) {
    super("SEAL_INVALID", message, details);
  }
}

// ------------------------------------------------------------------ X25519 ----

/** Raw 32-byte X25519 public key of a KeyObject. */
export function x25519PublicRaw(key: KeyObject): Buffer {
  const jwk = key.export({ format: "jwk" });
  if (jwk.crv !== "X25519" || typeof jwk.x !== "string") throw new SealError("not an X25519 key");
  return Buffer.from(jwk.x, "base64url");
}

/** KeyObject for a raw 32-byte X25519 public key. */
export function x25519PublicFromRaw(raw: Uint8Array): KeyObject {
  if (raw.length !== 32) throw new SealError(`X25519 public key must be 32 bytes, got ${raw.length}`);
  return createPublicKey({ key: { kty: "OKP", crv: "X25519", x: Buffer.from(raw).toString("base64url") }, format: "jwk" });
}

/** A fresh X25519 key pair (private key as PKCS#8 PEM in a Secret). */
export function generateX25519(): { privatePem: Secret; publicRaw: Buffer } {
  // Both halves encoded by the generation itself: no KeyObject of a generation job is
  // exported afterwards (see generateEphemeral).
  const { privateKey, publicKey } = generateKeyPairSync("x25519", {
    privateKeyEncoding: { format: "pem", type: "pkcs8" },
    publicKeyEncoding: { format: "der", type: "spki" },
  });
  return { privatePem: new Secret(privateKey), publicRaw: spkiRaw(publicKey) };
}

/** The 32-octet u of an X25519 SubjectPublicKeyInfo (RFC 8410: 12-octet prefix | u). */
function spkiRaw(der: Buffer): Buffer {
  return Buffer.from(der.subarray(der.length - 32));
}

/**
 * An ephemeral X25519 pair, the public value DER-encoded by the generation itself. Exporting
 * a freshly generated KeyObject as JWK can deadlock node 20.20: a GC during the export (which
 * holds the key's mutex while allocating) finalizes the generation job that shares the key
 * and takes the same mutex (found in the ikeagent's crypto workers, see ike/crypto/dh.ts).
 */
function generateEphemeral(): { privateKey: KeyObject; publicRaw: Buffer } {
  // Only the public key encoded: node returns it as a Buffer and the private key as a KeyObject
  // (@types/node has no overload for that mix).
  const kp = generateKeyPairSync("x25519", { publicKeyEncoding: { type: "spki", format: "der" } } as never) as unknown as { publicKey: Buffer; privateKey: KeyObject };
  return { privateKey: kp.privateKey, publicRaw: spkiRaw(kp.publicKey) };
}

/** SHA-256 of a public key, hex: SealedSecret.recipient_key_id, EnrollResponse.key_id. */
export function keyId(publicRaw: Uint8Array): string {
  return createHash("sha256").update(publicRaw).digest("hex");
}

// ------------------------------------------------------------------ sealing ----

const SEAL_INFO = "fleetswan seal v1 ";

function sealAad(gateway: string, secretRef: string, version: number): Buffer {
  return Buffer.from(`${gateway}.${secretRef}.${version}`, "utf8");
}

function sealKey(shared: Buffer, ephemeralPublic: Buffer, recipientPublic: Buffer, gateway: string, secretRef: string): Buffer {
  const salt = Buffer.concat([ephemeralPublic, recipientPublic]);
  return Buffer.from(hkdfSync("sha256", shared, salt, Buffer.from(SEAL_INFO + gateway + "." + secretRef, "utf8"), 32));
}

/**
 * Seal a SecretPayload to one agent: ephemeral X25519 with the recipient's key,
 * HKDF-SHA256(shared, salt = eph_pub || rcpt_pub, info = "fleetswan seal v1 <gw>.<ref>"),
 * AES-256-GCM, AAD = "<gw>.<ref>.<version>" (fleet.proto, SealedSecret).
 */
export function sealSecret(
  payload: fleet.SecretPayload,
  to: { gateway: string; secretRef: string; version: number; recipientPublic: Uint8Array },
  now = new Date(),
): fleet.SealedSecret {
  const recipientPublic = Buffer.from(to.recipientPublic);
  const recipient = x25519PublicFromRaw(recipientPublic);
  const eph = generateEphemeral();
  const ephPublic = eph.publicRaw;
  const shared = diffieHellman({ privateKey: eph.privateKey, publicKey: recipient });
  const key = sealKey(shared, ephPublic, recipientPublic, to.gateway, to.secretRef);
  const nonce = randomBytes(12);
  const cipher = createCipheriv("aes-256-gcm", key, nonce);
  cipher.setAAD(sealAad(to.gateway, to.secretRef, to.version));
  const plain = Buffer.from(fleet.SecretPayload.encode(payload).finish());
  const ciphertext = Buffer.concat([cipher.update(plain), cipher.final(), cipher.getAuthTag()]);
  plain.fill(0);
  shared.fill(0);
  key.fill(0);
  return {
    gateway: to.gateway,
    secretRef: to.secretRef,
    version: to.version,
    recipientKeyId: keyId(recipientPublic),
    ephemeralPublicKey: ephPublic,
    nonce,
    ciphertext,
    sealedAt: now,
  };
}

/**
 * Open a SealedSecret with the agent's private key. `expect` binds the blob to the
 * gateway and secret name the caller asked for (a blob copied to another key fails).
 */
export function unsealSecret(
  sealed: fleet.SealedSecret,
  privateKeyPem: Secret,
  expect: { gateway: string; secretRef: string },
): fleet.SecretPayload {
  if (sealed.gateway !== expect.gateway || sealed.secretRef !== expect.secretRef) {
    throw new SealError(`sealed secret is for ${sealed.gateway}.${sealed.secretRef}, expected ${expect.gateway}.${expect.secretRef}`);
  }
  const priv = createPrivateKey({ key: privateKeyPem.reveal(), format: "pem" });
  const ownPublic = x25519PublicRaw(createPublicKey(priv));
  if (keyId(ownPublic) !== sealed.recipientKeyId) {
    throw new SealError(`sealed secret ${sealed.gateway}.${sealed.secretRef} is for key ${sealed.recipientKeyId.slice(0, 16)}, not ours`);
  }
  if (sealed.nonce.length !== 12 || sealed.ciphertext.length < 16) throw new SealError("sealed secret is malformed");
  const ephPublic = Buffer.from(sealed.ephemeralPublicKey);
  const shared = diffieHellman({ privateKey: priv, publicKey: x25519PublicFromRaw(ephPublic) });
  const key = sealKey(shared, ephPublic, ownPublic, expect.gateway, expect.secretRef);
  const ct = Buffer.from(sealed.ciphertext);
  try {
    const decipher = createDecipheriv("aes-256-gcm", key, Buffer.from(sealed.nonce));
    decipher.setAAD(sealAad(expect.gateway, expect.secretRef, sealed.version));
    decipher.setAuthTag(ct.subarray(ct.length - 16));
    const plain = Buffer.concat([decipher.update(ct.subarray(0, ct.length - 16)), decipher.final()]);
    return fleet.SecretPayload.decode(plain);
  } catch (err) {
    throw new SealError(`sealed secret ${sealed.gateway}.${sealed.secretRef} v${sealed.version} does not open (wrong key or tampered)`);
  } finally {
    shared.fill(0);
    key.fill(0);
  }
}

// --------------------------------------------------------------- master key ----

/** One master key: 32 bytes and its id (first 16 hex digits of SHA-256 of the key). */
export interface MasterKey {
  id: string;
  key: Secret;
}

/** Parse a master key: 32 raw bytes, or 64 hex digits, or base64 of 32 bytes (trailing newline ignored). */
export function parseMasterKey(material: Buffer | string): MasterKey {
  const buf = typeof material === "string" ? Buffer.from(material, "utf8") : material;
  let key: Buffer | undefined;
  const text = buf.toString("utf8").trim();
  if (/^[0-9a-fA-F]{64}$/.test(text)) key = Buffer.from(text, "hex");
  else if (/^[A-Za-z0-9+/_-]{43}=?$/.test(text)) key = Buffer.from(text, "base64");
  else if (buf.length === 32) key = Buffer.from(buf);
  if (!key || key.length !== 32) {
    throw new FleetswanError("MASTER_KEY_INVALID", "master key must be 32 bytes (raw, 64 hex digits or base64)");
  }
  return { id: "mk-" + createHash("sha256").update(key).digest("hex").slice(0, 16), key: new Secret(key) };
}

/** A generated master key as base64 (for `fleetswan keymgr --generate-master-key`). */
export function newMasterKeyText(): string {
  return randomBytes(32).toString("base64") + "\n";
}

/** The encrypted part of a record at rest. */
export interface EncryptedBlob {
  alg: "A256GCM";
  /** Master key id. */
  kid: string;
  nonce: string;
  /** Ciphertext || tag, base64. */
  ct: string;
}

/**
 * The current master key (encrypts) and older ones (decrypt only, during a master-key
 * rotation). AAD binds each blob to its record name and version so blobs cannot be
 * swapped between records.
 */
export class MasterKeyring {
  constructor(readonly current: MasterKey, readonly previous: MasterKey[] = []) {}

  encrypt(plain: Buffer, aad: string): EncryptedBlob {
    const nonce = randomBytes(12);
    const cipher = createCipheriv("aes-256-gcm", this.current.key.reveal(), nonce);
    cipher.setAAD(Buffer.from(`fleetswan keymgr v1 ${this.current.id} ${aad}`, "utf8"));
    const ct = Buffer.concat([cipher.update(plain), cipher.final(), cipher.getAuthTag()]);
    return { alg: "A256GCM", kid: this.current.id, nonce: nonce.toString("base64"), ct: ct.toString("base64") };
  }

  decrypt(blob: EncryptedBlob, aad: string): Buffer {
    const mk = [this.current, ...this.previous].find((k) => k.id === blob.kid);
    if (!mk) throw new SealError(`record is encrypted with master key ${blob.kid}, which is not loaded`, { kid: blob.kid });
    const ct = Buffer.from(blob.ct, "base64");
    try {
      const d = createDecipheriv("aes-256-gcm", mk.key.reveal(), Buffer.from(blob.nonce, "base64"));
      d.setAAD(Buffer.from(`fleetswan keymgr v1 ${mk.id} ${aad}`, "utf8"));
      d.setAuthTag(ct.subarray(ct.length - 16));
      return Buffer.concat([d.update(ct.subarray(0, ct.length - 16)), d.final()]);
    } catch {
      throw new SealError(`record "${aad}" does not decrypt with master key ${mk.id} (tampered or wrong key)`);
    }
  }
}

/** SHA-256 of an enrollment token, hex (what the controller stores in fleet-enroll). */
export function tokenHash(token: Secret): string {
  return createHash("sha256").update(token.reveal()).digest("hex");
}

/** Constant-time comparison of two hex digests. */
export function hexEqual(a: string, b: string): boolean {
  const x = Buffer.from(a, "utf8");
  const y = Buffer.from(b, "utf8");
  if (x.length !== y.length) return false;
  let d = 0;
  for (let i = 0; i < x.length; i++) d |= x[i]! ^ y[i]!;
  return d === 0;
}
