/**
 * The agent's half of enrollment and sealing (fleet.proto, SealedSecret): its X25519 key
 * pair, which never leaves the host, and opening blobs keymgr sealed to it. This is an
 * independent implementation of the format; test/integration checks it against keymgr's.
 */
import { createDecipheriv, createHash, createPrivateKey, createPublicKey, diffieHellman, generateKeyPairSync, hkdfSync, type KeyObject } from "node:crypto";
import { existsSync, readFileSync, statSync, writeFileSync, chmodSync, mkdirSync } from "node:fs";
import { join } from "node:path";
import { FleetswanError, Secret } from "@fleetswan/common";
import { fleet } from "@fleetswan/proto";

export const AGENT_KEY_FILE = "agent-x25519.pem";

export class UnsealError extends FleetswanError {
  constructor(message: string) {
    super("SEAL_INVALID", message);
  }
}

export interface AgentKey {
  privateKey: KeyObject;
  publicRaw: Buffer;
  /** SHA-256 of the public key, hex. */
  keyId: string;
}

function publicRaw(key: KeyObject): Buffer {
  const jwk = key.export({ format: "jwk" });
  return Buffer.from(String(jwk.x), "base64url");
}

/** Load the key pair from the state dir, or create it (mode 0600) on first start. */
export function loadOrCreateAgentKey(stateDir: string): AgentKey {
  mkdirSync(stateDir, { recursive: true, mode: 0o700 });
  const file = join(stateDir, AGENT_KEY_FILE);
  let privateKey: KeyObject;
  if (existsSync(file)) {
    const mode = statSync(file).mode & 0o777;
    if (mode & 0o077) chmodSync(file, 0o600); // repair a too-open key file
    const pem = new Secret(readFileSync(file));
    privateKey = createPrivateKey({ key: pem.reveal(), format: "pem" });
    pem.wipe();
    if (privateKey.asymmetricKeyType !== "x25519") throw new FleetswanError("CONFIG_INVALID", `${file}: not an X25519 private key`);
  } else {
    // Encoded by the generation itself and loaded back: a generated KeyObject exported later
    // can deadlock node 20.20 (a GC finalizing the generation job; see ike/crypto/dh.ts).
    const pem = new Secret(generateKeyPairSync("x25519", { privateKeyEncoding: { format: "pem", type: "pkcs8" }, publicKeyEncoding: { format: "der", type: "spki" } }).privateKey);
    writeFileSync(file, pem.reveal(), { mode: 0o600, flag: "wx" });
    privateKey = createPrivateKey({ key: pem.reveal(), format: "pem" });
    pem.wipe();
  }
  const raw = publicRaw(createPublicKey(privateKey));
  return { privateKey, publicRaw: raw, keyId: createHash("sha256").update(raw).digest("hex") };
}

/** Open a sealed secret addressed to this gateway's key under the expected name. */
export function unseal(sealed: fleet.SealedSecret, key: AgentKey, gateway: string, secretRef: string): fleet.SecretPayload {
  if (sealed.gateway !== gateway || sealed.secretRef !== secretRef) {
    throw new UnsealError(`blob names ${sealed.gateway}.${sealed.secretRef}, expected ${gateway}.${secretRef}`);
  }
  if (sealed.recipientKeyId !== key.keyId) throw new UnsealError(`${gateway}.${secretRef} is sealed to another key (${sealed.recipientKeyId.slice(0, 16)})`);
  if (sealed.ephemeralPublicKey.length !== 32 || sealed.nonce.length !== 12 || sealed.ciphertext.length < 16) {
    throw new UnsealError(`${gateway}.${secretRef}: malformed blob`);
  }
  const eph = Buffer.from(sealed.ephemeralPublicKey);
  const ephKey = createPublicKey({ key: { kty: "OKP", crv: "X25519", x: eph.toString("base64url") }, format: "jwk" });
  const shared = diffieHellman({ privateKey: key.privateKey, publicKey: ephKey });
  const k = Buffer.from(hkdfSync("sha256", shared, Buffer.concat([eph, key.publicRaw]), Buffer.from(`fleetswan seal v1 ${gateway}.${secretRef}`), 32));
  const ct = Buffer.from(sealed.ciphertext);
  try {
    const d = createDecipheriv("aes-256-gcm", k, Buffer.from(sealed.nonce));
    d.setAAD(Buffer.from(`${gateway}.${secretRef}.${sealed.version}`));
    d.setAuthTag(ct.subarray(ct.length - 16));
    return fleet.SecretPayload.decode(Buffer.concat([d.update(ct.subarray(0, ct.length - 16)), d.final()]));
  } catch {
    throw new UnsealError(`${gateway}.${secretRef} v${sealed.version} does not open (wrong key or tampered)`);
  } finally {
    shared.fill(0);
    k.fill(0);
  }
}
