/**
 * The responder's IKE_SA_INIT key work in crypto worker threads (src/ike/crypto/ke-offload.ts):
 * the pool computes what the inline path computes, refuses invalid KE data, and an engine
 * using it completes handshakes, answering a retransmitted IKE_SA_INIT that arrives while
 * the keys are still being computed with the same response (RFC 7296 §2.1), once.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { DhId, EncrId, IntegId, PrfId } from "../../src/ike/wire/index.js";
import { createKeyExchange, deriveInitialIkeKeys } from "../../src/ike/crypto/index.js";
import { InlineKeyExchange, KeyExchangePool, type KeyExchangeRunner } from "../../src/ike/crypto/ke-offload.js";
import { FakeNet, makeNode, conn, psk, until, cfg } from "./fake-net.js";

const hex = (b: Buffer) => b.toString("hex");

for (const [name, make] of [["inline", () => new InlineKeyExchange()], ["worker pool", () => new KeyExchangePool(2)]] as const) {
  test(`${name}: KEr and the IKE SA keys agree with the initiator's computation (§2.14); bad KE data is refused (RFC 8031 §2)`, async () => {
    const runner: KeyExchangeRunner = make();
    try {
      for (const group of [DhId.CURVE25519, DhId.ECP_256, DhId.MODP_2048]) {
        const alg = { prf: PrfId.HMAC_SHA2_256, encr: EncrId.AES_GCM_16, encrKeyBits: 256, integ: IntegId.NONE };
        const mine = createKeyExchange(group);
        const req = { group, peerPublic: mine.publicValue, ni: randomBytes(32), nr: randomBytes(32), spiI: randomBytes(8), spiR: randomBytes(8), alg };
        // several at once: answers must not be mixed up
        const rs = await Promise.all([req, req, req].map((r) => runner.responder(r)));
        for (const r of rs) {
          assert.ok(r.ok, "computed");
          const want = deriveInitialIkeKeys(alg, mine.computeSharedSecret(r.publicValue), req.ni, req.nr, req.spiI, req.spiR);
          for (const k of Object.keys(want) as (keyof typeof want)[]) assert.equal(hex(r.keys[k]), hex(want[k]), `${k} group ${group}`);
        }
        assert.notEqual(hex((rs[0] as { publicValue: Buffer }).publicValue), hex((rs[1] as { publicValue: Buffer }).publicValue), "a fresh key pair per exchange");
      }
      const bad = await runner.responder({ group: DhId.CURVE25519, peerPublic: Buffer.alloc(32), ni: randomBytes(32), nr: randomBytes(32), spiI: randomBytes(8), spiR: randomBytes(8), alg: { prf: PrfId.HMAC_SHA2_256, encr: EncrId.AES_GCM_16, encrKeyBits: 256, integ: IntegId.NONE } });
      assert.equal(bad.ok, false);
      const short = await runner.responder({ group: DhId.CURVE25519, peerPublic: Buffer.alloc(31, 9), ni: randomBytes(32), nr: randomBytes(32), spiI: randomBytes(8), spiR: randomBytes(8), alg: { prf: PrfId.HMAC_SHA2_256, encr: EncrId.AES_GCM_16, encrKeyBits: 256, integ: IntegId.NONE } });
      assert.equal(short.ok, false);
    } finally {
      await runner.close();
    }
  });
}

test("a responder with crypto workers: handshake, and a retransmitted IKE_SA_INIT during the key computation gets the same response once", async () => {
  const net = new FakeNet();
  const moon = makeNode(net, "192.0.2.1", 0xc1000001);
  const sun = makeNode(net, "192.0.2.2", 0xc2000001, { cryptoWorkers: 1 });
  await moon.engine.apply(cfg([conn("net", "192.0.2.1", "192.0.2.2", ["10.1.0.0/16"], ["10.2.0.0/16"])]), psk());
  await sun.engine.apply(cfg([conn("net", "192.0.2.2", "192.0.2.1", ["10.2.0.0/16"], ["10.1.0.0/16"])]), psk());
  try {
    // the IKE_SA_INIT request arrives twice at once (a retransmit or a duplicate on the path)
    net.filter = (d) => {
      if (d.what === "IKE_SA_INIT request 0" && d.to.address === "192.0.2.2") sun.engine.receive({ ...d.to }, { ...d.from }, Buffer.from(d.data));
      return true;
    };
    const r = await moon.engine.initiate({ connection: "net", wait: true, timeoutMs: 5000 });
    assert.equal(r.ok, true, r.message);
    await until(() => sun.events.some((e) => e.kind === "child_up"));
    const responses = net.wire.filter((d) => d.what === "IKE_SA_INIT response 0");
    // (moon may also have retransmitted: a worker's first answer waits for the worker to start)
    assert.ok(responses.length >= 2, "both copies answered");
    assert.ok(responses.every((x) => x.data.equals(responses[0]!.data)), "with the same response");
    assert.equal(sun.engine.listSas({ connection: "" }).ikeSas.length, 1, "one IKE SA");
    assert.equal(sun.events.filter((e) => e.kind === "ike_up").length, 1);
    const m = moon.engine.listSas({ connection: "" }).ikeSas[0]!;
    const s = sun.engine.listSas({ connection: "" }).ikeSas[0]!;
    assert.equal(m.responderSpi, s.responderSpi);
    assert.equal(s.algorithms, "AES_GCM_16-256/PRF_HMAC_SHA2_384/CURVE_25519");
    const out = moon.dp.saList("out")[0]!;
    const inn = sun.dp.saList("in").find((x) => x.id!.spi === out.id!.spi)!;
    assert.ok(out.encryptionKey.equals(inn.encryptionKey), "same ESP key both ends");
  } finally {
    await Promise.all([moon.engine.stop({ keepSas: true }), sun.engine.stop({ keepSas: true })]);
  }
});
