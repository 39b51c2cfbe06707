/**
 * keymgr's repair pass and DeleteSecret against a real nats-server: a record written
 * without its blobs (keymgr crashed between the two writes) is sealed at the next start
 * and by the periodic pass; DeleteSecret removes the record and every blob.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { connect, type KV } from "nats";
import { Secret, createLogger } from "@fleetswan/common";
import { fleet } from "@fleetswan/proto";
import { KeyManager, KeymgrClient, MasterKeyring, generateX25519, keyId, parseMasterKey, unsealSecret } from "@fleetswan/keymgr";
import { encodeRecord, encryptValues, type SecretRecord } from "@fleetswan/keymgr/store";
import { startNats, waitFor } from "../harness/index.js";

const log = createLogger("itest", { level: process.env.FLEETSWAN_TEST_LOG ?? "silent" });

async function blob(kv: KV, key: string): Promise<fleet.SealedSecret | undefined> {
  const e = await kv.get(key);
  return e && e.operation === "PUT" ? fleet.SealedSecret.decode(e.value) : undefined;
}

test("keymgr repair pass and DeleteSecret", { timeout: 60_000 }, async (t) => {
  const nats = await startNats();
  t.after(() => nats.stop());
  const nc = await connect({ servers: nats.url });
  t.after(() => nc.close());
  const keyring = new MasterKeyring(parseMasterKey(randomBytes(32)));
  // A first keymgr creates the buckets, then "crashes".
  const km0 = new KeyManager({ nc, keyring, log, repairIntervalMs: 0 });
  await km0.start();
  await km0.stop();

  const js = nc.jetstream();
  const keys = await js.views.kv("fleet-keys");
  const agents = await js.views.kv("fleet-agents");
  const secrets = await js.views.kv("fleet-secrets");
  const agentKeys = new Map<string, ReturnType<typeof generateX25519>>();
  for (const gw of ["gw-a", "gw-b"]) {
    const k = generateX25519();
    agentKeys.set(gw, k);
    await agents.put(gw, Buffer.from(JSON.stringify({ gateway: gw, publicKey: k.publicRaw.toString("base64"), keyId: keyId(k.publicRaw), enrolledAt: new Date().toISOString() })));
  }
  const record = (version: number, value: Buffer): SecretRecord => ({
    format: 1, name: "psk.a-b", kind: "psk", version, createdAt: new Date().toISOString(), gateways: ["gw-a", "gw-b"],
    enc: encryptValues(keyring, "psk.a-b", version, { value: new Secret(value) }),
  });
  const open = (gw: string, b: fleet.SealedSecret) => Buffer.from(unsealSecret(b, agentKeys.get(gw)!.privatePem, { gateway: gw, secretRef: "psk.a-b" }).value);

  await t.test("a record written without its blobs is sealed when keymgr starts", async () => {
    const v1 = randomBytes(32);
    await keys.create("psk.a-b", encodeRecord(record(1, v1))); // the crash: no sealing
    assert.equal(await blob(secrets, "gw-a.psk.a-b"), undefined);
    const km = new KeyManager({ nc, keyring, log, repairIntervalMs: 0 });
    await km.start();
    t.after(() => km.stop());
    for (const gw of ["gw-a", "gw-b"]) {
      const b = await blob(secrets, `${gw}.psk.a-b`);
      assert.ok(b, `blob for ${gw} after start`);
      assert.equal(b.version, 1);
      assert.deepEqual(open(gw, b), v1);
    }
    await km.stop();
  });

  await t.test("a rotated record left unsealed is caught by the periodic pass", async () => {
    const km = new KeyManager({ nc, keyring, log, repairIntervalMs: 200 });
    await km.start();
    t.after(() => km.stop());
    const v2 = randomBytes(32);
    const cur = await keys.get("psk.a-b");
    await keys.update("psk.a-b", encodeRecord(record(2, v2)), cur!.revision);
    const b = await waitFor("gw-b's blob at version 2", async () => {
      const x = await blob(secrets, "gw-b.psk.a-b");
      return x && x.version === 2 ? x : undefined;
    }, { timeoutMs: 10_000 });
    assert.deepEqual(open("gw-b", b), v2);
    // Nothing stale: a pass reseals nothing.
    await waitFor("gw-a's blob at version 2", async () => (await blob(secrets, "gw-a.psk.a-b"))?.version === 2);
    assert.equal((await km.repairSealed()).resealed, 0);
    await km.stop();
  });

  await t.test("DeleteSecret removes the record and every sealed blob; deleting again is a no-op", async () => {
    const km = new KeyManager({ nc, keyring, log, repairIntervalMs: 0 });
    await km.start();
    t.after(() => km.stop());
    const client = new KeymgrClient(nc);
    const r = await client.deleteSecret("psk.a-b");
    assert.equal(r.deleted, true);
    assert.equal(r.blobsDeleted, 2);
    assert.equal((await keys.get("psk.a-b"))?.operation ?? "gone", "DEL");
    assert.equal(await blob(secrets, "gw-a.psk.a-b"), undefined);
    assert.equal(await blob(secrets, "gw-b.psk.a-b"), undefined);
    assert.ok(!(await client.listSecrets()).secrets.some((s) => s.name === "psk.a-b"));
    const again = await client.deleteSecret("psk.a-b");
    assert.equal(again.deleted, false);
    await assert.rejects(client.deleteSecret("ca.fleet"), /UNSUPPORTED|cannot be deleted/);
    await km.stop();
  });
});
