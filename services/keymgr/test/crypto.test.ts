import { test } from "node:test";
import assert from "node:assert/strict";
import { X509Certificate } from "node:crypto";
import { Secret } from "@fleetswan/common";
import { fleet } from "@fleetswan/proto";
import { MasterKeyring, generateX25519, keyId, parseMasterKey, sealSecret, unsealSecret, tokenHash, hexEqual } from "../src/crypto.js";
import { decodeRecord, decryptValues, encodeRecord, encryptValues, parseEnrollEntry, type SecretRecord } from "../src/store.js";
import { createCa, issueCertificate } from "../src/ca.js";
import { renderFleetAuthorization, gatewayPermissions } from "../src/nats-config.js";

const payload = (v: string, prev?: string): fleet.SecretPayload =>
  fleet.SecretPayload.fromPartial({ kind: fleet.SecretKind.SECRET_KIND_PSK, value: Buffer.from(v), previousValue: prev ? Buffer.from(prev) : Buffer.alloc(0) });

test("sealing round trip: the recipient opens what keymgr sealed", () => {
  const agent = generateX25519();
  const sealed = sealSecret(payload("a-very-strong-pre-shared-key-0001", "old-value-still-valid-000000001"), { gateway: "gw-a", secretRef: "psk.a-b", version: 3, recipientPublic: agent.publicRaw });
  assert.equal(sealed.recipientKeyId, keyId(agent.publicRaw));
  assert.equal(sealed.version, 3);
  assert.ok(!Buffer.from(sealed.ciphertext).includes(Buffer.from("a-very-strong")), "ciphertext holds no plaintext");
  // Through the wire encoding, as agents receive it.
  const wire = fleet.SealedSecret.decode(fleet.SealedSecret.encode(sealed).finish());
  const p = unsealSecret(wire, agent.privatePem, { gateway: "gw-a", secretRef: "psk.a-b" });
  assert.equal(Buffer.from(p.value).toString(), "a-very-strong-pre-shared-key-0001");
  assert.equal(Buffer.from(p.previousValue).toString(), "old-value-still-valid-000000001");
});

test("sealing: another agent's key does not open it", () => {
  const a = generateX25519();
  const b = generateX25519();
  const sealed = sealSecret(payload("secret-for-a-only-0000000000000"), { gateway: "gw-a", secretRef: "psk.x", version: 1, recipientPublic: a.publicRaw });
  // b pretends to be the recipient (same key id claim), still fails cryptographically.
  assert.throws(() => unsealSecret({ ...sealed, recipientKeyId: keyId(b.publicRaw) }, b.privatePem, { gateway: "gw-a", secretRef: "psk.x" }), { code: "SEAL_INVALID" });
  assert.throws(() => unsealSecret(sealed, b.privatePem, { gateway: "gw-a", secretRef: "psk.x" }), /not ours/);
});

test("sealing: the blob is bound to gateway, secret name and version (AAD and HKDF info)", () => {
  const a = generateX25519();
  const sealed = sealSecret(payload("bound-secret-value-000000000000"), { gateway: "gw-a", secretRef: "psk.one", version: 2, recipientPublic: a.publicRaw });
  // Relabelled blobs (copied under another name/gateway/version) fail.
  assert.throws(() => unsealSecret({ ...sealed, secretRef: "psk.two" }, a.privatePem, { gateway: "gw-a", secretRef: "psk.two" }), { code: "SEAL_INVALID" });
  assert.throws(() => unsealSecret({ ...sealed, gateway: "gw-b" }, a.privatePem, { gateway: "gw-b", secretRef: "psk.one" }), { code: "SEAL_INVALID" });
  assert.throws(() => unsealSecret({ ...sealed, version: 3 }, a.privatePem, { gateway: "gw-a", secretRef: "psk.one" }), /does not open/);
  // Asking for another name than the blob carries.
  assert.throws(() => unsealSecret(sealed, a.privatePem, { gateway: "gw-a", secretRef: "psk.other" }), /expected/);
  // Tampered ciphertext.
  const ct = Buffer.from(sealed.ciphertext);
  ct[0] = ct[0]! ^ 1;
  assert.throws(() => unsealSecret({ ...sealed, ciphertext: ct }, a.privatePem, { gateway: "gw-a", secretRef: "psk.one" }), /does not open/);
  // Errors never carry the value.
  try {
    unsealSecret({ ...sealed, version: 9 }, a.privatePem, { gateway: "gw-a", secretRef: "psk.one" });
  } catch (e) {
    assert.ok(!String((e as Error).message).includes("bound-secret"));
  }
});

