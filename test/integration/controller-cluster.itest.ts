/**
 * The controller on a 3-node NATS cluster (R3 KV buckets): two controller replicas and
 * keymgr connected to different nodes; one node is killed. Apply (views, PSKs through
 * keymgr) and fleet status still work; the node comes back and nothing was lost.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { connect, type NatsConnection } from "nats";
import { createLogger } from "@fleetswan/common";
import { fleet } from "@fleetswan/proto";
import { Controller, ControllerClient, BUCKET } from "@fleetswan/controller";
import { KeyManager, MasterKeyring, parseMasterKey } from "@fleetswan/keymgr";
import { startNatsCluster, waitFor, needExecutable, skipReason, NATS_SERVER } from "../harness/index.js";

const log = createLogger("itest", { level: process.env.FLEETSWAN_TEST_LOG ?? "silent" });

const SPEC = (dpd: number, extra = "") => `defaults:
  dpd: { delay: ${dpd}, timeout: 150 }
gateways:
  - { name: gw-a, addresses: [192.0.2.1], subnets: [10.1.0.0/16] }
  - { name: gw-b, addresses: [192.0.2.2], subnets: [10.2.0.0/16] }
  - { name: gw-c, addresses: [192.0.2.3], subnets: [10.3.0.0/16] }
connections:
  - mesh: [gw-a, gw-b, gw-c]
${extra}`;

test("controller on a 3-node NATS cluster: one node killed, apply and status keep working", { timeout: 300_000 }, async (t) => {
  const skip = skipReason(needExecutable(NATS_SERVER));
  if (skip) { t.skip(skip); return; }
  const cleanup: Array<() => Promise<unknown>> = [];
  t.after(async () => { for (const f of cleanup.reverse()) await f().catch(() => undefined); });
  const cluster = await startNatsCluster(3);
  cleanup.push(() => cluster.stop());
  // Every client lists all nodes (failover); each starts on a different one.
  const opts = (i: number) => ({ servers: [...cluster.servers.slice(i % 3), ...cluster.servers.slice(0, i % 3)], maxReconnectAttempts: -1, reconnectTimeWait: 200 });
  const conns: NatsConnection[] = [];
  cleanup.push(async () => { for (const c of conns) await c.close().catch(() => undefined); });
  const conn = async (i: number) => { const c = await connect(opts(i)); conns.push(c); return c; };

  const km = new KeyManager({ nc: await conn(1), keyring: new MasterKeyring(parseMasterKey(randomBytes(32))), log, replicas: 3 });
  await km.start();
  cleanup.push(() => km.stop());
  const ctls: Controller[] = [];
  for (const i of [0, 2]) {
    const ctl = new Controller({ nc: await conn(i), log, replicas: 3, reconcileIntervalMs: 1000, secretReconcileIntervalMs: 1000, keymgrTimeoutMs: 3000 });
    await ctl.start();
    ctls.push(ctl);
    cleanup.push(() => ctl.stop());
  }
  const agentNc = await conn(2);
  const client = new ControllerClient(await conn(1), 20_000);
  const r1 = await client.apply({ specYaml: SPEC(30), sourceName: "fleet.yaml", baseRevision: 0n });
  assert.equal(r1.error, undefined, JSON.stringify(r1.error));
  assert.deepEqual(r1.warnings, []);
  const info = await (await conn(2)).jetstream().views.kv(BUCKET.views);
  assert.equal((await info.status()).replicas, 3, "views bucket is R3");

  await cluster.nodes[0]!.kill();

  // apply: retried until the cluster has moved the stream leaders off the dead node
  let base = r1.revision;
  const r2 = await waitFor("apply with node 0 dead", async () => {
    const r = await client.apply({ specYaml: SPEC(20, "  - { name: extra, gateways: [gw-a, gw-b], subnets: { gw-a: [10.1.99.0/24], gw-b: [10.2.99.0/24] } }\n"), sourceName: "fleet.yaml", baseRevision: base }).catch((e) => { t.diagnostic(`apply with node 0 dead: ${(e as Error).message} (retrying)`); return undefined; });
    if (r?.error) {
      t.diagnostic(`apply with node 0 dead: ${r.error.code}: ${r.error.message} (retrying)`);
      // as an operator would: look at the current revision and apply again on top of it
      if (r.error.code === "CONFLICT") base = (await client.getSpec().catch(() => ({ revision: base }))).revision;
    }
    return r && !r.error ? r : undefined;
  }, { timeoutMs: 90_000, intervalMs: 1000 });
  assert.ok(r2.revision > r1.revision);
  await waitFor("PSK of the new connection in keymgr", () => km.listSecrets().secrets.some((s) => s.name === "psk.extra"), { timeoutMs: 30_000 });
  const reader = await conn(2);
  const views = await waitFor("views bucket reachable", () => reader.jetstream().views.kv(BUCKET.views, { bindOnly: true }).catch(() => undefined), { timeoutMs: 30_000, intervalMs: 500 });
  for (const gw of ["gw-a", "gw-b", "gw-c"]) {
    const v = await waitFor(`${gw}'s view of the new revision`, async () => {
      const e = await views.get(gw).catch(() => null);
      const x = e ? fleet.GatewayView.decode(e.value) : undefined;
      return x?.revision === r2.revision ? x : undefined;
    }, { timeoutMs: 30_000, intervalMs: 500 });
    assert.equal(v.connections[0]!.dpdDelaySeconds, 20);
  }

  // status: an agent reports through a surviving node, every 2 s as a real agent does (its
  // periodic status; the controller stores statuses without waiting for the PubAck, so one
  // published while the status stream elects a new leader is replaced by the next).
  const report = () => agentNc.publish("fleet.v1.gw.gw-a.status", fleet.AgentStatus.encode(fleet.AgentStatus.fromPartial({ gateway: "gw-a", time: new Date(), appliedRevision: r2.revision, ikeSas: 2 })).finish());
  report();
  const reporting = setInterval(report, 2000);
  cleanup.push(async () => clearInterval(reporting));
  // Any replica may answer; one that reconnected from the dead node may not have seen the new
  // spec yet (eventually consistent), so wait until an answer carries the new revision too.
  let lastSeen = "no answer";
  const st = await waitFor("status with node 0 dead", async () => {
    const s = await client.status().catch((e) => { lastSeen = (e as Error).message; return undefined; });
    if (s) lastSeen = `revision ${s.revision}, gw-a ${s.gateways.find((g) => g.name === "gw-a")?.state}`;
    return s?.revision === r2.revision && s.gateways.find((g) => g.name === "gw-a")?.state === "up" ? s : undefined;
  }, { timeoutMs: 60_000, intervalMs: 500 }).catch(async (e) => {
    const stored = await (await reader.jetstream().views.kv(BUCKET.status, { bindOnly: true })).get("gw-a").catch((x) => `unreadable: ${(x as Error).message}`);
    const where = typeof stored === "string" ? stored : stored ? `stored at KV revision ${stored.revision}` : "not stored";
    throw new Error(`${(e as Error).message}; last answer: ${lastSeen}; gw-a's status in fleet-status: ${where}`);
  });
  clearInterval(reporting);
  assert.equal(st.gateways.find((g) => g.name === "gw-a")!.revisionLag, 0n);
  assert.equal(st.connections.length, 8);

  // the node returns: the spec and views are intact, another apply works
  await cluster.nodes[0]!.restart();
  const r3 = await waitFor("apply after the restart", async () => {
    const r = await client.apply({ specYaml: SPEC(25), sourceName: "fleet.yaml", baseRevision: r2.revision }).catch(() => undefined);
    return r && !r.error ? r : undefined;
  }, { timeoutMs: 60_000, intervalMs: 1000 });
  assert.equal((await waitFor("GetSpec after the restart", () => client.getSpec().catch(() => undefined), { timeoutMs: 30_000, intervalMs: 500 })).revision, r3.revision);
});
