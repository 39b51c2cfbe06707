/**
 * NATS security (docs/security.md) against a real nats-server 2.9: per-gateway users
 * confined by renderFleetAuthorization(), the real agent code working under them, and
 * gateway A failing to read B's view, sealed secrets or commands by every route we
 * know of. Plus TLS between services and NATS with certificates from the fleet CA code.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { connect, nkeys, nkeyAuthenticator, nuid, type NatsConnection } from "nats";
import { Secret, createLogger } from "@fleetswan/common";
import { fleet } from "@fleetswan/proto";
import { KeyManager, KeymgrClient, MasterKeyring, parseMasterKey, tokenHash, renderFleetAuthorization, createCa, issueCertificate, connectNats } from "@fleetswan/keymgr";
import { FakeEngine, runFleetClient } from "@fleetswan/ikeagent/fleet/index";
import { startNats, makeTempDir, waitFor, sleep } from "../harness/index.js";

const log = createLogger("itest", { level: process.env.FLEETSWAN_TEST_LOG ?? "silent" });
const enc = new TextEncoder();

function viewBytes(gw: string, rev: bigint, extra = false): Uint8Array {
  const conns = [{ name: `${gw}-conn`, secretRef: `psk.${gw}`, startAction: fleet.StartAction.START_ACTION_START }];
  if (extra) conns.push({ name: `${gw}-extra`, secretRef: `psk.${gw}`, startAction: fleet.StartAction.START_ACTION_START });
  return fleet.GatewayView.encode(fleet.GatewayView.fromPartial({ gateway: gw, revision: rev, connections: conns })).finish();
}

/** Resolves true if the operation was refused (error, timeout or permission violation). */
async function refused(p: Promise<unknown>): Promise<boolean> {
  try {
    const r = await p;
    if (r && typeof r === "object" && "data" in r) {
      const text = Buffer.from((r as { data: Uint8Array }).data).toString();
      // A JetStream API error reply is a refusal too.
      return /"error"/.test(text);
    }
    return false;
  } catch {
    return true;
  }
}

