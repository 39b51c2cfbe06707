/**
 * keymgr and the agent's fleet client against a real nats-server: enrollment (one-time
 * token, race-safe), sealing only to the target agent, encryption at rest, rotation end
 * to end through the agent, and restarts of NATS, keymgr and the agent that change
 * nothing at the engine.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { statSync } from "node:fs";
import { join } from "node:path";
import { connect, type NatsConnection } from "nats";
import { Secret, createLogger } from "@fleetswan/common";
import { fleet } from "@fleetswan/proto";
import { KeyManager, KeymgrClient, MasterKeyring, parseMasterKey, tokenHash } from "@fleetswan/keymgr";
import { FakeEngine, runFleetClient, loadOrCreateAgentKey, unseal, type FleetClient } from "@fleetswan/ikeagent/fleet/index";
import { startNats, makeTempDir, waitFor, sleep } from "../harness/index.js";

const log = createLogger("itest", { level: process.env.FLEETSWAN_TEST_LOG ?? "silent" });

function view(gw: string, revision: bigint, conns: Array<Partial<fleet.ConnectionDef>>): Uint8Array {
  return fleet.GatewayView.encode(
    fleet.GatewayView.fromPartial({
      gateway: gw,
      revision,
      renderedAt: new Date(),
      self: { addresses: ["192.0.2.1"], id: gw, subnets: ["10.1.0.0/16"], backend: "xfrm" },
      connections: conns.map((c) => fleet.ConnectionDef.fromPartial({ local: { auth: fleet.AuthMethod.AUTH_METHOD_PSK }, startAction: fleet.StartAction.START_ACTION_START, ...c })),
    }),
  ).finish();
}

/** The secret the engine last saw for a ref. */
function lastSecret(e: FakeEngine, ref: string) {
  for (let i = e.applies.length - 1; i >= 0; i--) {
    const s = e.applies[i]!.secrets.get(ref);
    if (s) return s;
  }
  return undefined;
}

