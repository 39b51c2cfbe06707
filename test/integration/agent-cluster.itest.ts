/**
 * A 3-node NATS cluster (R3 KV buckets): kill one node, and agents, the view writer and
 * keymgr go on; agents still receive view changes and a rotated secret.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { connect } from "nats";
import { Secret, createLogger } from "@fleetswan/common";
import { fleet } from "@fleetswan/proto";
import { KeyManager, KeymgrClient, MasterKeyring, parseMasterKey, tokenHash } from "@fleetswan/keymgr";
import { FakeEngine, runFleetClient, type FleetClient } from "@fleetswan/ikeagent/fleet/index";
import { startNatsCluster, makeTempDir, waitFor } from "../harness/index.js";

const log = createLogger("itest", { level: process.env.FLEETSWAN_TEST_LOG ?? "silent" });

function viewBytes(gw: string, rev: bigint, n: number): Uint8Array {
  const connections = Array.from({ length: n }, (_, i) => ({ name: `c${i}`, secretRef: "psk.shared", startAction: fleet.StartAction.START_ACTION_START }));
  return fleet.GatewayView.encode(fleet.GatewayView.fromPartial({ gateway: gw, revision: rev, connections })).finish();
}

test("3-node NATS cluster, one node killed: agents still get updates", { timeout: 180_000 }, async (t) => {
  const cleanup: Array<() => Promise<unknown>> = [];
  t.after(async () => {
    for (const f of cleanup.reverse()) await f().catch(() => undefined);
  });
  const cluster = await startNatsCluster(3);
  cleanup.push(() => cluster.stop());
  const opts = { servers: cluster.servers, maxReconnectAttempts: -1, reconnectTimeWait: 200 };
  const admin = await connect(opts);
  cleanup.push(() => admin.close());
  const js = admin.jetstream();
  const views = await js.views.kv("fleet-views", { replicas: 3 });
  const kmNc = await connect(opts);
  const km = new KeyManager({ nc: kmNc, keyring: new MasterKeyring(parseMasterKey(randomBytes(32))), log, replicas: 3 });
  await km.start();
  cleanup.push(async () => {
    await km.stop();
    await kmNc.close();
  });
  const enroll = await js.views.kv("fleet-enroll", { replicas: 3 });
  const gws = ["gw-1", "gw-2", "gw-3", "gw-4", "gw-5", "gw-6"];
  const engines = new Map<string, FakeEngine>();
  const clients: FleetClient[] = [];
  for (const [i, gw] of gws.entries()) {
    const token = new Secret(randomBytes(16).toString("hex"));
    await enroll.put(gw, tokenHash(token));
    await views.put(gw, viewBytes(gw, 1n, 1));
    const engine = new FakeEngine();
    engines.set(gw, engine);
    // Spread agents over the nodes (each lists all servers for failover).
    const servers = [...cluster.servers.slice(i % 3), ...cluster.servers.slice(0, i % 3)];
    const c = await runFleetClient({ natsUrl: servers, gateway: gw, stateDir: makeTempDir(`fs-cl-${gw}`), enrollToken: token, engine, log, heartbeatMs: 1000 });
    clients.push(c);
    cleanup.push(() => c.stop());
  }
  for (const c of clients) await c.enrolled;
  const km1 = new KeymgrClient(admin);
  await km1.generateSecret("psk.shared", gws);
  for (const gw of gws) await waitFor(`${gw} initial`, () => engines.get(gw)!.applies.find((a) => a.secrets.has("psk.shared")));

  await cluster.nodes[0]!.kill();

  // Views change and a secret rotates while node 0 is dead.
  await waitFor("views writable", async () => {
    for (const gw of gws) await views.put(gw, viewBytes(gw, 2n, 2));
    return true;
  }, { timeoutMs: 30_000, intervalMs: 500 });
  const rotated = await waitFor("rotation accepted", () => km1.rotateSecret("psk.shared", 60).catch(() => undefined), { timeoutMs: 30_000, intervalMs: 500 });
  // A request that timed out during the leader election may still have been carried out,
  // and its retry rotates once more: at least one rotation, every agent on the last one.
  assert.ok(rotated.version >= 2, `rotated to version ${rotated.version}`);
  for (const gw of gws) {
    const e = engines.get(gw)!;
    await waitFor(`${gw} got revision 2 and the rotated secret`, () => {
      const last = e.applies.at(-1);
      return last && last.config.revision === 2n && last.config.connections.length === 2 && last.secrets.get("psk.shared")?.previous !== undefined;
    }, { timeoutMs: 45_000 });
  }
  const values = gws.map((gw) => engines.get(gw)!.applies.at(-1)!.secrets.get("psk.shared")!.current);
  assert.ok(values.every((v) => v.equals(values[0]!)), "every agent holds the same rotated PSK");
  await cluster.nodes[0]!.restart();
});