test("per-gateway NATS users: confinement and a working agent", { timeout: 120_000 }, async (t) => {
  const pw = () => randomBytes(12).toString("hex");
  const creds = { admin: pw(), keymgr: pw(), gwA: pw(), gwB: pw() };
  const seedC = nkeys.createUser();
  const conf = renderFleetAuthorization({
    admin: { user: "admin", password: creds.admin },
    keymgr: { user: "keymgr", password: creds.keymgr },
    gateways: [
      { name: "gw-a", password: creds.gwA },
      { name: "gw-b", password: creds.gwB },
      { name: "gw-c", nkey: seedC.getPublicKey() },
    ],
  });
  const cleanup: Array<() => Promise<unknown>> = [];
  t.after(async () => {
    for (const f of cleanup.reverse()) await f().catch(() => undefined);
  });
  const nats = await startNats({ config: conf });
  cleanup.push(() => nats.stop());
  const admin = await connect({ servers: nats.url, user: "admin", pass: creds.admin });
  cleanup.push(() => admin.close());
  const js = admin.jetstream();
  const views = await js.views.kv("fleet-views");
  const kmNc = await connect({ servers: nats.url, user: "keymgr", pass: creds.keymgr, inboxPrefix: "_INBOX.keymgr" });
  const km = new KeyManager({ nc: kmNc, keyring: new MasterKeyring(parseMasterKey(randomBytes(32))), log });
  await km.start();
  cleanup.push(async () => {
    await km.stop();
    await kmNc.close();
  });
  const enroll = await js.views.kv("fleet-enroll");
  const client = new KeymgrClient(admin);

  // Real agents under their confined users.
  const engines: Record<string, FakeEngine> = {};
  const stops: Array<() => Promise<void>> = [];
  cleanup.push(async () => {
    for (const s of stops) await s();
  });
  for (const [gw, credentials] of [
    ["gw-a", { user: "gw-a", pass: creds.gwA }],
    ["gw-b", { user: "gw-b", pass: creds.gwB }],
    ["gw-c", { nkeySeed: new TextDecoder().decode(seedC.getSeed()) }],
  ] as const) {
    const token = new Secret(randomBytes(16).toString("hex"));
    await enroll.put(gw, tokenHash(token));
    await views.put(gw, viewBytes(gw, 1n));
    engines[gw] = new FakeEngine();
    const c = await runFleetClient({ natsUrl: nats.url, gateway: gw, stateDir: makeTempDir(`fs-perm-${gw}`), credentials, enrollToken: token, engine: engines[gw]!, log, heartbeatMs: 1000 });
    stops.push(() => c.stop());
    await c.enrolled;
    await client.generateSecret(`psk.${gw}`, [gw]);
  }

  await t.test("each agent, confined to its own subjects, enrolls and receives its view and secret", async () => {
    for (const gw of ["gw-a", "gw-b", "gw-c"]) {
      await waitFor(`${gw} applied its view with its secret`, () => engines[gw]!.applies.find((a) => a.secrets.has(`psk.${gw}`) && a.config.connections[0]?.name === `${gw}-conn`));
    }
    await views.put("gw-a", viewBytes("gw-a", 2n, true));
    const ap = await waitFor("gw-a follows updates", () => engines["gw-a"]!.applies.find((a) => a.config.revision === 2n));
    assert.deepEqual(ap.result.added, ["gw-a-extra"]);
  });

  await t.test("gateway A cannot read B's view, sealed secrets or commands", async () => {
    const errors: string[] = [];
    const a: NatsConnection = await connect({ servers: nats.url, user: "gw-a", pass: creds.gwA, inboxPrefix: "_INBOX.gw-a" });
    t.after(() => a.close());
    void (async () => {
      for await (const s of a.status()) if (s.type === "error") errors.push(String(s.data));
    })();
    const got: string[] = [];
    const trySub = (subject: string) => a.subscribe(subject, { callback: (err, m) => !err && got.push(m.subject) });
    // Plain subscriptions to B's subjects, KV subjects and other inboxes.
    for (const s of ["fleet.v1.gw.gw-b.cmd", "fleet.v1.gw.gw-b.>", "fleet.v1.gw.>", "$KV.fleet-views.gw-b", "$KV.fleet-secrets.>", "_INBOX.>", "_INBOX.gw-b.>", ">"]) trySub(s);
    await a.flush();
    await sleep(300);
    // Traffic B would see.
    await admin.request("fleet.v1.gw.gw-b.cmd", fleet.AgentCommand.encode({ verb: "list-sas", connection: "", timeoutMs: 0 }).finish(), { timeout: 2000 });
    await views.put("gw-b", viewBytes("gw-b", 7n));
    await client.rotateSecret("psk.gw-b", 0);
    await sleep(500);
    assert.deepEqual(got, [], "A received B's traffic");

    const stream = "KV_fleet-views";
    const cfg = (filter: string, name: string) =>
      enc.encode(JSON.stringify({ stream_name: stream, config: { name, deliver_subject: `_INBOX.gw-a.${nuid.next()}`, filter_subject: filter, deliver_policy: "last_per_subject", ack_policy: "none" } }));
    const req = (subject: string, body: Uint8Array = new Uint8Array()) => a.request(subject, body, { timeout: 1500 });
    // Filtered create naming B's key: not granted.
    let n = nuid.next();
    assert.ok(await refused(req(`$JS.API.CONSUMER.CREATE.${stream}.${n}.$KV.fleet-views.gw-b`, cfg("$KV.fleet-views.gw-b", n))), "filtered consumer on B's view");
    // Subject names A's key, body asks for B's: the server refuses the mismatch.
    n = nuid.next();
    assert.ok(await refused(req(`$JS.API.CONSUMER.CREATE.${stream}.${n}.$KV.fleet-views.gw-a`, cfg("$KV.fleet-views.gw-b", n))), "filter mismatch");
    n = nuid.next();
    assert.ok(await refused(req(`$JS.API.CONSUMER.CREATE.${stream}.${n}.$KV.fleet-views.gw-a`, cfg("$KV.fleet-views.>", n))), "wildcard body filter");
    // Unfiltered and durable create, stream reads, direct gets of B's keys.
    assert.ok(await refused(req(`$JS.API.CONSUMER.CREATE.${stream}`, cfg("$KV.fleet-views.gw-b", ""))), "unfiltered create");
    assert.ok(await refused(req(`$JS.API.CONSUMER.DURABLE.CREATE.${stream}.x`, cfg("$KV.fleet-views.gw-b", "x"))), "durable create");
    assert.ok(await refused(req(`$JS.API.STREAM.MSG.GET.${stream}`, enc.encode(JSON.stringify({ last_by_subj: "$KV.fleet-views.gw-b" })))), "stream msg get");
    assert.ok(await refused(req(`$JS.API.DIRECT.GET.${stream}.$KV.fleet-views.gw-b`)), "direct get B view");
    assert.ok(await refused(req(`$JS.API.DIRECT.GET.KV_fleet-secrets.$KV.fleet-secrets.gw-b.psk.gw-b`)), "direct get B secret");
    assert.ok(await refused(req(`$JS.API.DIRECT.GET.${stream}`, enc.encode(JSON.stringify({ seq: 1 })))), "direct get by sequence");
    assert.ok(await refused(req(`$JS.API.STREAM.INFO.KV_fleet-keys`)), "fleet-keys stream");
    // nats.js KV watch/get of B's key.
    assert.ok(await refused((async () => (await (await a.jetstream().views.kv("fleet-views", { bindOnly: true })).get("gw-b")))()), "kv.get B");
    // Publishing as B (status spoofing) or commands to B.
    assert.ok(await refused(req("fleet.v1.gw.gw-b.cmd", fleet.AgentCommand.encode({ verb: "down", connection: "x", timeoutMs: 0 }).finish())), "command to B");
    // What A may do works: direct get of its own view.
    const own = await req(`$JS.API.DIRECT.GET.${stream}.$KV.fleet-views.gw-a`);
    assert.equal(fleet.GatewayView.decode(own.data).gateway, "gw-a");
    await sleep(200);
    assert.deepEqual(got, []);
    assert.ok(errors.some((e) => /permissions/i.test(e)), "server reported permission violations");
  });

  await t.test("A's credentials do not log in as B, nor does a bad password", async () => {
    await assert.rejects(connect({ servers: nats.url, user: "gw-b", pass: creds.gwA, maxReconnectAttempts: 0 }));
    await assert.rejects(connect({ servers: nats.url, authenticator: nkeyAuthenticator(nkeys.createUser().getSeed()), maxReconnectAttempts: 0 }));
  });
});