test("master key: records at rest hold no plaintext and bind name and version", () => {
  const mk = parseMasterKey(Buffer.alloc(32, 7).toString("base64"));
  assert.match(mk.id, /^mk-[0-9a-f]{16}$/);
  const ring = new MasterKeyring(mk);
  const value = "plaintext-psk-that-must-not-appear-at-rest";
  const rec: SecretRecord = { format: 1, name: "psk.a-b", kind: "psk", version: 1, createdAt: new Date().toISOString(), gateways: ["gw-a"], enc: encryptValues(ring, "psk.a-b", 1, { value: new Secret(value) }) };
  const bytes = Buffer.from(encodeRecord(rec));
  assert.ok(!bytes.includes(Buffer.from(value)), "KV record contains the plaintext");
  assert.ok(!bytes.includes(Buffer.from(Buffer.from(value).toString("base64"))), "KV record contains the base64 plaintext");
  assert.equal(decryptValues(ring, decodeRecord(bytes)).value.reveal().toString(), value);
  // Swapping the blob to another record or version fails.
  assert.throws(() => decryptValues(ring, { ...rec, name: "psk.c-d" }), { code: "SEAL_INVALID" });
  assert.throws(() => decryptValues(ring, { ...rec, version: 2 }), { code: "SEAL_INVALID" });
  // Another master key cannot read it; with the old key as "previous" it can (rotation).
  const mk2 = parseMasterKey("ab".repeat(32));
  assert.throws(() => decryptValues(new MasterKeyring(mk2), rec), /not loaded/);
  assert.equal(decryptValues(new MasterKeyring(mk2, [mk]), rec).value.reveal().toString(), value);
  assert.throws(() => parseMasterKey("short"), { code: "MASTER_KEY_INVALID" });
});

test("enrollment token hashes: bare hex or JSON, constant-time compare", () => {
  const h = tokenHash(new Secret("tok-123"));
  assert.deepEqual(parseEnrollEntry(Buffer.from(h)), { hash: h });
  assert.equal(parseEnrollEntry(Buffer.from(JSON.stringify({ token_sha256: h, expires_at: "2030-01-01T00:00:00Z" })))?.expiresAt?.getUTCFullYear(), 2030);
  assert.equal(parseEnrollEntry(Buffer.from("nonsense")), undefined);
  assert.ok(hexEqual(h, h));
  assert.ok(!hexEqual(h, tokenHash(new Secret("tok-124"))));
});

test("fleet CA issues gateway certificates with SANs for every key type", async () => {
  const ca = await createCa("test CA");
  const caX = new X509Certificate(ca.certificatePem);
  assert.ok(caX.ca);
  for (const keyType of ["ecdsa-p256", "ed25519", "rsa-3072"] as const) {
    const c = await issueCertificate(ca, { gateway: "gw-a", dnsNames: ["gw-a.example.net"], ipAddresses: ["192.0.2.1", "2001:db8::1"], keyType, validDays: 30 });
    const x = new X509Certificate(c.certificatePem);
    assert.ok(x.verify(caX.publicKey), `${keyType} certificate verifies against the CA`);
    assert.match(x.subject, /CN=gw-a/);
    assert.match(x.subjectAltName ?? "", /DNS:gw-a.example.net/);
    assert.match(x.subjectAltName ?? "", /IP Address:192.0.2.1/);
    assert.ok(x.checkPrivateKey((await import("node:crypto")).createPrivateKey(c.privateKeyPem.reveal())));
    assert.ok(Math.abs(c.notAfter.getTime() - Date.now() - 30 * 86_400_000) < 120_000);
    assert.equal(String(c.privateKeyPem), "[REDACTED]");
  }
  await assert.rejects(issueCertificate(ca, { gateway: "gw-a", dnsNames: [], ipAddresses: ["not-an-ip"], keyType: "ecdsa-p256", validDays: 1 }), /not an IP/);
});

test("NATS authorization: gateway users are confined to their own names", () => {
  const p = gatewayPermissions("gw-a");
  const all = [...(p.publish.allow ?? []), ...(p.subscribe.allow ?? [])];
  for (const s of all) assert.ok(!/gw-b|^>$|^\$JS\.API\.>$|^_INBOX\.>$/.test(s), s);
  assert.ok(all.includes("$JS.API.CONSUMER.CREATE.KV_fleet-views.*.$KV.fleet-views.gw-a"));
  assert.throws(() => gatewayPermissions("GW A"));
  const conf = renderFleetAuthorization({ gateways: [{ name: "gw-a", password: "x" }, { name: "gw-b", nkey: "UABC" }], keymgr: { user: "keymgr", password: "k" } });
  assert.match(conf, /authorization \{/);
  assert.match(conf, /nkey: "UABC"/);
  assert.match(conf, /allow_responses: true/);
});
