/**
 * Simultaneous IKE SA rekey (RFC 7296 §2.8.1): both ends send
 *
 *   HDR, SK {SA(IKE, new SPIi), Ni, KEi} -->      <-- HDR, SK {SA(IKE, new SPIi'), Ni', KEi'}
 *
 * on the same IKE SA at once, and each answers the other. Two new IKE SAs exist; "the SA
 * created with the lowest of the four nonces" is redundant and is deleted by the end that
 * initiated it; the other end (whose new SA survives) deletes the old IKE SA. The CHILD SA
 * must end up on the surviving IKE SA on both ends, untouched in the dataplane, and both
 * ends must agree on one IKE SA. Run many times so both ends win and lose, with the
 * messages crossing in the usual order and with one direction delayed (a response
 * overtaking the other end's request).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { FakeNet, makeNode, conn, psk, until, cfg, type Datagram, type Node } from "./fake-net.js";

const MOON = "192.0.2.1";
const SUN = "192.0.2.2";
const SLOW = { timeoutMs: 1000, base: 1.8, tries: 3 };

async function pair() {
  const net = new FakeNet();
  // Retransmission after 1 s: a loaded machine must not turn these into retransmit tests.
  const moon = makeNode(net, MOON, 0xc1000001, { retransmit: SLOW });
  const sun = makeNode(net, SUN, 0xc2000001, { retransmit: SLOW });
  await moon.engine.apply(cfg([conn("net", MOON, SUN, ["10.1.0.0/16"], ["10.2.0.0/16"])]), psk());
  await sun.engine.apply(cfg([conn("net", SUN, MOON, ["10.2.0.0/16"], ["10.1.0.0/16"])]), psk());
  const r = await moon.engine.initiate({ connection: "net", wait: true, timeoutMs: 5000 });
  assert.equal(r.ok, true, r.message);
  await until(() => sun.events.some((e) => e.kind === "child_up"));
  return { net, moon, sun, stop: async () => Promise.all([moon.engine.stop({ keepSas: true }), sun.engine.stop({ keepSas: true })]) };
}

const ikeSas = (n: Node) => n.engine.listSas({ connection: "" }).ikeSas;

/** Both ends hold exactly one IKE SA (established, same SPIs) with the one CHILD SA. */
function settled(moon: Node, sun: Node): boolean {
  const m = ikeSas(moon);
  const s = ikeSas(sun);
  return m.length === 1 && s.length === 1 && m[0]!.state === 2 && s[0]!.state === 2 && m[0]!.initiatorSpi === s[0]!.initiatorSpi && m[0]!.responderSpi === s[0]!.responderSpi && m[0]!.children.length === 1 && s[0]!.children.length === 1 && !moon.engine.sasOf("net").some((x) => x.tm.active || x.tm.queued.length) && !sun.engine.sasOf("net").some((x) => x.tm.active || x.tm.queued.length);
}

function describe(moon: Node, sun: Node): string {
  const d = (n: Node) => JSON.stringify(ikeSas(n).map((s) => ({ st: s.state, i: s.initiatorSpi.slice(0, 6), r: s.responderSpi.slice(0, 6), ch: s.children.map((c) => `${c.spiIn.toString(16)}:${c.state}`) })));
  return `moon ${d(moon)} sun ${d(sun)}`;
}

