/**
 * A connection whose secret has not arrived yet (a fleet agent gets its view before keymgr
 * has sealed the PSK to it) is configured but not initiated: it could not authenticate, and
 * the apply that brings the secret changes the connection, which abandons any IKE SA still
 * in IKE_SA_INIT. The peer then keeps that half-open SA until its own timeout (strongSwan
 * lists it as "(unnamed) CONNECTING" for 30 s).
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
  assert.deepEqual(res.changed, ["net"], "the secret's arrival changes the connection");
  await until(() => sun.engine.listSas({ connection: "" }).ikeSas.some((s) => s.state === 2 && s.children.length === 1), 5000, "IKE SA and CHILD SA at sun");
  await new Promise((r) => setTimeout(r, 200));
  const inits = net.wire.filter((d) => d.what === "IKE_SA_INIT request 0" && d.from.address === MOON);
  assert.equal(new Set(inits.map((d) => d.data.subarray(0, 8).toString("hex"))).size, 1, "one IKE SA initiated (one initiator SPI in IKE_SA_INIT requests)");
  const sas = sun.engine.listSas({ connection: "" }).ikeSas;
  assert.deepEqual(sas.map((s) => s.state), [2], `sun holds the established IKE SA only (no half-open one): ${JSON.stringify(sas.map((s) => ({ name: s.name, state: s.state })))}`);
  await Promise.all([moon.engine.stop({ keepSas: true }), sun.engine.stop({ keepSas: true })]);
});
