/**
 * IKE fragmentation (RFC 7383) between two engines: both announce
 * IKEV2_FRAGMENTATION_SUPPORTED in IKE_SA_INIT (§2.3); a protected message larger than the
 * path limit goes out as SKF fragments of one message ID (§2.5), each no larger than the
 * limit; the receiver verifies each and reassembles (§2.6); a lost fragment is recovered by
 * retransmitting all of them (§2.6.1).
 *
 *   HDR, SA, KEi, Ni, N(NAT_D..), N(SIGNATURE_HASH_ALGORITHMS), N(IKEV2_FRAGMENTATION_SUPPORTED) -->
 *                  <-- HDR, SA, KEr, Nr, N(NAT_D..), N(..), N(IKEV2_FRAGMENTATION_SUPPORTED)
 *   HDR, SKF(1/n) {IDi ...} --> ... HDR, SKF(n/n) {...} -->
 *                  <-- HDR, SKF(1/m) {IDr ...} ... <-- HDR, SKF(m/m) {...}
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { decodeMessage, NotifyType, PayloadType, type NotifyPayload } from "../../src/ike/wire/index.js";
import { FakeNet, makeNode, conn, psk, until, cfg, distinct, type Datagram } from "./fake-net.js";

const MOON = "192.0.2.1";
const SUN = "192.0.2.2";
const LIMIT = 160;

async function pair(limit = LIMIT) {
  const net = new FakeNet();
  const moon = makeNode(net, MOON, 0xc1000001, { fragmentSize: limit });
  const sun = makeNode(net, SUN, 0xc2000001, { fragmentSize: limit });
  await moon.engine.apply(cfg([conn("net", MOON, SUN, ["10.1.0.0/16"], ["10.2.0.0/16"])]), psk());
  await sun.engine.apply(cfg([conn("net", SUN, MOON, ["10.2.0.0/16"], ["10.1.0.0/16"])]), psk());
  return { net, moon, sun, stop: async () => Promise.all([moon.engine.stop({ keepSas: true }), sun.engine.stop({ keepSas: true })]) };
}

const skf = (d: Datagram) => decodeMessage(d.data).encrypted?.type === PayloadType.SKF;
const announces = (d: Datagram) => decodeMessage(d.data).payloads.some((p) => p.type === PayloadType.NOTIFY && (p as NotifyPayload).notifyType === NotifyType.IKEV2_FRAGMENTATION_SUPPORTED);

test("IKE_AUTH larger than the limit goes out as SKF fragments both ways and is reassembled", async () => {
  const { net, moon, sun, stop } = await pair();
  const r = await moon.engine.initiate({ connection: "net", wait: true, timeoutMs: 5000 });
  assert.equal(r.ok, true, r.message);
  await until(() => sun.events.some((e) => e.kind === "child_up"));
  // §2.3: both announced support in IKE_SA_INIT.
  assert.ok(announces(net.wire[0]!) && announces(net.wire[1]!), "IKEV2_FRAGMENTATION_SUPPORTED in request and response");
  const req = net.wire.filter((d) => d.what === "IKE_AUTH request 1");
  const resp = net.wire.filter((d) => d.what === "IKE_AUTH response 1");
  assert.ok(req.length >= 2 && resp.length >= 2, `fragments: ${req.length} request, ${resp.length} response`);
  for (const d of [...req, ...resp]) {
    assert.ok(skf(d), "every fragment is an SKF message");
    assert.ok(d.data.length <= LIMIT, `fragment of ${d.data.length} octets > ${LIMIT}`);
  }
  const first = decodeMessage(req[0]!.data).encrypted!;
  assert.equal(first.type, PayloadType.SKF);
  if (first.type === PayloadType.SKF) {
    assert.equal(first.fragmentNumber, 1);
    assert.equal(first.totalFragments, req.length);
    assert.equal(first.innerFirst, PayloadType.IDi);
  }
  // The SAs work: a CHILD rekey over fragmented CREATE_CHILD_SA and INFORMATIONAL.
  const n = net.wire.length;
  assert.ok(sun.engine.rekeyChild("net"));
  await until(() => sun.events.some((e) => e.kind === "rekey") && moon.dp.sas.size === 2 && sun.dp.sas.size === 2, 5000, "CHILD rekey");
  assert.ok(net.wire.slice(n).some(skf), "later exchanges fragment too when large");
  await stop();
});

test("a lost fragment: the whole request is retransmitted and reassembled", async () => {
  const { net, moon, sun, stop } = await pair();
  const alive = setInterval(() => {}, 1000); // the engine's retransmission timers are unref'd
  let dropped = 0;
  // Lose the second fragment of the first IKE_AUTH request (once).
  net.filter = (d) => {
    if (d.what === "IKE_AUTH request 1" && dropped === 0 && skf(d)) {
      const e = decodeMessage(d.data).encrypted!;
      if (e.type === PayloadType.SKF && e.fragmentNumber === 2) {
        dropped++;
        return false;
      }
    }
    return true;
  };
  const r = await moon.engine.initiate({ connection: "net", wait: true, timeoutMs: 5000 });
  assert.equal(r.ok, true, r.message);
  assert.equal(dropped, 1);
  const req = net.wire.filter((d) => d.what === "IKE_AUTH request 1");
  const total = (decodeMessage(req[0]!.data).encrypted as { totalFragments: number }).totalFragments;
  assert.ok(req.length >= 2 * total, `all ${total} fragments resent (${req.length} sent)`);
  await until(() => sun.events.some((e) => e.kind === "child_up"));
  clearInterval(alive);
  await stop();
});

test("under the limit nothing is fragmented", async () => {
  const { net, moon, sun, stop } = await pair(1232);
  const r = await moon.engine.initiate({ connection: "net", wait: true, timeoutMs: 5000 });
  assert.equal(r.ok, true, r.message);
  assert.ok(!net.wire.some(skf));
  assert.deepEqual(distinct(net.wire), ["IKE_SA_INIT request 0", "IKE_SA_INIT response 0", "IKE_AUTH request 1", "IKE_AUTH response 1"]);
  void sun;
  await stop();
});