async function collide(net: FakeNet, moon: Node, sun: Node, rounds: number, label: string): Promise<{ moonWins: number; sunWins: number }> {
  const child = ikeSas(moon)[0]!.children[0]!;
  const dpBefore = { moon: [...moon.dp.sas.keys()].sort(), sun: [...sun.dp.sas.keys()].sort() };
  let moonWins = 0;
  let sunWins = 0;
  for (let i = 0; i < rounds; i++) {
    const before = ikeSas(moon)[0]!;
    const n = net.wire.length;
    moon.logs.length = 0;
    sun.logs.length = 0;
    // Both: HDR, SK {SA(IKE), Ni, KEi} --> at the same time, on the same IKE SA.
    assert.ok(moon.engine.rekeyIke("net"));
    assert.ok(sun.engine.rekeyIke("net"));
    await until(() => settled(moon, sun) && ikeSas(moon)[0]!.initiatorSpi !== before.initiatorSpi, 5000, `${label} round ${i}: collision resolved (${describe(moon, sun)})`);
    const m = ikeSas(moon)[0]!;
    // The CHILD SA moved to the surviving IKE SA and is untouched in the dataplane.
    assert.equal(m.children[0]!.spiIn, child.spiIn, `${label} round ${i}: CHILD SA kept`);
    assert.deepEqual([...moon.dp.sas.keys()].sort(), dpBefore.moon);
    assert.deepEqual([...sun.dp.sas.keys()].sort(), dpBefore.sun);
    // Two rekey requests crossed, then the old SA and (if both rekeys completed) the
    // redundant new SA were deleted. When one end's request arrives only after its old SA
    // is gone, that rekey never happened: one delete.
    // Distinct messages (by sender and message ID): retransmissions do not count.
    const what = [...new Set(net.wire.slice(n).map((d) => `${d.from.address} ${d.what}`))].map((w) => w.replace(/^\S+ /, "").replace(/ \d+$/, ""));
    assert.equal(what.filter((w) => w === "CREATE_CHILD_SA request").length, 2, `${label} round ${i}: ${what.join(", ")}`);
    const deletes = what.filter((w) => w === "INFORMATIONAL request").length;
    assert.ok(deletes === 2 || (label !== "in order" && deletes === 1), `${label} round ${i}: ${what.join(", ")}`);
    // The winner initiated the surviving SA.
    if (m.initiator) moonWins++;
    else sunWins++;
    // Nobody reported the IKE SA as down: the connection stayed up throughout.
    for (const node of [moon, sun]) assert.ok(!node.events.some((e) => e.kind === "ike_down"), `${label} round ${i}: ike_down on ${node.address}: ${node.events.filter((e) => e.kind === "ike_down").map((e) => e.message).join("; ")}`);
  }
  return { moonWins, sunWins };
}

test("simultaneous IKE SA rekey (§2.8.1): one surviving IKE SA, CHILD SA kept, both ends win sometimes", async () => {
  const { net, moon, sun, stop } = await pair();
  const r = await collide(net, moon, sun, 24, "in order");
  assert.ok(r.moonWins > 0 && r.sunWins > 0, `both ends should win some rounds: ${JSON.stringify(r)}`);
  await stop();
});

test("simultaneous IKE SA rekey with one direction delayed: a response overtakes the peer's request", async () => {
  const { net, moon, sun, stop } = await pair();
  // Moon's CREATE_CHILD_SA requests reach sun late: sun's own rekey completes first at sun
  // (no collision seen there), while moon sees sun's request during its own rekey.
  const delay = (from: string, to: string, ms: number) => (d: Datagram) => {
    if (d.from.address === from && d.what.startsWith("CREATE_CHILD_SA request")) {
      setTimeout(() => net.nodes.get(to)!.receive({ ...d.to }, { ...d.from }, Buffer.from(d.data)), ms);
      return false;
    }
    return true;
  };
  for (const ms of [0, 2, 10, 40]) {
    net.filter = delay(MOON, SUN, ms);
    await collide(net, moon, sun, 4, `moon delayed ${ms} ms`);
    net.filter = delay(SUN, MOON, ms);
    await collide(net, moon, sun, 4, `sun delayed ${ms} ms`);
  }
  await stop();
});

test("IKE SA rekey while the peer rekeys a CHILD SA: both complete", async () => {
  const { moon, sun, stop } = await pair();
  const child = ikeSas(moon)[0]!.children[0]!;
  const spi = ikeSas(moon)[0]!.initiatorSpi;
  assert.ok(moon.engine.rekeyIke("net"));
  assert.ok(sun.engine.rekeyChild("net"));
  // §2.25: the CHILD rekey may be refused with TEMPORARY_FAILURE and retried (2-6 s) on the new IKE SA.
  await until(() => settled(moon, sun) && ikeSas(moon)[0]!.initiatorSpi !== spi && ikeSas(moon)[0]!.children[0]!.spiIn !== child.spiIn && moon.dp.sas.size === 2 && sun.dp.sas.size === 2, 10000, `IKE and CHILD rekey (${describe(moon, sun)})`);
  await stop();
});
