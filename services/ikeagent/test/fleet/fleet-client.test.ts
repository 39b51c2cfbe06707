import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, statSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createLogger } from "@fleetswan/common";
import { fleet } from "@fleetswan/proto";
import { Registry } from "prom-client";
import { FakeEngine, loadOrCreateAgentKey, runFleetClient, validateView, AGENT_KEY_FILE } from "../../src/fleet/index.js";
import { AgentState } from "../../src/fleet/state.js";

const log = createLogger("test", { level: "silent" });
const conn = (name: string, extra: Partial<fleet.ConnectionDef> = {}) => fleet.ConnectionDef.fromPartial({ name, startAction: fleet.StartAction.START_ACTION_START, ...extra });

test("agent key: created once with mode 0600, then reused", (t) => {
  const dir = mkdtempSync(join(tmpdir(), "fs-key-"));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const k1 = loadOrCreateAgentKey(dir);
  assert.equal(statSync(join(dir, AGENT_KEY_FILE)).mode & 0o777, 0o600);
  const k2 = loadOrCreateAgentKey(dir);
  assert.equal(k1.keyId, k2.keyId);
  assert.equal(k1.publicRaw.length, 32);
});

test("validateView rejects views for other gateways and malformed connections", () => {
  const v = (conns: fleet.ConnectionDef[], gw = "gw-a") => fleet.GatewayView.fromPartial({ gateway: gw, connections: conns });
  assert.equal(validateView(v([conn("a")]), "gw-a"), undefined);
  assert.match(validateView(v([conn("a")], "gw-b"), "gw-a")!, /not "gw-a"/);
  assert.match(validateView(v([conn("a"), conn("a")]), "gw-a")!, /duplicated/);
  assert.match(validateView(v([conn("bad name")]), "gw-a")!, /invalid/);
  assert.match(validateView(v([conn("p", { local: { auth: fleet.AuthMethod.AUTH_METHOD_PSK } as fleet.Endpoint })]), "gw-a")!, /secret_ref/);
});

test("fake engine: only changed connections are touched", async () => {
  const e = new FakeEngine();
  const cfg = (conns: fleet.ConnectionDef[]) => ({ revision: 1n, connections: conns, policyGroups: [], caCertificates: [] });
  let r = await e.apply(cfg([conn("a"), conn("b")]), () => undefined);
  assert.deepEqual([r.added, r.changed, r.removed], [["a", "b"], [], []]);
  r = await e.apply(cfg([conn("a", { revision: 9n }), conn("b", { dpdDelaySeconds: 10 }), conn("c")]), () => undefined);
  assert.deepEqual([r.added, r.changed, r.removed], [["c"], ["b"], []]);
  r = await e.apply(cfg([conn("c")]), () => undefined);
  assert.deepEqual(r.removed, ["a", "b"]);
});

test("fail static: without NATS the agent applies its persisted view at start", async (t) => {
  const dir = mkdtempSync(join(tmpdir(), "fs-static-"));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  new AgentState(dir).saveView(fleet.GatewayView.fromPartial({ gateway: "gw-a", revision: 42n, connections: [conn("a")] }));
  const engine = new FakeEngine();
  const registry = new Registry();
  const c = await runFleetClient({ natsUrl: "nats://127.0.0.1:1", gateway: "gw-a", stateDir: dir, engine, log, registry });
  t.after(() => c.stop());
  assert.equal(engine.applies.length, 1);
  assert.equal(engine.applies[0]!.config.revision, 42n);
  assert.equal(c.appliedRevision(), 42n);
  const text = await registry.metrics();
  assert.match(text, /fleetswan_agent_view_revision 42/);
  assert.match(text, /fleetswan_agent_apply_total\{outcome="ok"\} 1/);
  assert.match(text, /fleetswan_agent_nats_connected 0/);
});
