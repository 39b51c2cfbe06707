/**
 * Exchange tests: two engines in one process ("moon" 192.0.2.1 with 10.1.0.0/16 and "sun"
 * 192.0.2.2 with 10.2.0.0/16), a fake network, fake dataplanes. Each step is written in
 * RFC 7296 notation; state is asserted on both ends and in both dataplanes.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { dataplane } from "@fleetswan/proto";
import { FakeNet, makeNode, conn, psk, until, cfg, distinct, type Node } from "./fake-net.js";

const MOON = "192.0.2.1";
const SUN = "192.0.2.2";

async function pair(opts: { moon?: Parameters<typeof conn>[5]; sun?: Parameters<typeof conn>[5]; sunPsk?: string; sunCookie?: number } = {}) {
  const net = new FakeNet();
  const moon = makeNode(net, MOON, 0xc1000001);
  const sun = makeNode(net, SUN, 0xc2000001, { cookieThreshold: opts.sunCookie });
  await moon.engine.apply(cfg([conn("net", MOON, SUN, ["10.1.0.0/16"], ["10.2.0.0/16"], opts.moon)]), psk());
  await sun.engine.apply(cfg([conn("net", SUN, MOON, ["10.2.0.0/16"], ["10.1.0.0/16"], opts.sun)]), psk(opts.sunPsk));
  return { net, moon, sun, stop: async () => Promise.all([moon.engine.stop({ keepSas: true }), sun.engine.stop({ keepSas: true })]) };
}

/** Both ends have one installed CHILD SA and their SPIs and keys pair up. */
function assertPaired(a: Node, b: Node): { aIn: number; bIn: number } {
  const ca = a.engine.listSas({ connection: "" }).ikeSas.flatMap((s) => s.children).filter((c) => c.state === 2);
  const cb = b.engine.listSas({ connection: "" }).ikeSas.flatMap((s) => s.children).filter((c) => c.state === 2);
  assert.equal(ca.length, 1, "one installed CHILD SA on A");
  assert.equal(cb.length, 1, "one installed CHILD SA on B");
  assert.equal(ca[0]!.spiIn, cb[0]!.spiOut);
  assert.equal(ca[0]!.spiOut, cb[0]!.spiIn);
  const aOut = a.dp.saList("out").find((s) => s.id!.spi === ca[0]!.spiOut)!;
  const bIn = b.dp.saList("in").find((s) => s.id!.spi === ca[0]!.spiOut)!;
  assert.ok(aOut && bIn, "outbound SA of A is inbound SA of B");
  assert.ok(aOut.encryptionKey.equals(bIn.encryptionKey), "same ESP key both ends");
  assert.equal(aOut.encryptionKey.length, 36, "AES-256-GCM key + 4-octet salt");
  return { aIn: ca[0]!.spiIn, bIn: cb[0]!.spiIn };
}

test("PSK: IKE_SA_INIT + IKE_AUTH with the first CHILD SA, SAs and policies in both dataplanes", async () => {
  const { net, moon, sun, stop } = await pair();
  // IKE_SA_INIT: HDR, SA, KEi, Ni, N(NAT_D_S), N(NAT_D_D) -->
  //              <-- HDR, SA, KEr, Nr, N(NAT_D_S), N(NAT_D_D)
  // IKE_AUTH:    HDR, SK {IDi, IDr, AUTH, N(INITIAL_CONTACT), SA, TSi, TSr} -->
  //              <-- HDR, SK {IDr, AUTH, SA, TSi, TSr}
  const r = await moon.engine.initiate({ connection: "net", wait: true, timeoutMs: 5000 });
  assert.equal(r.ok, true, r.message);
  await until(() => sun.events.some((e) => e.kind === "child_up"));
  assert.deepEqual(distinct(net.wire), ["IKE_SA_INIT request 0", "IKE_SA_INIT response 0", "IKE_AUTH request 1", "IKE_AUTH response 1"]);
  const ikeM = moon.engine.listSas({ connection: "net" }).ikeSas[0]!;
  const ikeS = sun.engine.listSas({ connection: "net" }).ikeSas[0]!;
  assert.equal(ikeM.state, 2);
  assert.equal(ikeM.initiatorSpi, ikeS.initiatorSpi);
  assert.equal(ikeM.responderSpi, ikeS.responderSpi);
  assert.equal(ikeM.remoteId, "gw-192.0.2.2.example.test");
  assert.equal(ikeS.remoteId, "gw-192.0.2.1.example.test");
  assert.equal(ikeM.algorithms, "AES_GCM_16-256/PRF_HMAC_SHA2_384/CURVE_25519");
  assertPaired(moon, sun);
  const child = ikeM.children[0]!;
  assert.deepEqual(child.localTs, ["10.1.0.0/16"]);
  assert.deepEqual(child.remoteTs, ["10.2.0.0/16"]);
  assert.equal(child.algorithms, "AES_GCM_16-256");
  // Policies: out 10.1/16 -> 10.2/16, in and fwd the other way, all PROTECT with the conn's reqid.
  const pols = [...moon.dp.policies.values()];
  assert.equal(pols.length, 3);
  assert.ok(pols.every((p) => p.action === dataplane.PolicyAction.POLICY_ACTION_PROTECT && p.template?.src && p.template.reqid === pols[0]!.template!.reqid));
  assert.ok(pols.some((p) => p.direction === dataplane.Direction.DIRECTION_OUT && p.selector?.src?.address === "10.1.0.0" && p.selector.dst?.address === "10.2.0.0"));
  await stop();
});

