/**
 * The agent's status reports against a real nats-server: one status per applied view,
 * none for an engine change that alters nothing the status shows, one when something
 * does change, and the periodic status (the agent's heartbeat) even when nothing changed.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { connect } from "nats";
import { createLogger } from "@fleetswan/common";
import { fleet } from "@fleetswan/proto";
import { FakeEngine, runFleetClient, loadOrCreateAgentKey } from "@fleetswan/ikeagent/fleet/index";
import { AgentState } from "@fleetswan/ikeagent/fleet/state";
import { startNats, makeTempDir, waitFor, sleep } from "../harness/index.js";

const log = createLogger("itest", { level: process.env.FLEETSWAN_TEST_LOG ?? "silent" });

const view = (revision: bigint): Uint8Array =>
  fleet.GatewayView.encode(
    fleet.GatewayView.fromPartial({
      gateway: "gw-a",
      revision,
      self: { addresses: ["192.0.2.1"], id: "gw-a", subnets: ["10.1.0.0/16"], backend: "xfrm" },
      connections: [fleet.ConnectionDef.fromPartial({ name: "a-b", startAction: fleet.StartAction.START_ACTION_ADD, dpdDelaySeconds: Number(revision) })],
    }),
  ).finish();

test("agent status: one per applied view, none for a change that alters nothing, the periodic one always", { timeout: 60_000 }, async (t) => {
  const cleanups: Array<() => unknown> = [];
  t.after(async () => { for (const fn of cleanups.reverse()) await fn(); });
  const nats = await startNats();
  cleanups.push(() => nats.stop());
  const admin = await connect({ servers: nats.url });
  cleanups.push(() => admin.close());
  const views = await admin.jetstream().views.kv("fleet-views");
  await admin.jetstream().views.kv("fleet-secrets");
  await views.put("gw-a", view(1n));

  const statuses: fleet.AgentStatus[] = [];
  admin.subscribe("fleet.v1.gw.gw-a.status", { callback: (err, m) => { if (!err) statuses.push(fleet.AgentStatus.decode(m.data)); } });
  await admin.flush();

  const dir = makeTempDir("fs-agent-status");
  new AgentState(dir).saveEnrolled(loadOrCreateAgentKey(dir).keyId, "gw-a"); // no keymgr here
  const engine = new FakeEngine();
  const PERIOD = 4000;
  const agent = await runFleetClient({ natsUrl: nats.url, gateway: "gw-a", stateDir: dir, engine, log, statusIntervalMs: PERIOD, heartbeatMs: 1000 });
  cleanups.push(() => agent.stop());
  await waitFor("revision 1 reported", () => statuses.some((s) => s.appliedRevision === 1n), { timeoutMs: 10_000 });

  // A new view right after a periodic status (the next is PERIOD away): exactly one status
  // says it is applied; the engine's "change" that follows (200 ms later) reports nothing
  // new and sends nothing.
  let n0 = statuses.length;
  await waitFor("a periodic status", () => statuses.length > n0, { timeoutMs: PERIOD + 2000, intervalMs: 20 });
  n0 = statuses.length;
  await views.put("gw-a", view(2n));
  await waitFor("revision 2 reported", () => statuses.some((s) => s.appliedRevision === 2n), { timeoutMs: PERIOD / 2, intervalMs: 20 });
  await sleep(600);
  assert.equal(statuses.length - n0, 1, `statuses within 600 ms after one view change: ${statuses.slice(n0).map((s) => `revision ${s.appliedRevision}`).join(", ")}`);

  // A change the status shows (the connection comes up): reported without waiting for the period.
  n0 = statuses.length;
  await engine.initiate({ connection: "a-b", wait: false, timeoutMs: 0 });
  const up = await waitFor("a-b up reported", () => statuses.slice(n0).find((s) => s.ikeSas > 0), { timeoutMs: 2000, intervalMs: 20 });
  assert.equal(up.connections.find((c) => c.name === "a-b")?.state, "up");

  // Nothing changes: the periodic status still comes, every PERIOD.
  n0 = statuses.length;
  await sleep(2 * PERIOD + 500);
  const periodic = statuses.length - n0;
  assert.ok(periodic >= 2 && periodic <= 3, `periodic statuses in ${2 * PERIOD + 500} ms with period ${PERIOD} ms: ${periodic}`);
});
