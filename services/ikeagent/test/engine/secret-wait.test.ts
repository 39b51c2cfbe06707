/**
 * A connection whose secret has not arrived yet (a fleet agent gets its view before keymgr
 * has sealed the PSK to it) is configured but not initiated: it could not authenticate. The
 * secret's arrival is no change of the connection: it starts it (start action start), and an
 * IKE SA in progress goes on. Before, the arrival changed the connection: an IKE SA begun
 * without the secret was abandoned after IKE_SA_INIT (the peer kept it half-open: strongSwan's
 * "(unnamed) CONNECTING" for 30 s), and a responder's IKE SA between IKE_SA_INIT and IKE_AUTH
 * was dropped silently (the initiator retransmitted IKE_AUTH into the void: the 50-gateway
 * scale run's spokes held a second IKE SA for minutes).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { fleet } from "@fleetswan/proto";
import { FakeNet, makeNode, conn, psk, until, cfg } from "./fake-net.js";

const MOON = "192.0.2.1";
const SUN = "192.0.2.2";

test("start action start without the secret: no IKE_SA_INIT until the secret arrives, then one IKE SA and no half-open SA at the peer", async () => {
  const net = new FakeNet();
  const moon = makeNode(net, MOON, 0xc1000001);
  const sun = makeNode(net, SUN, 0xc2000001);
  await sun.engine.apply(cfg([conn("net", SUN, MOON, ["10.2.0.0/16"], ["10.1.0.0/16"])]), psk());
  const def = conn("net", MOON, SUN, ["10.1.0.0/16"], ["10.2.0.0/16"], { startAction: fleet.StartAction.START_ACTION_START });
  // the view, then its secret a moment later (as the fleet agent applies them)
  await moon.engine.apply(cfg([def]), () => undefined);
  await new Promise((r) => setTimeout(r, 20));
  assert.deepEqual(net.wire.map((d) => d.what), [], "nothing sent while the secret is missing");
  assert.deepEqual(moon.engine.listConnections().connections.map((c) => c.name), ["net"], "the connection is configured");
  const res = await moon.engine.apply(cfg([def]), psk());
  assert.deepEqual([res.added, res.changed, res.removed], [[], [], []], "the secret's arrival is no change of the connection");
  await until(() => sun.engine.listSas({ connection: "" }).ikeSas.some((s) => s.state === 2 && s.children.length === 1), 5000, "IKE SA and CHILD SA at sun");
  await new Promise((r) => setTimeout(r, 200));
  const inits = net.wire.filter((d) => d.what === "IKE_SA_INIT request 0" && d.from.address === MOON);
  assert.equal(new Set(inits.map((d) => d.data.subarray(0, 8).toString("hex"))).size, 1, "one IKE SA initiated (one initiator SPI in IKE_SA_INIT requests)");
  const sas = sun.engine.listSas({ connection: "" }).ikeSas;
  assert.deepEqual(sas.map((s) => s.state), [2], `sun holds the established IKE SA only (no half-open one): ${JSON.stringify(sas.map((s) => ({ name: s.name, state: s.state })))}`);
  await Promise.all([moon.engine.stop({ keepSas: true }), sun.engine.stop({ keepSas: true })]);
});

test("the responder's secret arrives between IKE_SA_INIT and IKE_AUTH: the IKE SA in progress completes (no second IKE SA, no failure)", async () => {
  const net = new FakeNet();
  const moon = makeNode(net, MOON, 0xc1000001);
  const sun = makeNode(net, SUN, 0xc2000001);
  const sunDef = conn("net", SUN, MOON, ["10.2.0.0/16"], ["10.1.0.0/16"]);
  await sun.engine.apply(cfg([sunDef]), () => undefined);
  // hold moon's IKE_AUTH until sun has its secret (retransmissions carry it afterwards)
  let hold = true;
  net.filter = (d) => !(hold && d.what === "IKE_AUTH request 1");
  await moon.engine.apply(cfg([conn("net", MOON, SUN, ["10.1.0.0/16"], ["10.2.0.0/16"], { keyingTries: 3 })]), psk());
  await moon.engine.initiate({ connection: "net", wait: false, timeoutMs: 0 });
  await until(() => net.wire.some((d) => d.what === "IKE_AUTH request 1"), 5000, "moon's IKE_AUTH sent");
  const res = await sun.engine.apply(cfg([sunDef]), psk());
  assert.deepEqual(res.changed, [], "the secret's arrival is no change of the connection");
  hold = false;
  await until(() => moon.engine.listSas({ connection: "" }).ikeSas.some((s) => s.state === 2 && s.children.length === 1), 5000, "moon's IKE SA and CHILD SA");
  await new Promise((r) => setTimeout(r, 200));
  const spis = new Set(net.wire.filter((d) => d.what === "IKE_SA_INIT request 0").map((d) => d.data.subarray(0, 8).toString("hex")));
  assert.equal(spis.size, 1, "one IKE SA initiated");
  assert.deepEqual(moon.events.filter((e) => e.code).map((e) => `${e.kind} ${e.code}`), [], "no failure at moon");
  for (const n of [moon, sun]) assert.deepEqual(n.engine.listSas({ connection: "" }).ikeSas.map((s) => s.state), [2], `${n.address}: the one IKE SA, established`);
  await Promise.all([moon.engine.stop({ keepSas: true }), sun.engine.stop({ keepSas: true })]);
});