test("CHILD SA rekey from either side: make-before-break, new SPIs, old SAs gone", async () => {
  const { net, moon, sun, stop } = await pair();
  await moon.engine.initiate({ connection: "net", wait: true, timeoutMs: 5000 });
  const before = assertPaired(moon, sun);
  for (const [who, other] of [[moon, sun], [sun, moon]] as const) {
    const n = net.wire.length;
    // CREATE_CHILD_SA: HDR, SK {N(REKEY_SA), SA, Ni, TSi, TSr} -->
    //                  <-- HDR, SK {SA, Nr, TSi, TSr}
    // INFORMATIONAL:   HDR, SK {D(ESP, old SPI)} -->  <-- HDR, SK {D(ESP, old SPI)}
    assert.ok(who.engine.rekeyChild("net"));
    await until(() => who.events.filter((e) => e.kind === "rekey").length >= 1 && net.wire.length >= n + 4 && who.dp.saList("in").length === 1 && other.dp.saList("in").length === 1 && other.dp.saList("out").length === 1, 5000, "rekey done");
    assert.deepEqual(net.wire.slice(n).map((d) => d.what.replace(/ \d+$/, "")), ["CREATE_CHILD_SA request", "CREATE_CHILD_SA response", "INFORMATIONAL request", "INFORMATIONAL response"]);
    who.events.length = 0;
  }
  const after = assertPaired(moon, sun);
  assert.notEqual(after.aIn, before.aIn);
  assert.notEqual(after.bIn, before.bIn);
  // The responder installed its new outbound SA only after the old one was deleted.
  const order = sun.dp.calls.filter((c) => c.startsWith("addSa") || c.startsWith("deleteSa"));
  assert.ok(order.length >= 6, order.join(", "));
  await stop();
});

test("IKE SA rekey from either side keeps the CHILD SA; new IKE SPIs", async () => {
  const { moon, sun, stop } = await pair();
  await moon.engine.initiate({ connection: "net", wait: true, timeoutMs: 5000 });
  const child = assertPaired(moon, sun);
  for (const who of [moon, sun]) {
    const spiBefore = who.engine.listSas({ connection: "" }).ikeSas[0]!.initiatorSpi;
    // CREATE_CHILD_SA: HDR, SK {SA(IKE, new SPIi), Ni, KEi} --> <-- HDR, SK {SA(IKE, new SPIr), Nr, KEr}
    // INFORMATIONAL on the old SA: HDR, SK {D(IKE)} --> <-- HDR, SK {}
    assert.ok(who.engine.rekeyIke("net"));
    await until(() => moon.engine.listSas({ connection: "" }).ikeSas.length === 1 && sun.engine.listSas({ connection: "" }).ikeSas.length === 1 && moon.engine.listSas({ connection: "" }).ikeSas[0]!.initiatorSpi !== spiBefore, 5000, "IKE rekey");
    const m = moon.engine.listSas({ connection: "" }).ikeSas[0]!;
    const s = sun.engine.listSas({ connection: "" }).ikeSas[0]!;
    assert.equal(m.initiatorSpi, s.initiatorSpi);
    assert.equal(m.responderSpi, s.responderSpi);
    assert.equal(m.initiator, who === moon);
  }
  assert.deepEqual(assertPaired(moon, sun), child, "CHILD SA untouched by IKE rekeys");
  // The rekeyed IKE SA works: a CHILD rekey over it.
  assert.ok(sun.engine.rekeyChild("net"));
  await until(() => sun.events.some((e) => e.kind === "rekey" && e.message.includes("CHILD")) && moon.dp.saList("in").length === 1 && sun.dp.saList("out").length === 1);
  await stop();
});

