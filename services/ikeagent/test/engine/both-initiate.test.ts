/**
 * Both ends initiate (start_action start on both): duplicate IKE SAs, uniqueids
 * replacement, and the CHILD SAs they carry. Whatever is deleted, the connection's
 * policies must stay in both dataplanes while a CHILD SA of it is installed, and
 * both ends end with exactly one IKE SA and one CHILD SA.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { dataplane, fleet } from "@fleetswan/proto";
import { FakeNet, makeNode, conn, psk, until, cfg, type Node } from "./fake-net.js";

const MOON = "192.0.2.1";
const SUN = "192.0.2.2";

function installedChildren(n: Node) {
  return n.engine.listSas({ connection: "" }).ikeSas.filter((s) => s.state === 2).flatMap((s) => s.children).filter((c) => c.state === 2);
}
function protectPolicies(n: Node) {
  return [...n.dp.policies.values()].filter((p) => p.action === dataplane.PolicyAction.POLICY_ACTION_PROTECT);
}

for (let round = 0; round < 8; round++) {
  test(`both ends initiate at once (round ${round}): one IKE SA and one CHILD SA remain, policies stay in both dataplanes`, async () => {
    const net = new FakeNet();
    const moon = makeNode(net, MOON, 0xc1000001);
    const sun = makeNode(net, SUN, 0xc2000001);
    const start = { startAction: fleet.StartAction.START_ACTION_START, keyingTries: 3 };
    // Retransmitted IKE_SA_INIT requests (a loaded machine) are what made the old SA's removal race the new one's install.
    if (round % 2) net.filter = (d) => !(d.what === "IKE_SA_INIT response 0" && Math.random() < 0.5);
    await Promise.all([
      moon.engine.apply(cfg([conn("net", MOON, SUN, ["10.1.0.0/16"], ["10.2.0.0/16"], start)]), psk()),
      sun.engine.apply(cfg([conn("net", SUN, MOON, ["10.2.0.0/16"], ["10.1.0.0/16"], start)]), psk()),
    ]);
    net.filter = () => true;
    await until(() => installedChildren(moon).length >= 1 && installedChildren(sun).length >= 1, 5000, "a CHILD SA on both ends");
    // Let duplicate handling and deletes settle.
    await until(() => {
      const a = moon.engine.listSas({ connection: "" }).ikeSas;
      const b = sun.engine.listSas({ connection: "" }).ikeSas;
      return a.length === 1 && b.length === 1 && a[0]!.state === 2 && b[0]!.state === 2 && installedChildren(moon).length === 1 && installedChildren(sun).length === 1;
    }, 5000, "one IKE SA and one CHILD SA per end");
    await new Promise((r) => setTimeout(r, 300));
    for (const n of [moon, sun]) {
      assert.equal(n.engine.listSas({ connection: "" }).ikeSas.length, 1, `${n.address}: one IKE SA`);
      assert.equal(installedChildren(n).length, 1, `${n.address}: one CHILD SA`);
      assert.equal(protectPolicies(n).length, 3, `${n.address}: out, in and fwd policies present (calls: ${n.dp.calls.filter((c) => /Policy/.test(c)).join("; ")})`);
      assert.equal(n.dp.saList("in").length, 1, `${n.address}: one inbound SA`);
      assert.equal(n.dp.saList("out").length, 1, `${n.address}: one outbound SA`);
    }
    const [ca, cb] = [installedChildren(moon)[0]!, installedChildren(sun)[0]!];
    assert.equal(ca.spiIn, cb.spiOut);
    assert.equal(ca.spiOut, cb.spiIn);
    await Promise.all([moon.engine.stop({ keepSas: true }), sun.engine.stop({ keepSas: true })]);
  });
}

test("policies are reference-counted: removing a superseded CHILD SA while the new one's policies are still being installed keeps them", async () => {
  const { PolicyTable } = await import("../../src/ike/engine/policies.js");
  const { FakeDataplane } = await import("../../src/ike/engine/dataplane-fake.js");
  const { createLogger } = await import("@fleetswan/common");
  const dp = new FakeDataplane();
  // A dataplane whose calls take a while and complete out of order (as gRPC calls may).
  const slow = Object.create(dp) as typeof dp;
  slow.addPolicy = (p) => new Promise((r) => setTimeout(() => r(dp.addPolicy(p)), 20));
  slow.deletePolicy = (s, d) => new Promise((r) => setTimeout(() => r(dp.deletePolicy(s, d)), 5));
  const t = new PolicyTable(slow, createLogger("t", { level: "silent" }));
  const pol = (dir: dataplane.Direction): dataplane.Policy => dataplane.Policy.fromPartial({ selector: { src: { address: "10.1.0.0", length: 16 }, dst: { address: "10.2.0.0", length: 16 } }, direction: dir, action: dataplane.PolicyAction.POLICY_ACTION_PROTECT, template: { reqid: 1, protocol: 50 }, connection: "net" });
  const set = [pol(dataplane.Direction.DIRECTION_OUT), pol(dataplane.Direction.DIRECTION_IN)];
  await t.acquire(1, set); // old CHILD SA
  const installing = t.acquire(2, set); // new CHILD SA, in flight
  await t.release(1, set); // old one removed meanwhile
  await installing;
  assert.equal(dp.policies.size, 2, "the new CHILD SA's policies are there");
  await t.release(2, set);
  assert.equal(dp.policies.size, 0, "gone with the last CHILD SA");
  // reassert: a dataplane that lost them gets them back
  await t.acquire(3, set);
  dp.policies.clear();
  assert.deepEqual(await t.reassert(), ["net"]);
  assert.equal(dp.policies.size, 2);
});

test("a dataplane failure while the responder installs the first CHILD SA fails only the CHILD SA: IKE SA kept on both ends, CHILD SA created again", async () => {
  const net = new FakeNet();
  const moon = makeNode(net, MOON, 0xc1000001);
  const sun = makeNode(net, SUN, 0xc2000001);
  await moon.engine.apply(cfg([conn("net", MOON, SUN, ["10.1.0.0/16"], ["10.2.0.0/16"])]), psk());
  await sun.engine.apply(cfg([conn("net", SUN, MOON, ["10.2.0.0/16"], ["10.1.0.0/16"])]), psk());
  const addSa = sun.dp.addSa.bind(sun.dp);
  let fail = 1;
  sun.dp.addSa = async (sa) => {
    if (fail-- > 0) throw new Error("dataplace AddSa failed: deadline exceeded");
    return addSa(sa);
  };
  await moon.engine.initiate({ connection: "net", wait: false, timeoutMs: 0 });
  await until(() => installedChildren(moon).length === 1 && installedChildren(sun).length === 1, 8000, "CHILD SA on both ends after the retry");
  for (const n of [moon, sun]) assert.equal(n.engine.listSas({ connection: "" }).ikeSas.length, 1, `${n.address}: the one IKE SA`);
  assert.ok(!moon.events.some((e) => e.kind === "ike_down"), "the IKE SA never went down");
  await Promise.all([moon.engine.stop({ keepSas: true }), sun.engine.stop({ keepSas: true })]);
});

for (let round = 0; round < 4; round++) {
  test(`a peer that restarts seconds after establishing (INITIAL_CONTACT) replaces its stale IKE SA, whatever the nonces say (round ${round})`, async () => {
    const net = new FakeNet();
    let moon = makeNode(net, MOON, 0xc1000001);
    const sun = makeNode(net, SUN, 0xc2000001);
    const def = conn("net", MOON, SUN, ["10.1.0.0/16"], ["10.2.0.0/16"]);
    await moon.engine.apply(cfg([def]), psk());
    await sun.engine.apply(cfg([conn("net", SUN, MOON, ["10.2.0.0/16"], ["10.1.0.0/16"])]), psk());
    // The IKE SA that goes stale was initiated by the end that does not restart.
    await sun.engine.initiate({ connection: "net", wait: true, timeoutMs: 5000 });
    await until(() => installedChildren(moon).length === 1, 5000, "first CHILD SA");
    // kill -9 of moon's agent, a new one starts at once and initiates (it sends INITIAL_CONTACT).
    await moon.engine.stop({ keepSas: true });
    moon = makeNode(net, MOON, 0xc3000001);
    await moon.engine.apply(cfg([def]), psk());
    await moon.engine.initiate({ connection: "net", wait: true, timeoutMs: 5000 });
    await until(() => sun.engine.listSas({ connection: "" }).ikeSas.length === 1 && installedChildren(sun).length === 1, 5000, "the stale IKE SA gone on sun");
    const [ca, cb] = [installedChildren(moon)[0]!, installedChildren(sun)[0]!];
    assert.equal(cb.spiOut, ca.spiIn, "sun's CHILD SA is the one the restarted moon has");
    assert.equal(protectPolicies(sun).length, 3);
    await Promise.all([moon.engine.stop({ keepSas: true }), sun.engine.stop({ keepSas: true })]);
  });
}