test("keymgr + agents: enrollment, sealing, rotation, restarts", { timeout: 120_000 }, async (t) => {
  // Teardown in reverse order of setup: agents, keymgr and clients before the server they
  // talk to (node:test runs after-hooks in registration order).
  const cleanups: Array<() => unknown> = [];
  t.after(async () => {
    for (const fn of cleanups.reverse()) await fn();
  });
  const nats = await startNats();
  cleanups.push(() => nats.stop());
  const admin: NatsConnection = await connect({ servers: nats.url });
  cleanups.push(() => admin.close());
  const js = admin.jetstream();
  const views = await js.views.kv("fleet-views");
  const keyring = new MasterKeyring(parseMasterKey(randomBytes(32)));
  const kmNc = await connect({ servers: nats.url, maxReconnectAttempts: -1, reconnectTimeWait: 200 });
  let km = new KeyManager({ nc: kmNc, keyring, log, maintenanceIntervalMs: 200 });
  await km.start();
  cleanups.push(async () => {
    await km.stop();
    await kmNc.close();
  });
  const enroll = await js.views.kv("fleet-enroll");
  const client = new KeymgrClient(admin);

  await t.test("enrollment token is single use, also when two agents race", async () => {
    const token = new Secret("race-token-" + randomBytes(8).toString("hex"));
    await enroll.put("gw-race", tokenHash(token));
    const req = (pub: Buffer) =>
      admin
        .request("fleet.v1.enroll", fleet.EnrollRequest.encode({ gateway: "gw-race", token: token.reveal().toString(), publicKey: pub }).finish(), { timeout: 5000 })
        .then((m) => fleet.EnrollResponse.decode(m.data));
    const results = await Promise.all([req(randomBytes(32)), req(randomBytes(32)), req(randomBytes(32))]);
    assert.equal(results.filter((r) => r.ok).length, 1, JSON.stringify(results.map((r) => r.error)));
    const again = await req(randomBytes(32));
    assert.equal(again.ok, false);
    assert.match(again.error, /PERMISSION_DENIED/);
    assert.ok(!again.error.includes(token.reveal().toString()), "errors never echo the token");
    await enroll.put("gw-wrong", tokenHash(new Secret("right-token")));
    const wrong = fleet.EnrollResponse.decode((await admin.request("fleet.v1.enroll", fleet.EnrollRequest.encode({ gateway: "gw-wrong", token: "wrong-token", publicKey: randomBytes(32) }).finish())).data);
    assert.equal(wrong.ok, false);
    assert.match(wrong.error, /wrong token/);
  });

  // Two agents with fake engines.
  const agents: Record<string, { engine: FakeEngine; client: FleetClient; dir: string }> = {};
  const startAgent = async (gw: string, dir = makeTempDir(`fs-agent-${gw}`), token?: Secret) => {
    const engine = new FakeEngine();
    const c = await runFleetClient({ natsUrl: nats.url, gateway: gw, stateDir: dir, engine, log, heartbeatMs: 1000, statusIntervalMs: 1000, ...(token ? { enrollToken: token } : {}) });
    agents[gw] = { engine, client: c, dir };
    return agents[gw]!;
  };
  cleanups.push(async () => {
    for (const a of Object.values(agents)) await a.client.stop();
  });
  for (const gw of ["gw-a", "gw-b"]) {
    const token = new Secret(randomBytes(24).toString("base64url"));
    await enroll.put(gw, JSON.stringify({ token_sha256: tokenHash(token), expires_at: new Date(Date.now() + 3600_000).toISOString() }));
    const a = await startAgent(gw, undefined, token);
    await a.client.enrolled;
    const mode = statSync(join(a.dir, "agent-x25519.pem")).mode & 0o777;
    assert.equal(mode, 0o600, "agent private key file mode");
  }
  assert.equal((await enroll.get("gw-a"))?.operation, "DEL", "token consumed");

  let psk = Buffer.alloc(0);
  await t.test("a generated PSK reaches both ends, sealed, and only the target can open its blob", async () => {
    await views.put("gw-a", view("gw-a", 5n, [{ name: "a-b", secretRef: "psk.a-b", peerGateway: "gw-b" }, { name: "a-c", secretRef: "psk.a-c" }]));
    await views.put("gw-b", view("gw-b", 5n, [{ name: "b-a", secretRef: "psk.a-b", peerGateway: "gw-a" }]));
    const info = await client.generateSecret("psk.a-b", ["gw-a", "gw-b"]);
    assert.deepEqual(info.gateways, ["gw-a", "gw-b"]);
    await client.storeSecret("psk.a-c", new Secret("an-operator-given-psk-for-external-peer"), ["gw-a"]);
    const sa = await waitFor("gw-a sees psk.a-b", () => lastSecret(agents["gw-a"]!.engine, "psk.a-b"));
    const sb = await waitFor("gw-b sees psk.a-b", () => lastSecret(agents["gw-b"]!.engine, "psk.a-b"));
    await waitFor("gw-a sees psk.a-c", () => lastSecret(agents["gw-a"]!.engine, "psk.a-c"));
    assert.equal(sa.current.length, 32);
    assert.ok(sa.current.equals(sb.current), "both ends hold the same PSK");
    psk = Buffer.from(sa.current.reveal());
    assert.equal(agents["gw-b"]!.client.secretVersions().has("psk.a-c"), false, "gw-b never receives gw-a's external PSK");
    // At rest: the fleet-keys record does not contain the value.
    const raw = await (await js.views.kv("fleet-keys")).get("psk.a-b");
    assert.ok(raw && !Buffer.from(raw.value).includes(psk) && !Buffer.from(raw.value).toString().includes(psk.toString("base64")));
    // On the wire: gw-a's blob opens with gw-a's key only.
    const blob = fleet.SealedSecret.decode((await (await js.views.kv("fleet-secrets")).get("gw-a.psk.a-b"))!.value);
    assert.ok(!Buffer.from(blob.ciphertext).includes(psk));
    const keyA = loadOrCreateAgentKey(agents["gw-a"]!.dir);
    const keyB = loadOrCreateAgentKey(agents["gw-b"]!.dir);
    assert.ok(Buffer.from(unseal(blob, keyA, "gw-a", "psk.a-b").value).equals(psk));
    assert.throws(() => unseal(blob, keyB, "gw-a", "psk.a-b"), { code: "SEAL_INVALID" });
    assert.throws(() => unseal({ ...blob, recipientKeyId: keyB.keyId }, keyB, "gw-a", "psk.a-b"), /does not open/);
    // The list API shows metadata only.
    const list = await client.listSecrets();
    assert.ok(list.secrets.some((s) => s.name === "psk.a-b" && s.version === 1));
    assert.ok(!JSON.stringify(list).includes(psk.toString("base64")));
  });

  await t.test("rotation: both ends get new + previous during the window, then new only", async () => {
    const before = { a: agents["gw-a"]!.engine.applies.length };
    const info = await client.rotateSecret("psk.a-b", 2);
    assert.equal(info.version, 2);
    for (const gw of ["gw-a", "gw-b"]) {
      const s = await waitFor(`${gw} sees v2 with previous`, () => {
        const x = lastSecret(agents[gw]!.engine, "psk.a-b");
        return x && !x.current.reveal().equals(psk) && x.previous ? x : undefined;
      });
      assert.ok(s.previous!.reveal().equals(psk), `${gw}: previous = old value`);
      assert.ok(s.previousValidUntil && s.previousValidUntil.getTime() > Date.now() - 1000);
    }
    const na = lastSecret(agents["gw-a"]!.engine, "psk.a-b")!;
    const nb = lastSecret(agents["gw-b"]!.engine, "psk.a-b")!;
    assert.ok(na.current.equals(nb.current));
    // Only the connection that uses the rotated secret changed; a-c kept its SAs.
    const rotApply = agents["gw-a"]!.engine.applies.slice(before.a).find((a) => a.result.changed.length > 0)!;
    assert.deepEqual(rotApply.result.changed, ["a-b"]);
    for (const gw of ["gw-a", "gw-b"]) {
      await waitFor(`${gw}: previous withdrawn after the window`, () => {
        const x = lastSecret(agents[gw]!.engine, "psk.a-b");
        return x && !x.previous && x.current.equals(na.current);
      }, { timeoutMs: 10_000 });
    }
    psk = Buffer.from(na.current.reveal());
  });

  await t.test("NATS restart and keymgr restart change nothing at the agents", async () => {
    await sleep(300);
    const counts = () => Object.values(agents).map((a) => a.engine.applies.length);
    const before = counts();
    await nats.restart();
    await waitFor("agents reconnected", () => Object.values(agents).every((a) => a.client.nc() && !a.client.nc()!.isClosed() && a.client.nc()!.info !== undefined));
    await km.stop();
    km = new KeyManager({ nc: kmNc, keyring, log, maintenanceIntervalMs: 200 });
    await km.start();
    await sleep(4000); // > 3 heartbeats: watchers have resubscribed and re-read every key
    assert.deepEqual(counts(), before, "engine.apply was not called");
    // And the agents still follow changes after the restart.
    await views.put("gw-a", view("gw-a", 6n, [{ name: "a-b", secretRef: "psk.a-b", peerGateway: "gw-b" }, { name: "a-c", secretRef: "psk.a-c" }, { name: "a-d", secretRef: "psk.a-c" }]));
    const e = agents["gw-a"]!.engine;
    const ap = await waitFor("gw-a applies revision 6", () => e.applies.find((a) => a.config.revision === 6n));
    assert.deepEqual(ap.result, { added: ["a-d"], changed: [], removed: [], revision: 6n });
  });

  await t.test("fail static: an agent restarted while NATS is down runs its persisted view and secrets", async () => {
    const a = agents["gw-b"]!;
    await a.client.stop();
    await nats.stop();
    const restarted = await startAgent("gw-b", a.dir);
    assert.equal(restarted.engine.applies.length, 1, "applied from the state dir at start");
    assert.ok(lastSecret(restarted.engine, "psk.a-b")!.current.reveal().equals(psk));
    assert.equal(restarted.client.appliedRevision(), 5n);
    await nats.restart();
    await waitFor("gw-b reconnected", () => restarted.client.nc() !== undefined, { timeoutMs: 15_000 });
    await sleep(2500);
    assert.equal(restarted.engine.applies.length, 1, "reconnect resync applied nothing new");
  });

  await t.test("status, events and commands over NATS", async () => {
    const st = await waitFor("status from gw-a", async () => {
      const sub = admin.subscribe("fleet.v1.gw.gw-a.status", { max: 1, timeout: 12_000 });
      for await (const m of sub) return fleet.AgentStatus.decode(m.data);
      return undefined;
    }, { timeoutMs: 15_000 });
    assert.equal(st.gateway, "gw-a");
    assert.equal(st.appliedRevision, 6n);
    const events = admin.subscribe("fleet.v1.gw.gw-a.events", { max: 1 });
    const r = fleet.AgentCommandReply.decode((await admin.request("fleet.v1.gw.gw-a.cmd", fleet.AgentCommand.encode({ verb: "down", connection: "a-d", timeoutMs: 0 }).finish())).data);
    assert.equal(r.ok, true);
    assert.deepEqual(agents["gw-a"]!.engine.commands.at(-1), { verb: "terminate", connection: "a-d" });
    for await (const m of events) assert.equal(fleet.AgentEvent.decode(m.data).connection, "a-d");
    const ls = fleet.AgentCommandReply.decode((await admin.request("fleet.v1.gw.gw-a.cmd", fleet.AgentCommand.encode({ verb: "list-sas", connection: "", timeoutMs: 0 }).finish())).data);
    assert.ok(JSON.parse(ls.bodyJson).ikeSas.length >= 2);
    const barf = fleet.AgentCommandReply.decode((await admin.request("fleet.v1.gw.gw-a.cmd", fleet.AgentCommand.encode({ verb: "barf", connection: "", timeoutMs: 0 }).finish())).data);
    assert.ok(barf.ok && !barf.bodyJson.includes(psk.toString("base64")) && !barf.bodyJson.includes(psk.toString("hex")));
    const bad = fleet.AgentCommandReply.decode((await admin.request("fleet.v1.gw.gw-a.cmd", fleet.AgentCommand.encode({ verb: "nope", connection: "", timeoutMs: 0 }).finish())).data);
    assert.equal(bad.code, "UNKNOWN_VERB");
  });

  await t.test("certificates: issued by the fleet CA and sealed to the gateway", async () => {
    const res = await client.issueCertificate({ gateway: "gw-a", dnsNames: ["gw-a.example.net"], ipAddresses: ["192.0.2.1"], keyType: "ed25519", validDays: 30 });
    assert.equal(res.secretName, "cert.gw-a");
    assert.match(res.certificatePem, /BEGIN CERTIFICATE/);
    const blob = fleet.SealedSecret.decode((await waitFor("sealed key", async () => (await js.views.kv("fleet-secrets")).get("gw-a.cert.gw-a")))!.value);
    const p = unseal(blob, loadOrCreateAgentKey(agents["gw-a"]!.dir), "gw-a", "cert.gw-a");
    assert.equal(p.kind, fleet.SecretKind.SECRET_KIND_PRIVATE_KEY);
    assert.match(Buffer.from(p.value).toString(), /BEGIN PRIVATE KEY/);
    assert.match(p.certificateChainPem, /BEGIN CERTIFICATE[\s\S]*BEGIN CERTIFICATE/);
  });
});