test("delete from either side is honoured on the other", async () => {
  const { moon, sun, stop } = await pair();
  for (const who of [sun, moon]) {
    await moon.engine.initiate({ connection: "net", wait: true, timeoutMs: 5000 });
    assertPaired(moon, sun);
    // INFORMATIONAL: HDR, SK {D(IKE)} --> <-- HDR, SK {}
    const r = await who.engine.terminate({ connection: "net", wait: true, timeoutMs: 5000 });
    assert.equal(r.ok, true, r.message);
    await until(() => moon.engine.listSas({ connection: "" }).ikeSas.length === 0 && sun.engine.listSas({ connection: "" }).ikeSas.length === 0);
    assert.equal(moon.dp.sas.size, 0);
    assert.equal(sun.dp.sas.size, 0);
    assert.equal(moon.dp.policies.size, 0);
    assert.equal(sun.dp.policies.size, 0);
    assert.ok(sun.events.some((e) => e.kind === "ike_down"));
  }
  await stop();
});

test("proposal mismatch fails with NO_PROPOSAL_CHOSEN, naming the transforms", async () => {
  const { moon, sun, stop } = await pair({ moon: { ikeProposals: ["aes128gcm16-prfsha256-ecp256"] }, sun: { ikeProposals: ["aes256-sha512-modp4096"] } });
  // IKE_SA_INIT: HDR, SA, KEi, Ni --> <-- HDR, N(NO_PROPOSAL_CHOSEN)
  const r = await moon.engine.initiate({ connection: "net", wait: true, timeoutMs: 5000 });
  assert.equal(r.ok, false);
  assert.equal(r.code, "NO_PROPOSAL_CHOSEN");
  assert.match(r.message, /aes128gcm16-prfsha256-ecp256/);
  const refusal = sun.events.find((e) => e.code === "NO_PROPOSAL_CHOSEN")!;
  assert.match(refusal.message, /no acceptable transform: 192\.0\.2\.1 offered aes128gcm16-prfsha256-ecp256, refused because .*ENCR_AES_GCM_16-128 not in local proposals aes256-.*sha512-modp4096/);
  assert.equal(moon.engine.listSas({ connection: "" }).ikeSas.length, 0);
  await stop();
});

test("wrong PSK: AUTHENTICATION_FAILED on both ends, nothing installed", async () => {
  const { moon, sun, stop } = await pair({ sunPsk: "a different secret entirely, oops" });
  const r = await moon.engine.initiate({ connection: "net", wait: true, timeoutMs: 5000 });
  assert.equal(r.ok, false);
  assert.equal(r.code, "AUTH_FAILED");
  assert.ok(sun.events.some((e) => e.kind === "auth_failed" && /pre-shared key failed/.test(e.message)));
  await until(() => sun.engine.listSas({ connection: "" }).ikeSas.length === 0);
  assert.equal(moon.dp.sas.size, 0);
  assert.equal(sun.dp.sas.size, 0);
  await stop();
});

test("INVALID_KE_PAYLOAD: the initiator retries with the group the responder asks for", async () => {
  const { net, moon, sun, stop } = await pair({ moon: { ikeProposals: ["aes256gcm16-prfsha384-ecp256", "aes256gcm16-prfsha384-curve25519"] }, sun: { ikeProposals: ["aes256gcm16-prfsha384-curve25519"] } });
  // HDR, SA, KEi(ECP_256), Ni --> <-- HDR, N(INVALID_KE_PAYLOAD, CURVE_25519)
  // HDR, SA, KEi(CURVE_25519), Ni --> <-- HDR, SA, KEr, Nr
  const r = await moon.engine.initiate({ connection: "net", wait: true, timeoutMs: 5000 });
  assert.equal(r.ok, true, r.message);
  assert.deepEqual(net.wire.slice(0, 4).map((d) => d.what), ["IKE_SA_INIT request 0", "IKE_SA_INIT response 0", "IKE_SA_INIT request 0", "IKE_SA_INIT response 0"]);
  assertPaired(moon, sun);
  await stop();
});

