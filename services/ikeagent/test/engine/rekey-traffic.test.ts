/**
 * CHILD SA rekeys as the traffic sees them: after every dataplane call on either end, the
 * outbound SA each end's dataplane would use (the newest outbound SA of the reqid, as the
 * userspace and xfrm dataplanes pick it) must be one the other end can decrypt (an inbound
 * SA there), and an inbound SA that the peer sent on moments ago must not vanish at once.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { dataplane } from "@fleetswan/proto";
import { FakeNet, makeNode, conn, psk, until, cfg, type Node } from "./fake-net.js";
import { FakeDataplane } from "../../src/ike/engine/dataplane-fake.js";

const MOON = "192.0.2.1";
const SUN = "192.0.2.2";

/** The outbound SA a dataplane sends on now: the newest added (insertion order of the fake's map). */
function sendingSpi(dp: FakeDataplane): number | undefined {
  return dp.saList("out").pop()?.id?.spi;
}

test("CHILD SA rekeys from either side, one after another: neither end ever sends on an SA the other cannot decrypt; the old inbound SA outlives the delete briefly", async () => {
  const net = new FakeNet();
  const moon = makeNode(net, MOON, 0xc1000001);
  const sun = makeNode(net, SUN, 0xc2000001);
  await moon.engine.apply(cfg([conn("net", MOON, SUN, ["10.1.0.0/16"], ["10.2.0.0/16"])]), psk());
  await sun.engine.apply(cfg([conn("net", SUN, MOON, ["10.2.0.0/16"], ["10.1.0.0/16"])]), psk());
  // Delay every datagram a little so responses are really "in flight" while the other end acts.
  const nodes = net.nodes;
  const violations: string[] = [];
  const check = (where: string): void => {
    for (const [from, to] of [[moon, sun], [sun, moon]] as [Node, Node][]) {
      const spi = sendingSpi(from.dp);
      if (spi === undefined) continue;
      if (!to.dp.saList("in").some((s) => s.id?.spi === spi)) violations.push(`${where}: ${from.address} sends on 0x${spi.toString(16)}, which ${to.address} has no inbound SA for`);
    }
  };
  for (const n of [moon, sun]) {
    for (const m of ["addSa", "deleteSa"] as const) {
      const orig = n.dp[m].bind(n.dp) as (...a: unknown[]) => Promise<void>;
      (n.dp as unknown as Record<string, unknown>)[m] = async (...a: unknown[]) => {
        await orig(...a);
        check(`${n.address} ${m} 0x${((a[0] as dataplane.SecurityAssociation).id ?? (a[0] as dataplane.SaId)).spi?.toString(16)}`);
      };
    }
  }
  void nodes;
  const r = await moon.engine.initiate({ connection: "net", wait: true, timeoutMs: 5000 });
  assert.equal(r.ok, true, r.message);
  await until(() => sun.dp.saList("out").length === 1, 5000, "sun outbound");
  violations.length = 0; // (the first CHILD SA is installed by the responder before the initiator has it: no traffic yet)
  for (const who of [moon, sun, moon, sun]) {
    const before = who.dp.saList("in").map((s) => s.id!.spi);
    who.events.length = 0;
    assert.ok(who.engine.rekeyChild("net"));
    await until(() => who.events.some((e) => e.kind === "rekey") && moon.dp.saList("out").length === 1 && sun.dp.saList("out").length === 1, 5000, "rekey done");
    await until(() => net.wire.slice(-1)[0]?.what.startsWith("INFORMATIONAL response") ?? false, 5000, "delete exchange done");
    await new Promise((r) => setTimeout(r, 50));
    // The delete exchange is over; the old inbound SA is still there for packets in flight...
    assert.ok(who.dp.saList("in").some((s) => before.includes(s.id!.spi)), `${who.address}: old inbound SA kept after the delete`);
    // ... and goes after the grace period.
    await until(() => moon.dp.saList("in").length === 1 && sun.dp.saList("in").length === 1, 4000, "old inbound SAs removed after the delay");
  }
  assert.deepEqual(violations, []);
  await Promise.all([moon.engine.stop({ keepSas: true }), sun.engine.stop({ keepSas: true })]);
});
