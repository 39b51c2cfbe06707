/**
 * Secret records at rest in the KV bucket "fleet-keys" (key = secret name). Metadata
 * is in clear (name, kind, version, dates, gateways, public certificate); the values
 * are in `enc`, AES-256-GCM under the master key with AAD "<name>.<version>".
 */
import { Secret } from "@fleetswan/common";
import type { EncryptedBlob, MasterKeyring } from "./crypto.js";
import type { LeafKeyType } from "./ca.js";

export type SecretKind = "psk" | "private-key" | "ca";

export interface SecretRecord {
  /** Record format version. */
  format: 1;
  name: string;
  kind: SecretKind;
  /** Increases by one at each rotation (SealedSecret.version). */
  version: number;
  /** When the current value was created (ISO). */
  createdAt: string;
  /** Gateways the secret is sealed to. */
  gateways: string[];
  /** End of the rotation window: the previous value is valid until then (ISO). */
  previousValidUntil?: string;
  /** Public certificate (leaf for private-key, self-signed for ca), PEM. */
  certificatePem?: string;
  notAfter?: string;
  /** How the certificate was requested (for renewal). */
  certSpec?: { dnsNames: string[]; ipAddresses: string[]; keyType: LeafKeyType; validDays: number };
  enc: EncryptedBlob;
}

/** The decrypted part of a record. */
export interface SecretValues {
  value: Secret;
  previous?: Secret;
  /** For private keys: the chain, leaf first (PEM). */
  chainPem?: string;
}

const aad = (name: string, version: number) => `${name}.${version}`;

export function encryptValues(ring: MasterKeyring, name: string, version: number, v: SecretValues): EncryptedBlob {
  const plain = Buffer.from(
    JSON.stringify({ v: v.value.reveal().toString("base64"), p: v.previous?.reveal().toString("base64"), c: v.chainPem }),
    "utf8",
  );
  try {
    return ring.encrypt(plain, aad(name, version));
  } finally {
    plain.fill(0);
  }
}

export function decryptValues(ring: MasterKeyring, rec: SecretRecord): SecretValues {
  const plain = ring.decrypt(rec.enc, aad(rec.name, rec.version));
  try {
    const o = JSON.parse(plain.toString("utf8")) as { v: string; p?: string; c?: string };
    const out: SecretValues = { value: new Secret(Buffer.from(o.v, "base64")) };
    if (o.p) out.previous = new Secret(Buffer.from(o.p, "base64"));
    if (o.c) out.chainPem = o.c;
    return out;
  } finally {
    plain.fill(0);
  }
}

export function encodeRecord(rec: SecretRecord): Uint8Array {
  return Buffer.from(JSON.stringify(rec), "utf8");
}

export function decodeRecord(data: Uint8Array): SecretRecord {
  return JSON.parse(Buffer.from(data).toString("utf8")) as SecretRecord;
}

/** Registered agent (bucket "fleet-agents", key "<gateway>"). */
export interface AgentRecord {
  gateway: string;
  /** X25519 public key, base64. */
  publicKey: string;
  keyId: string;
  enrolledAt: string;
}

/**
 * Pending enrollment (bucket "fleet-enroll", key "<gateway>"), written by the controller.
 * Accepted forms: JSON {"token_sha256": "<hex>", "expires_at": "<ISO>"} or the bare hex
 * SHA-256 of the token (docs/keymgr.md, Enrollment).
 */
export function parseEnrollEntry(data: Uint8Array): { hash: string; expiresAt?: Date } | undefined {
  const text = Buffer.from(data).toString("utf8").trim();
  if (/^[0-9a-f]{64}$/i.test(text)) return { hash: text.toLowerCase() };
  try {
    const o = JSON.parse(text) as Record<string, unknown>;
    const hash = o.token_sha256 ?? o.tokenSha256 ?? o.sha256 ?? o.token_hash ?? o.tokenHash;
    if (typeof hash !== "string" || !/^[0-9a-f]{64}$/i.test(hash)) return undefined;
    const exp = o.expires_at ?? o.expiresAt;
    const out: { hash: string; expiresAt?: Date } = { hash: hash.toLowerCase() };
    if (typeof exp === "string" && exp) out.expiresAt = new Date(exp);
    return out;
  } catch {
    return undefined;
  }
}