test("COOKIE: a responder under load demands a cookie; the initiator repeats with it", async () => {
  const { net, moon, sun, stop } = await pair({ sunCookie: 0 });
  // HDR, SA, KEi, Ni --> <-- HDR, N(COOKIE)
  // HDR, N(COOKIE), SA, KEi, Ni --> <-- HDR, SA, KEr, Nr ...
  const r = await moon.engine.initiate({ connection: "net", wait: true, timeoutMs: 5000 });
  assert.equal(r.ok, true, r.message);
  assert.equal(net.wire.filter((d) => d.what === "IKE_SA_INIT request 0").length, 2);
  assertPaired(moon, sun);
  await stop();
});

test("traffic selector narrowing (§2.9): the responder narrows 10.1.0.0/16 to its 10.1.5.0/24", async () => {
  const { moon, sun, stop } = await pair({ sun: { remote: { addresses: [MOON], id: `gw-${MOON}.example.test`, subnets: ["10.1.5.0/24"], auth: 1, caPem: "", certificatePem: "", port: 500 } } });
  const r = await moon.engine.initiate({ connection: "net", wait: true, timeoutMs: 5000 });
  assert.equal(r.ok, true, r.message);
  const c = moon.engine.listSas({ connection: "" }).ikeSas[0]!.children[0]!;
  assert.deepEqual(c.localTs, ["10.1.5.0/24"]);
  assert.deepEqual(sun.engine.listSas({ connection: "" }).ikeSas[0]!.children[0]!.remoteTs, ["10.1.5.0/24"]);
  await stop();
});

test("TS_UNACCEPTABLE: disjoint subnets keep the IKE SA, fail the CHILD SA with a reason", async () => {
  const { moon, sun, stop } = await pair({ sun: { local: { addresses: [SUN], id: `gw-${SUN}.example.test`, subnets: ["10.9.0.0/16"], auth: 1, caPem: "", certificatePem: "", port: 500 } } });
  const r = await moon.engine.initiate({ connection: "net", wait: true, timeoutMs: 5000 });
  assert.equal(r.ok, false);
  assert.equal(r.code, "TS_UNACCEPTABLE");
  assert.ok(sun.events.some((e) => e.code === "TS_UNACCEPTABLE" && /no connection is known for 10\.1\.0\.0\/16 === 10\.2\.0\.0\/16/.test(e.message)));
  assert.equal(moon.engine.listSas({ connection: "" }).ikeSas[0]?.state, 2, "IKE SA stays");
  assert.equal(moon.dp.sas.size, 0);
  await stop();
});

test("forced UDP encapsulation: IKE moves to 4500 after IKE_SA_INIT, ESP SAs are UDP-encapsulated", async () => {
  const { net, moon, sun, stop } = await pair({ moon: { forceEncap: true } });
  const r = await moon.engine.initiate({ connection: "net", wait: true, timeoutMs: 5000 });
  assert.equal(r.ok, true, r.message);
  assert.equal(net.wire[0]!.to.port, 500);
  assert.equal(net.wire[2]!.to.port, 4500, "IKE_AUTH on 4500");
  assert.equal(net.wire[3]!.from.port, 4500);
  for (const n of [moon, sun]) for (const sa of n.dp.sas.values()) assert.deepEqual([sa.encap?.srcPort, sa.encap?.dstPort], [4500, 4500]);
  assert.equal(sun.engine.listSas({ connection: "" }).ikeSas[0]!.natRemote, true, "the peer sees a (faked) NAT");
  await stop();
});

test("DPD: a dead peer is detected within dpd_timeout and the SAs are cleared", async () => {
  const { net, moon, sun, stop } = await pair({ moon: { dpdDelaySeconds: 1, dpdTimeoutSeconds: 2, dpdAction: 1 } });
  await moon.engine.initiate({ connection: "net", wait: true, timeoutMs: 5000 });
  // The peer stops answering.
  net.filter = (d) => d.from.address !== SUN;
  const t0 = Date.now();
  // INFORMATIONAL: HDR, SK {} --> (no answer, retransmits) ... peer dead
  await until(() => moon.events.some((e) => e.kind === "dpd_dead"), 8000, "dpd_dead");
  assert.ok(Date.now() - t0 < 1000 + 2000 + 1500, `detected in ${Date.now() - t0} ms`);
  await until(() => moon.dp.sas.size === 0 && moon.engine.listSas({ connection: "" }).ikeSas.length === 0);
  assert.equal(moon.events.find((e) => e.kind === "dpd_dead")!.code, "PEER_DEAD");
  void sun;
  await stop();
});

