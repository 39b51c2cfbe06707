/**
 * The controller against a real nats-server: apply -> views, an invalid spec leaves the
 * previous revision in force, optimistic concurrency, two replicas racing, status
 * aggregation from simulated agents, command routing, enrollment tickets, PSKs through
 * keymgr (never in KV in clear), and a NATS restart that changes no view.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { connect, type NatsConnection } from "nats";
import { Secret, createLogger, createRegistry } from "@fleetswan/common";
import { controller as api, fleet } from "@fleetswan/proto";
import { Controller, ControllerClient, BUCKET, SPEC_KEY } from "@fleetswan/controller";
import { KeyManager, MasterKeyring, parseMasterKey, tokenHash } from "@fleetswan/keymgr";
import { startNats, waitFor, needExecutable, skipReason, NATS_SERVER, type NatsServer } from "../harness/index.js";

const log = createLogger("itest", { level: process.env.FLEETSWAN_TEST_LOG ?? "silent" });
const PSK = "q8Vt3nZpR7wLk2XcYb9JmF4sHd6Ga1Ue";

const SPEC = (extra = "") => `gateways:
  - { name: gw-a, addresses: [192.0.2.1], subnets: [10.1.0.0/16] }
  - { name: gw-b, addresses: [192.0.2.2], subnets: [10.2.0.0/16] }
  - { name: gw-c, addresses: [192.0.2.3], subnets: [10.3.0.0/16] }
connections:
  - mesh: [gw-a, gw-b, gw-c]
peers:
  - { name: partner, gateway: gw-a, address: 203.0.113.9, psk: "${PSK}", subnets: [172.16.0.0/24] }
${extra}`;

/** The same spec for tests without keymgr: the PSK is "already in keymgr". */
const SPECK = (extra = "") => SPEC(extra).replace(`"${PSK}"`, '"@keymgr"');

interface Env {
  nats: NatsServer;
  conns: NatsConnection[];
  ctls: Controller[];
  client: ControllerClient;
  nc: NatsConnection;
  km?: KeyManager;
  registries: import("@fleetswan/common").Registry[];
}

async function setup(t: import("node:test").TestContext, replicas = 1, withKeymgr = true): Promise<Env | undefined> {
  const skip = skipReason(needExecutable(NATS_SERVER));
  if (skip) { t.skip(skip); return undefined; }
  const nats = await startNats();
  const conns: NatsConnection[] = [];
  const ctls: Controller[] = [];
  const registries: import("@fleetswan/common").Registry[] = [];
  const opts = { servers: nats.url, maxReconnectAttempts: -1, reconnectTimeWait: 200 };
  let km: KeyManager | undefined;
  if (withKeymgr) {
    const kmNc = await connect(opts);
    conns.push(kmNc);
    km = new KeyManager({ nc: kmNc, keyring: new MasterKeyring(parseMasterKey(randomBytes(32))), log });
    await km.start();
  }
  for (let i = 0; i < replicas; i++) {
    const nc = await connect(opts);
    conns.push(nc);
    const registry = createRegistry("controller");
    registries.push(registry);
    const ctl = new Controller({ nc, log, registry, reconcileIntervalMs: 500, keymgrTimeoutMs: 2000 });
    await ctl.start();
    ctls.push(ctl);
  }
  const nc = await connect(opts);
  conns.push(nc);
  t.after(async () => {
    for (const c of ctls) await c.stop();
    await km?.stop();
    for (const c of conns) await c.close().catch(() => undefined);
    await nats.stop();
  });
  return { nats, conns, ctls, client: new ControllerClient(nc, 20_000), nc, km, registries };
}

async function views(nc: NatsConnection): Promise<Map<string, { kvRevision: number; view: fleet.GatewayView }>> {
  const kv = await nc.jetstream().views.kv(BUCKET.views);
  const out = new Map<string, { kvRevision: number; view: fleet.GatewayView }>();
  const keys: string[] = [];
  for await (const k of await kv.keys()) keys.push(k);
  for (const k of keys) {
    const e = await kv.get(k);
    if (e?.operation === "PUT") out.set(k, { kvRevision: e.revision, view: fleet.GatewayView.decode(e.value) });
  }
  return out;
}

