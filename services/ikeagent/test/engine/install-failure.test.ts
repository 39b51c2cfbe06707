/**
 * A CHILD SA whose installation fails part-way: a dataplane call that timed out under load
 * may still be carried out by the dataplane (the 50-gateway scale run: the hub's calls timed
 * out at load 18). Our end removes everything the CHILD SA may have put in the dataplane, and
 * an initiator deletes the peer's half (§1.4.1) before it tries again, so each end ends up
 * with exactly the one CHILD SA both know. Before: a stale outbound SA stayed in our
 * dataplane and the peer kept an orphaned CHILD SA next to the retried one.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { dataplane } from "@fleetswan/proto";
import { FakeNet, makeNode, conn, psk, until, cfg, type Node } from "./fake-net.js";

const MOON = "192.0.2.1";
const SUN = "192.0.2.2";

/** The next outbound addSa is carried out but reported as failed (a call that timed out). */
function failNextOutboundAdd(node: Node): { failed: () => number } {
  let failures = 0;
  const add = node.dp.addSa.bind(node.dp);
  node.dp.addSa = async (sa: dataplane.SecurityAssociation) => {
    await add(sa);
    if (sa.direction === dataplane.Direction.DIRECTION_OUT && failures === 0) {
      failures++;
      throw new Error("dataplane AddSa failed: Deadline exceeded");
    }
  };
  return { failed: () => failures };
}

const established = (n: Node) => n.engine.listSas({ connection: "" }).ikeSas.flatMap((s) => s.children);

for (const where of ["IKE_AUTH", "CREATE_CHILD_SA"] as const) {
  test(`initiator's outbound SA add times out but is carried out (${where}): rolled back here, deleted at the peer, retried: one CHILD SA at each end`, async () => {
    const net = new FakeNet();
    const moon = makeNode(net, MOON, 0xc1000001);
    const sun = makeNode(net, SUN, 0xc2000001);
    await sun.engine.apply(cfg([conn("net", SUN, MOON, ["10.2.0.0/16"], ["10.1.0.0/16"]), conn("net2", SUN, MOON, ["10.4.0.0/16"], ["10.3.0.0/16"])]), psk());
    await moon.engine.apply(cfg([conn("net", MOON, SUN, ["10.1.0.0/16"], ["10.2.0.0/16"]), conn("net2", MOON, SUN, ["10.3.0.0/16"], ["10.4.0.0/16"])]), psk());
    let probe = { failed: () => 0 };
    if (where === "IKE_AUTH") probe = failNextOutboundAdd(moon);
    await moon.engine.initiate({ connection: "net", wait: false, timeoutMs: 0 });
    await until(() => established(moon).filter((c) => c.state === 2).length === 1, 8000, "moon: CHILD SA of net");
    if (where === "CREATE_CHILD_SA") {
      // a second CHILD SA on the same IKE SA (CREATE_CHILD_SA)
      probe = failNextOutboundAdd(moon);
      await moon.engine.initiate({ connection: "net2", wait: false, timeoutMs: 0 });
    }
    const want = where === "IKE_AUTH" ? 1 : 2;
    // The retry comes 1-3 s later (IKE_AUTH) or on the next initiate (CREATE_CHILD_SA).
    if (where === "CREATE_CHILD_SA") {
      await until(() => moon.events.some((e) => e.code && e.connection === "net2"), 8000, "moon: net2 failed once");
      await moon.engine.initiate({ connection: "net2", wait: false, timeoutMs: 0 });
    }
    await until(() => established(moon).filter((c) => c.state === 2).length === want && established(sun).length === want, 8000, `moon and sun: ${want} CHILD SA(s)`);
    await new Promise((r) => setTimeout(r, 300));
    assert.equal(probe.failed(), 1, "the outbound add failed once");
    const mine = established(moon);
    const theirs = established(sun);
    assert.equal(mine.length, want, `moon holds ${want} CHILD SA(s): ${JSON.stringify(mine.map((c) => c.name))}`);
    assert.equal(theirs.length, want, `sun holds ${want} CHILD SA(s), none orphaned: ${JSON.stringify(theirs.map((c) => [c.name, c.spiIn, c.spiOut]))}`);
    for (const c of mine) assert.ok(theirs.some((t) => t.spiIn === c.spiOut && t.spiOut === c.spiIn), `moon's CHILD SA ${c.name} pairs with one of sun's`);
    // moon's dataplane holds exactly the SAs of the CHILD SAs both ends know: no stale outbound SA.
    const spis = (n: Node) => [...n.dp.sas.values()].map((s) => s.id!.spi).sort();
    assert.deepEqual(spis(moon), mine.flatMap((c) => [c.spiIn, c.spiOut]).sort(), "moon's dataplane: only the live CHILD SAs' SAs");
    assert.deepEqual(spis(sun), theirs.flatMap((c) => [c.spiIn, c.spiOut]).sort(), "sun's dataplane: only the live CHILD SAs' SAs");
    await Promise.all([moon.engine.stop({ keepSas: true }), sun.engine.stop({ keepSas: true })]);
  });
}

test("responder's policy install fails in IKE_AUTH: its SAs are removed again, the IKE SA stands, the initiator's retry makes the one CHILD SA", async () => {
  const net = new FakeNet();
  const moon = makeNode(net, MOON, 0xc1000001);
  const sun = makeNode(net, SUN, 0xc2000001);
  let failures = 0;
  const addPolicy = sun.dp.addPolicy.bind(sun.dp);
  sun.dp.addPolicy = async (p: dataplane.Policy) => {
    await addPolicy(p);
    if (failures++ === 0) throw new Error("dataplane AddPolicy failed: Deadline exceeded");
  };
  await sun.engine.apply(cfg([conn("net", SUN, MOON, ["10.2.0.0/16"], ["10.1.0.0/16"])]), psk());
  await moon.engine.apply(cfg([conn("net", MOON, SUN, ["10.1.0.0/16"], ["10.2.0.0/16"])]), psk());
  await moon.engine.initiate({ connection: "net", wait: false, timeoutMs: 0 });
  await until(() => established(moon).filter((c) => c.state === 2).length === 1 && established(sun).length === 1, 8000, "one CHILD SA at each end");
  await new Promise((r) => setTimeout(r, 300));
  const [m] = established(moon);
  const [s] = established(sun);
  assert.ok(m && s && m.spiIn === s.spiOut && m.spiOut === s.spiIn, "the CHILD SAs pair up");
  const spis = (n: Node) => [...n.dp.sas.values()].map((x) => x.id!.spi).sort();
  assert.deepEqual(spis(sun), [s!.spiIn, s!.spiOut].sort(), "sun's dataplane: the first attempt's SAs are gone");
  assert.equal(sun.engine.listSas({ connection: "" }).ikeSas.length, 1, "one IKE SA at sun");
  await Promise.all([moon.engine.stop({ keepSas: true }), sun.engine.stop({ keepSas: true })]);
});