test("simultaneous CHILD SA rekey (§2.8.1): one redundant SA is deleted, both ends agree", async () => {
  const { net, moon, sun, stop } = await pair();
  await moon.engine.initiate({ connection: "net", wait: true, timeoutMs: 5000 });
  assertPaired(moon, sun);
  // Both: HDR, SK {N(REKEY_SA), SA, Ni, TSi, TSr} --> at the same time
  moon.engine.rekeyChild("net");
  sun.engine.rekeyChild("net");
  // ... each answers the other's request, then each deletes what §2.8.1 tells it to:
  // the redundant new SA (lowest nonce) by its initiator, the old SA by the other end.
  await until(() => net.wire.length >= 12, 5000, "both rekeys and deletes");
  await until(() => {
    const a = moon.engine.listSas({ connection: "" }).ikeSas.flatMap((s) => s.children);
    const b = sun.engine.listSas({ connection: "" }).ikeSas.flatMap((s) => s.children);
    return a.length === 1 && b.length === 1 && moon.dp.sas.size === 2 && sun.dp.sas.size === 2;
  }, 5000, "collision resolved");
  assertPaired(moon, sun);
  await stop();
});

test("apply() touches only changed connections; unchanged ones keep their SAs", async () => {
  const { moon, sun, stop } = await pair();
  await moon.engine.initiate({ connection: "net", wait: true, timeoutMs: 5000 });
  const spi = moon.engine.listSas({ connection: "" }).ikeSas[0]!.initiatorSpi;
  const same = await moon.engine.apply(cfg([conn("net", MOON, SUN, ["10.1.0.0/16"], ["10.2.0.0/16"]), conn("other", MOON, "192.0.2.3", [], [])]), psk());
  assert.deepEqual([same.added, same.changed, same.removed], [["other"], [], []]);
  assert.equal(moon.engine.listSas({ connection: "" }).ikeSas[0]!.initiatorSpi, spi);
  const changed = await moon.engine.apply(cfg([conn("net", MOON, SUN, ["10.1.0.0/16"], ["10.2.0.0/16"], { espProposals: ["aes128gcm16"] })]), psk());
  assert.deepEqual([changed.added, changed.changed, changed.removed], [[], ["net"], ["other"]]);
  await until(() => sun.engine.listSas({ connection: "" }).ikeSas.length === 0);
  await stop();
});

test("responder connection selection: identity then the most specific selectors win", async () => {
  const net = new FakeNet();
  const moon = makeNode(net, MOON, 0xc1000001);
  const sun = makeNode(net, SUN, 0xc2000001);
  await moon.engine.apply(cfg([conn("net", MOON, SUN, ["10.1.1.0/24"], ["10.2.0.0/16"])]), psk());
  const wide = conn("wide", SUN, "%any", ["10.2.0.0/16"], ["10.0.0.0/8"], { remote: { addresses: ["%any"], id: "%any", subnets: ["10.0.0.0/8"], auth: 1, caPem: "", certificatePem: "", port: 500 } });
  const specific = conn("specific", SUN, MOON, ["10.2.0.0/16"], ["10.1.1.0/24"]);
  const other = conn("other-id", SUN, MOON, ["10.2.0.0/16"], ["10.1.1.0/24"], { remote: { addresses: [MOON], id: "someone-else.example.test", subnets: ["10.1.1.0/24"], auth: 1, caPem: "", certificatePem: "", port: 500 } });
  await sun.engine.apply(cfg([wide, other, specific]), psk());
  const r = await moon.engine.initiate({ connection: "net", wait: true, timeoutMs: 5000 });
  assert.equal(r.ok, true, r.message);
  assert.equal(sun.engine.listSas({ connection: "" }).ikeSas[0]!.name, "specific");
  await Promise.all([moon.engine.stop({ keepSas: true }), sun.engine.stop({ keepSas: true })]);
});