test("TLS between services and NATS (certificates from the fleet CA)", { timeout: 60_000 }, async (t) => {
  const dir = makeTempDir("fs-tls");
  const ca = await createCa("fleetswan test CA");
  const server = await issueCertificate(ca, { gateway: "nats", dnsNames: ["localhost"], ipAddresses: ["127.0.0.1"], keyType: "ecdsa-p256", validDays: 2 });
  const files = { ca: join(dir, "ca.pem"), cert: join(dir, "server.pem"), key: join(dir, "server.key") };
  writeFileSync(files.ca, ca.certificatePem);
  writeFileSync(files.cert, server.certificatePem);
  writeFileSync(files.key, server.privateKeyPem.reveal(), { mode: 0o600 });
  const cleanup: Array<() => Promise<unknown>> = [];
  t.after(async () => {
    for (const f of cleanup.reverse()) await f().catch(() => undefined);
  });
  const nats = await startNats({ tls: { certFile: files.cert, keyFile: files.key } });
  cleanup.push(() => nats.stop());
  const url = `tls://127.0.0.1:${nats.port}`;
  // Without trusting the CA the connection fails; with it, it works.
  await assert.rejects(connect({ servers: url, maxReconnectAttempts: 0 }));
  const kmNc = await connectNats({ servers: url, name: "keymgr", tls: { caFile: files.ca } });
  const km = new KeyManager({ nc: kmNc, keyring: new MasterKeyring(parseMasterKey(randomBytes(32))), log });
  await km.start();
  cleanup.push(async () => {
    await km.stop();
    await kmNc.close();
  });
  const views = await kmNc.jetstream().views.kv("fleet-views");
  const token = new Secret("tls-token-0123456789");
  await (await kmNc.jetstream().views.kv("fleet-enroll")).put("gw-t", tokenHash(token));
  await views.put("gw-t", viewBytes("gw-t", 3n));
  const engine = new FakeEngine();
  const c = await runFleetClient({ natsUrl: url, gateway: "gw-t", stateDir: makeTempDir("fs-tls-agent"), credentials: { tls: { caFile: files.ca } }, enrollToken: token, engine, log, heartbeatMs: 1000 });
  cleanup.push(() => c.stop());
  await c.enrolled;
  await new KeymgrClient(kmNc).generateSecret("psk.gw-t", ["gw-t"]);
  await waitFor("agent over TLS got view and secret", () => engine.applies.find((a) => a.config.revision === 3n && a.secrets.has("psk.gw-t")));
  assert.equal(c.nc()?.info?.tls_required, true);
});