test("controller: apply renders views; an invalid spec leaves the previous revision in force; stale bases are refused", async (t) => {
  const env = await setup(t);
  if (!env) return;
  const { client, nc } = env;
  const r1 = await client.apply({ specYaml: SPEC(), sourceName: "fleet.yaml", baseRevision: 0n });
  assert.equal(r1.error, undefined, JSON.stringify(r1.error));
  assert.ok(r1.revision > 0n);
  assert.deepEqual(r1.changes.map((c) => c.gateway), ["gw-a", "gw-b", "gw-c"]);
  const v1 = await views(nc);
  assert.deepEqual([...v1.keys()].sort(), ["gw-a", "gw-b", "gw-c"]);
  assert.deepEqual(v1.get("gw-a")!.view.connections.map((c) => c.name), ["gw-a--gw-b", "gw-a--gw-c", "partner"]);
  assert.equal(v1.get("gw-b")!.view.connections[0]!.remote!.addresses[0], "192.0.2.1");

  // the PSK went to keymgr, not into any KV value in clear
  const specKv = await nc.jetstream().views.kv(BUCKET.spec);
  const stored = (await specKv.get(SPEC_KEY))!.string();
  assert.ok(!stored.includes(PSK), "PSK stored in clear in fleet-spec");
  assert.match(stored, /@keymgr/);
  const secretsKv = await nc.jetstream().views.kv("fleet-keys");
  const names: string[] = [];
  for await (const k of await secretsKv.keys()) names.push(k);
  assert.ok(names.some((k) => k.includes("psk.partner")), `keymgr has psk.partner (${names.join(",")})`);
  assert.ok(names.some((k) => k.includes("psk.gw-a--gw-b")), `keymgr generated psk.gw-a--gw-b (${names.join(",")})`);

  // invalid: nothing changes, every error is reported with file:line:field
  const bad = await client.apply({ specYaml: SPEC("  - { name: weak, gateway: gw-b, address: 203.0.113.10, psk: short, ike_proposals: [3des-sha1-modp1024] }\n"), sourceName: "fleet.yaml", baseRevision: r1.revision });
  assert.equal(bad.error?.code, "CONFIG_INVALID");
  assert.ok(bad.error!.locations.some((l) => /^fleet\.yaml:9:peers\[1\]\.psk: peer "weak": PSK is 5 bytes/.test(l)), bad.error!.locations.join("\n"));
  assert.ok(bad.error!.locations.some((l) => /peers\[1\]\.ike_proposals\[0\]: peer "weak": weak algorithm "3des"/.test(l)), bad.error!.locations.join("\n"));
  assert.equal((await client.getSpec()).revision, r1.revision);
  const v2 = await views(nc);
  for (const [gw, v] of v1) assert.equal(v2.get(gw)!.kvRevision, v.kvRevision, `view of ${gw} untouched`);

  // a change to one connection touches only its two gateways
  const spec2 = SPEC().replace("  - mesh: [gw-a, gw-b, gw-c]\n", "  - mesh: [gw-a, gw-b, gw-c]\n    dpd: { delay: 10s, timeout: 60s }\n");
  const diff = await client.diff({ specYaml: spec2, sourceName: "fleet.yaml" });
  assert.equal(diff.revision, r1.revision);
  const r2 = await client.apply({ specYaml: SPEC().replace("subnets: [172.16.0.0/24]", "subnets: [172.16.0.0/23]"), sourceName: "fleet.yaml", baseRevision: r1.revision });
  assert.equal(r2.error, undefined);
  assert.deepEqual(r2.changes.map((c) => [c.gateway, c.changed]), [["gw-a", ["partner"]]]);
  const v3 = await views(nc);
  assert.equal(v3.get("gw-b")!.kvRevision, v1.get("gw-b")!.kvRevision, "gw-b's view not rewritten");
  assert.equal(v3.get("gw-a")!.view.revision, r2.revision);
  assert.equal(v3.get("gw-a")!.view.connections.find((c) => c.name === "partner")!.revision, r2.revision);
  assert.equal(v3.get("gw-a")!.view.connections.find((c) => c.name === "gw-a--gw-b")!.revision, r1.revision);

  // optimistic concurrency: a change based on r1 is refused now
  const stale = await client.apply({ specYaml: spec2, sourceName: "fleet.yaml", baseRevision: r1.revision });
  assert.equal(stale.error?.code, "CONFLICT");
  assert.match(stale.error!.message, new RegExp(`at revision ${r2.revision} but this change is based on revision ${r1.revision}`));
  const forced = await client.apply({ specYaml: spec2, sourceName: "fleet.yaml", force: true });
  assert.equal(forced.error, undefined);

  // removing a gateway deletes its view
  const r4 = await client.apply({ specYaml: spec2.replace(/  - \{ name: gw-c.*\n/, "").replace("[gw-a, gw-b, gw-c]", "[gw-a, gw-b]"), sourceName: "fleet.yaml", baseRevision: forced.revision });
  assert.equal(r4.error, undefined, JSON.stringify(r4.error));
  assert.deepEqual([...(await views(nc)).keys()].sort(), ["gw-a", "gw-b"]);
});

test("controller: two replicas, concurrent applies: exactly one wins per base revision, views consistent", async (t) => {
  const env = await setup(t, 2, false);
  if (!env) return;
  const { client, nc } = env;
  const r0 = await client.apply({ specYaml: SPECK(), sourceName: "fleet.yaml", baseRevision: 0n });
  assert.equal(r0.error, undefined);
  for (let round = 0; round < 3; round++) {
    const base = (await client.getSpec()).revision;
    const attempts = await Promise.all(Array.from({ length: 8 }, (_, i) => client.apply({
      specYaml: SPECK().replace("subnets: [172.16.0.0/24]", `subnets: [172.16.${round * 10 + i + 1}.0/24]`),
      sourceName: `fleet-${i}.yaml`,
      baseRevision: base,
    })));
    const wins = attempts.filter((a) => !a.error);
    const conflicts = attempts.filter((a) => a.error?.code === "CONFLICT");
    assert.equal(wins.length, 1, `one winner per base revision, got ${wins.length}: ${attempts.map((a) => a.error?.code ?? "ok").join(",")}`);
    assert.equal(conflicts.length, 7);
    const winner = attempts.indexOf(wins[0]!);
    const v = await views(nc);
    const partner = v.get("gw-a")!.view.connections.find((c) => c.name === "partner")!;
    assert.deepEqual(partner.remote!.subnets, [`172.16.${round * 10 + winner + 1}.0/24`], "gw-a's view shows the winner's spec");
    assert.equal(v.get("gw-a")!.view.revision, wins[0]!.revision);
  }
  // both replicas reconcile the same revision without writing anything
  const before = await views(nc);
  await Promise.all(env.ctls.map((c) => c.reconcile()));
  await new Promise((r) => setTimeout(r, 1200));
  const after = await views(nc);
  for (const [gw, v] of before) assert.equal(after.get(gw)!.kvRevision, v.kvRevision, `no rewrite of ${gw}`);
});

test("controller: status and events from simulated agents; commands routed to the agent; enrollment ticket", async (t) => {
  const env = await setup(t, 1, false);
  if (!env) return;
  const { client, nc } = env;
  const r = await client.apply({ specYaml: SPECK(), sourceName: "fleet.yaml", baseRevision: 0n });
  // a simulated agent for gw-a: status, an event, and a command handler
  const agentNc = await connect({ servers: env.nats.url });
  env.conns.push(agentNc);
  const received: fleet.AgentCommand[] = [];
  agentNc.subscribe("fleet.v1.gw.gw-a.cmd", {
    callback: (_e, m) => {
      const cmd = fleet.AgentCommand.decode(m.data);
      received.push(cmd);
      m.respond(fleet.AgentCommandReply.encode({ ok: true, code: "", message: `${cmd.verb} ${cmd.connection} done`, bodyJson: cmd.verb === "barf" ? '{"view":"…","psk":"[REDACTED]"}' : "" }).finish());
    },
  });
  await agentNc.flush();
  agentNc.publish("fleet.v1.gw.gw-a.status", fleet.AgentStatus.encode(fleet.AgentStatus.fromPartial({
    gateway: "gw-a", time: new Date(), appliedRevision: r.revision, ikeSas: 2, childSas: 3,
    connections: [{ name: "gw-a--gw-b", state: "up", childSas: 1 }, { name: "partner", state: "connecting", lastErrorCode: "AUTH_FAILED", lastError: "peer rejected our PSK", lastChange: new Date(Date.now() - 60_000) }],
  })).finish());
  agentNc.publish("fleet.v1.gw.gw-b.status", fleet.AgentStatus.encode(fleet.AgentStatus.fromPartial({ gateway: "gw-b", time: new Date(Date.now() - 120_000), appliedRevision: 0n })).finish());
  // a gateway claiming another's name is ignored
  agentNc.publish("fleet.v1.gw.gw-c.status", fleet.AgentStatus.encode(fleet.AgentStatus.fromPartial({ gateway: "gw-a", time: new Date() })).finish());
  agentNc.publish("fleet.v1.gw.gw-a.events", fleet.AgentEvent.encode({ gateway: "gw-a", time: new Date(), kind: "dpd_dead", connection: "gw-a--gw-c", code: "DPD_TIMEOUT", message: "no answer for 150 s" }).finish());
  await agentNc.flush();

  const st = await waitFor("status aggregated", async () => {
    const s = await client.status();
    const a = s.gateways.find((g) => g.name === "gw-a");
    const ev = s.connections.find((c) => c.name === "gw-a--gw-c" && c.gateway === "gw-a");
    return a?.state === "up" && ev?.lastErrorCode === "DPD_TIMEOUT" ? s : undefined;
  });
  const gw = (n: string) => st.gateways.find((g) => g.name === n)!;
  assert.equal(gw("gw-a").ikeSas, 2);
  assert.equal(gw("gw-a").revisionLag, 0n);
  assert.equal(gw("gw-b").state, "stale");
  assert.equal(gw("gw-b").revisionLag, r.revision);
  assert.equal(gw("gw-c").state, "never-seen");
  const conn = (n: string, g: string) => st.connections.find((c) => c.name === n && c.gateway === g)!;
  assert.equal(conn("gw-a--gw-b", "gw-a").state, "up");
  assert.equal(conn("gw-a--gw-b", "gw-b").state, "unknown");
  assert.equal(conn("partner", "gw-a").lastErrorCode, "AUTH_FAILED");
  assert.equal(conn("partner", "gw-a").desired, "start");
  assert.equal(conn("partner", "gw-a").peer, "203.0.113.9");

  // metrics
  const metrics = await env.registries[0]!.metrics();
  assert.match(metrics, /fleetswan_controller_gateways\{state="up",service="controller"\} 1/);
  assert.match(metrics, /fleetswan_controller_gateways\{state="stale",service="controller"\} 1/);
  assert.match(metrics, /fleetswan_controller_connections\{state="desired",service="controller"\} 7/);
  assert.match(metrics, /fleetswan_controller_connections\{state="up",service="controller"\} 1/);
  assert.match(metrics, new RegExp(`fleetswan_controller_revision_lag\\{gateway="gw-b",service="controller"\\} ${r.revision}`));
  assert.match(metrics, /fleetswan_controller_applies_total\{outcome="ok",service="controller"\} 1/);

  // commands
  const up = await client.command("up", "gw-a--gw-b", 5000);
  assert.deepEqual(up.results.map((x) => [x.gateway, x.ok, x.message]), [["gw-a", true, "up gw-a--gw-b done"]]);
  const down = await client.command("down", "gw-a--gw-b", 1000);
  assert.deepEqual(down.results.map((x) => [x.gateway, x.ok]), [["gw-a", true], ["gw-b", false]]);
  assert.equal(down.results[1]!.code, "AGENT_UNREACHABLE");
  const barf = await client.command("barf", "gw-a", 5000);
  assert.match(barf.results[0]!.bodyJson, /REDACTED/);
  assert.deepEqual(received.map((c) => `${c.verb}:${c.connection}`), ["up:gw-a--gw-b", "down:gw-a--gw-b", "barf:"]);
  const nf = await client.command("up", "nope", 1000);
  assert.equal(nf.error?.code, "NOT_FOUND");

  // enrollment: the token is returned once, only its hash is stored
  const en = await client.enroll("gw-c", 600);
  assert.equal(en.error, undefined);
  assert.match(en.token, /^fse1\./);
  const ticket = (await (await nc.jetstream().views.kv(BUCKET.enroll)).get("gw-c"))!.json<{ token_sha256: string; expires_at: string }>();
  assert.equal(ticket.token_sha256, tokenHash(new Secret(en.token)));
  assert.ok(!JSON.stringify(ticket).includes(en.token));
  assert.equal((await client.enroll("gw-zz")).error?.code, "NOT_FOUND");
});

test("controller: a NATS restart changes no view; the controller resumes", async (t) => {
  const env = await setup(t, 1, false);
  if (!env) return;
  const { client, nc } = env;
  const r = await client.apply({ specYaml: SPECK(), sourceName: "fleet.yaml", baseRevision: 0n });
  assert.equal(r.error, undefined);
  const before = await views(nc);
  await env.nats.restart();
  const quick = new ControllerClient(nc, 1000);
  await waitFor("controller answers again", async () => (await quick.getSpec().catch(() => undefined))?.revision === r.revision, { timeoutMs: 20_000 });
  await env.ctls[0]!.reconcile();
  await new Promise((res) => setTimeout(res, 1200)); // two reconcile intervals
  const after = await views(nc);
  assert.deepEqual([...after.keys()].sort(), [...before.keys()].sort());
  for (const [gw, v] of before) assert.equal(after.get(gw)!.kvRevision, v.kvRevision, `view of ${gw} unchanged by the restart`);
  // and it still applies
  const r2 = await client.apply({ specYaml: SPECK().replace("172.16.0.0/24", "172.16.9.0/24"), sourceName: "fleet.yaml", baseRevision: r.revision });
  assert.equal(r2.error, undefined);
});

void api;