test("no connection for the initiator's address: NO_CONNECTION_AUTHORIZED", async () => {
  const net = new FakeNet();
  const moon = makeNode(net, MOON, 0xc1000001);
  const sun = makeNode(net, SUN, 0xc2000001);
  await moon.engine.apply(cfg([conn("net", MOON, SUN, [], [])]), psk());
  await sun.engine.apply(cfg([conn("net", SUN, "192.0.2.77", [], [])]), psk());
  const r = await moon.engine.initiate({ connection: "net", wait: true, timeoutMs: 5000 });
  assert.equal(r.ok, false);
  assert.ok(sun.events.some((e) => e.code === "NO_CONNECTION_AUTHORIZED" && /no connection has been authorized for 192\.0\.2\.1/.test(e.message)));
  await Promise.all([moon.engine.stop({ keepSas: true }), sun.engine.stop({ keepSas: true })]);
});

test("route: trap policies; an acquire starts negotiation; unroute removes them", async () => {
  const { moon, sun, stop } = await pair();
  const r = await moon.engine.route({ connection: "net", wait: false, timeoutMs: 0 });
  assert.equal(r.ok, true, r.message);
  assert.deepEqual([...moon.dp.policies.values()].map((p) => dataplane.policyActionToJSON(p.action)), ["POLICY_ACTION_TRAP"]);
  const reqid = [...moon.dp.policies.values()][0]!.template!.reqid;
  moon.dp.emit({ $case: "acquire", value: { policySelector: undefined, reqid, packet: { src: { address: "10.1.2.3", length: 32 }, dst: { address: "10.2.3.4", length: 32 }, protocol: 1, srcPort: 0, dstPort: 0 }, src: MOON, dst: SUN } });
  await until(() => moon.events.some((e) => e.kind === "child_up") && sun.events.some((e) => e.kind === "child_up"));
  // §2.9: the packet's addresses went first; the responder narrowed to its configured subnets.
  assert.ok([...moon.dp.policies.values()].some((p) => p.action === dataplane.PolicyAction.POLICY_ACTION_PROTECT));
  await moon.engine.terminate({ connection: "net", wait: true, timeoutMs: 5000 });
  await until(() => [...moon.dp.policies.values()].length === 1);
  assert.equal(dataplane.policyActionToJSON([...moon.dp.policies.values()][0]!.action), "POLICY_ACTION_TRAP", "back to trap after the SA went");
  await moon.engine.unroute({ connection: "net", wait: false, timeoutMs: 0 });
  assert.equal(moon.dp.policies.size, 0);
  await stop();
});

test("soft expire from the dataplane starts a CHILD rekey", async () => {
  const { moon, sun, stop } = await pair();
  await moon.engine.initiate({ connection: "net", wait: true, timeoutMs: 5000 });
  const before = assertPaired(moon, sun);
  const c = moon.engine.listSas({ connection: "" }).ikeSas[0]!.children[0]!;
  moon.dp.emit({ $case: "expire", value: { id: { dst: MOON, spi: c.spiIn, protocol: 50 }, hard: false, childId: c.uniqueId, connection: "net" } });
  await until(() => moon.events.some((e) => e.kind === "rekey") && moon.dp.sas.size === 2 && sun.dp.sas.size === 2);
  assert.notEqual(assertPaired(moon, sun).aIn, before.aIn);
  await stop();
});

test("dataplane restart: kept state changes nothing; lost state brings policies back and rekeys the CHILD SA on the agent's own", async () => {
  const { moon, sun, stop } = await pair();
  await moon.engine.initiate({ connection: "net", wait: true, timeoutMs: 5000 });
  const before = assertPaired(moon, sun);
  moon.dp.restart(true);
  await new Promise((r) => setTimeout(r, 100));
  assert.deepEqual(assertPaired(moon, sun), before, "state file kept: same SAs, nothing renegotiated");
  moon.dp.restart(false);
  await until(() => moon.dp.policies.size === 3 && moon.dp.saList("in").length === 1 && moon.dp.saList("out").length === 1 && sun.dp.saList("in").length === 1 && sun.dp.saList("out").length === 1 && moon.events.some((e) => e.kind === "rekey"), 5000, "policies and SAs back");
  const after = assertPaired(moon, sun);
  assert.notEqual(after.aIn, before.aIn, "new CHILD SA negotiated");
  await stop();
});
