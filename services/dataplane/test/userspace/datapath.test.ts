/**
 * The userspace backend's datapath with a fake addon (no TUN, no sockets): two backends
 * wired back to back. Replay, ICV failures, policy checks, TRAP/acquire, lifetimes.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { dataplane } from "@fleetswan/proto";
import { UserspaceBackend } from "../../src/userspace/userspace-backend.js";
import type { FsespAddon } from "../../src/userspace/native.js";
import type { BackendEvent } from "../../src/backend.js";
import { makeSpec, sideConfig, type AlgName } from "./tunnel-config.js";

interface Wire { sent: Buffer[]; tun: Buffer[] }

function fakeAddon(w: Wire): FsespAddon {
  return {
    openTun: (name) => ({ fd: 100, name }),
    udpSocket: () => 101,
    rawEspSocket: () => 102,
    setUdpEncap: () => undefined,
    close: () => undefined,
    write: (_fd, b) => { w.tun.push(Buffer.from(b)); return b.length; },
    sendTo: (_fd, b) => { w.sent.push(Buffer.from(b)); return b.length; },
    Poller: class { start() {} stop() {} close() {} },
  };
}
const ip = async (args: string[]) => (args.includes("-j") ? "[]" : "");

async function pair(alg: AlgName, over: Parameters<typeof makeSpec>[2] = {}) {
  const spec = makeSpec(alg, true, over);
  const wa: Wire = { sent: [], tun: [] }, wb: Wire = { sent: [], tun: [] };
  const A = new UserspaceBackend({ addon: fakeAddon(wa), ip, rawEsp: false });
  const B = new UserspaceBackend({ addon: fakeAddon(wb), ip, rawEsp: false });
  for (const [be, side] of [[A, "a"], [B, "b"]] as const) {
    const c = sideConfig(spec, side);
    for (const s of c.sas) await be.addSa(s);
    for (const p of c.policies) await be.addPolicy(p);
  }
  return { A, B, wa, wb, spec };
}

function ipv4(src: string, dst: string, proto = 17, len = 100): Buffer {
  const b = Buffer.alloc(len);
  b[0] = 0x45; b.writeUInt16BE(len, 2); b[8] = 64; b[9] = proto;
  Buffer.from(src.split(".").map(Number)).copy(b, 12);
  Buffer.from(dst.split(".").map(Number)).copy(b, 16);
  if (proto === 17) { b.writeUInt16BE(1000, 20); b.writeUInt16BE(2000, 22); }
  return b;
}

for (const alg of ["aes-gcm-128", "aes-gcm-256", "chacha20-poly1305", "aes-cbc-sha256"] as const) {
  test(`${alg}: A's TUN -> ESP -> B's TUN, counted on both SAs`, async () => {
    const { A, B, wa, wb } = await pair(alg);
    const p = ipv4("10.1.0.1", "10.2.0.1");
    A.outbound(p);
    assert.equal(wa.sent.length, 1);
    B.inbound(wa.sent[0]!, true);
    assert.deepEqual(wb.tun[0], p);
    const sa = (await B.listSas()).find((s) => s.sa!.direction === dataplane.Direction.DIRECTION_IN)!;
    assert.equal(sa.counters!.packets, 1n);
    assert.equal(sa.sa!.encryptionKey.length, 0, "keys never listed");
  });
}

test("replay: the same ESP packet twice is dropped and counted; never reaches the TUN", async () => {
  const { A, B, wa, wb } = await pair("aes-gcm-256");
  A.outbound(ipv4("10.1.0.1", "10.2.0.1"));
  B.inbound(wa.sent[0]!, true);
  B.inbound(wa.sent[0]!, true);
  assert.equal(wb.tun.length, 1);
  assert.equal(B.stats.drops.replay, 1);
  const sa = (await B.listSas()).find((s) => s.sa!.direction === dataplane.Direction.DIRECTION_IN)!;
  assert.equal(sa.counters!.replayErrors, 1n);
});

test("bad ICV: dropped, counted as integrity error, does not move the replay window", async () => {
  const { A, B, wa, wb } = await pair("aes-cbc-sha256");
  A.outbound(ipv4("10.1.0.1", "10.2.0.1"));
  const bad = Buffer.from(wa.sent[0]!);
  bad[bad.length - 1]! ^= 0x80;
  B.inbound(bad, true);
  assert.equal(wb.tun.length, 0);
  assert.equal(B.stats.drops.integrity, 1);
  B.inbound(wa.sent[0]!, true);
  assert.equal(wb.tun.length, 1, "the genuine packet with the same sequence number still passes");
  const sa = (await B.listSas()).find((s) => s.sa!.direction === dataplane.Direction.DIRECTION_IN)!;
  assert.equal(sa.counters!.integrityErrors, 1n);
});

test("inbound inner packet outside the SA selector is dropped (policy)", async () => {
  const { A, B, wa, wb } = await pair("aes-gcm-128");
  // A's OUT policy would not send 10.9/16, so seal by hand through a wider policy
  await A.addPolicy({ ...sideConfig(makeSpec("aes-gcm-128", true), "a").policies[0]!, selector: { src: { address: "10.0.0.0", length: 8 }, dst: { address: "10.0.0.0", length: 8 }, protocol: 0, srcPort: 0, dstPort: 0 }, priority: 2000 });
  A.outbound(ipv4("10.9.0.1", "10.2.0.1"));
  B.inbound(wa.sent[0]!, true);
  assert.equal(wb.tun.length, 0);
  assert.equal(B.stats.drops.policy, 1);
});

test("most specific OUT policy wins: DROP inside PROTECT; no policy: never in clear", async () => {
  const { A, wa } = await pair("aes-gcm-128");
  await A.addPolicy({ selector: { src: { address: "10.1.0.0", length: 16 }, dst: { address: "10.2.5.0", length: 24 }, protocol: 0, srcPort: 0, dstPort: 0 }, direction: dataplane.Direction.DIRECTION_OUT, action: dataplane.PolicyAction.POLICY_ACTION_DROP, priority: 500, template: undefined, mark: 0, ifId: 0, connection: "block" });
  A.outbound(ipv4("10.1.0.1", "10.2.5.9"));
  A.outbound(ipv4("10.1.0.1", "10.3.0.1"));
  assert.equal(wa.sent.length, 0);
  assert.equal(A.stats.drops.out_drop_policy, 1);
  assert.equal(A.stats.drops.out_no_policy, 1);
  A.outbound(ipv4("10.1.0.1", "10.2.6.9"));
  assert.equal(wa.sent.length, 1);
});

test("TRAP without an SA: one Acquire per 30 s, packet dropped; SA added -> protected", async () => {
  const spec = makeSpec("aes-gcm-128", true);
  const w: Wire = { sent: [], tun: [] };
  let now = 1_000_000;
  const A = new UserspaceBackend({ addon: fakeAddon(w), ip, rawEsp: false, now: () => now });
  const events: BackendEvent[] = [];
  A.onEvent((e) => events.push(e));
  const c = sideConfig(spec, "a");
  await A.addPolicy({ ...c.policies[0]!, action: dataplane.PolicyAction.POLICY_ACTION_TRAP });
  A.outbound(ipv4("10.1.0.1", "10.2.0.7", 6));
  A.outbound(ipv4("10.1.0.1", "10.2.0.7", 6));
  assert.equal(events.length, 1);
  const ev = events[0]!;
  assert.equal(ev.$case, "acquire");
  if (ev.$case === "acquire") {
    assert.equal(ev.value.reqid, 7);
    assert.equal(ev.value.packet!.dst!.address, "10.2.0.7");
    assert.equal(ev.value.dst, "192.0.2.2");
  }
  assert.equal(w.sent.length, 0, "never sent in clear");
  now += 31_000;
  A.outbound(ipv4("10.1.0.1", "10.2.0.7", 6));
  assert.equal(events.length, 2);
  await A.addSa(c.sas[0]!);
  A.outbound(ipv4("10.1.0.1", "10.2.0.7", 6));
  assert.equal(w.sent.length, 1);
});

test("byte and packet lifetimes: soft once, hard deletes the SA (like XFRM expire)", async () => {
  const spec = makeSpec("aes-gcm-128", true);
  const w: Wire = { sent: [], tun: [] };
  const A = new UserspaceBackend({ addon: fakeAddon(w), ip, rawEsp: false });
  const events: BackendEvent[] = [];
  A.onEvent((e) => events.push(e));
  const c = sideConfig(spec, "a");
  await A.addSa({ ...c.sas[0]!, lifetime: { softBytes: 250n, hardBytes: 0n, softPackets: 0n, hardPackets: 5n, softAddSeconds: 0n, hardAddSeconds: 0n } });
  await A.addPolicy(c.policies[0]!);
  for (let i = 0; i < 7; i++) A.outbound(ipv4("10.1.0.1", "10.2.0.1"));
  const ex = events.filter((e) => e.$case === "expire").map((e) => (e.$case === "expire" ? e.value.hard : null));
  assert.deepEqual(ex, [false, true]);
  assert.equal(w.sent.length, 5);
  assert.equal((await A.listSas()).length, 0);
  assert.equal(A.stats.drops.out_no_sa, 2);
});

test("sequence numbers: without ESN the counter never cycles (RFC 4303 §3.3.3)", async () => {
  const { A, wa } = await pair("aes-gcm-128");
  const sa = [...(A as unknown as { sas: Map<string, { seq: number; inbound: boolean }> }).sas.values()].find((s) => !s.inbound)!;
  sa.seq = 0xfffffffe;
  A.outbound(ipv4("10.1.0.1", "10.2.0.1"));
  A.outbound(ipv4("10.1.0.1", "10.2.0.1"));
  assert.equal(wa.sent.length, 1);
  assert.equal(wa.sent[0]!.readUInt32BE(4), 0xffffffff);
  assert.equal(A.stats.drops.seq_overflow, 1);
});

test("ESN across 2^32 end to end", async () => {
  const { A, B, wa, wb } = await pair("chacha20-poly1305", { esn: true });
  const sa = [...(A as unknown as { sas: Map<string, { seq: number; inbound: boolean }> }).sas.values()].find((s) => !s.inbound)!;
  sa.seq = 0xfffffffd;
  for (let i = 0; i < 5; i++) A.outbound(ipv4("10.1.0.1", "10.2.0.1"));
  for (const p of wa.sent) B.inbound(p, true);
  assert.equal(wb.tun.length, 5);
  assert.equal(wa.sent[4]!.readUInt32BE(4), 2);
});

test("NAT-T demux: non-ESP marker -> IKE without the marker; 0xFF keepalive flagged; ESP consumed", async () => {
  const w: Wire = { sent: [], tun: [] };
  let cb: ((d: Buffer, m: Uint32Array, e: string | undefined) => void) | undefined;
  const addon = { ...fakeAddon(w), Poller: class { constructor(_fd: number, _a: boolean, _n: number, f: typeof cb) { if (_fd === 101) cb = f; } start() {} stop() {} close() {} } };
  const A = new UserspaceBackend({ addon: addon as unknown as FsespAddon, ip, rawEsp: false });
  const s = await A.nattSocket({ port: 4500 });
  const got: { payload: string; keepalive: boolean; remote: string }[] = [];
  s.onIke((p) => got.push({ payload: p.payload.toString("hex"), keepalive: p.keepalive, remote: `${p.remoteAddress}:${p.remotePort}` }));
  const ike = Buffer.from("00000000aabbccdd", "hex"), ka = Buffer.from([0xff]);
  const data = Buffer.alloc(32);
  ike.copy(data, 0); ka.copy(data, 16);
  const meta = new Uint32Array(16);
  meta.set([0, 8, 4, 4500, 0, 0, 0, 0], 0);
  meta.set([16, 1, 4, 4501, 0, 0, 0, 0], 8);
  Buffer.from([192, 0, 2, 9]).copy(Buffer.from(meta.buffer), 16);
  Buffer.from([192, 0, 2, 10]).copy(Buffer.from(meta.buffer), 48);
  cb!(data, meta, undefined);
  assert.deepEqual(got, [
    { payload: "aabbccdd", keepalive: false, remote: "192.0.2.9:4500" },
    { payload: "", keepalive: true, remote: "192.0.2.10:4501" },
  ]);
  await s.sendIke({ remoteAddress: "192.0.2.9", remotePort: 4500, localAddress: "", payload: Buffer.from([1, 2]), keepalive: false });
  assert.equal(w.sent[0]!.toString("hex"), "000000000102", "marker prepended (RFC 3948 §2.2)");
});

test("drop counts for metrics: the datapath's reasons plus the addon's TUN offload drops", async () => {
  const w: Wire = { sent: [], tun: [] };
  const plain = new UserspaceBackend({ addon: fakeAddon(w), ip, rawEsp: false });
  await plain.start();
  assert.equal(plain.dropCounts().tun_offload, undefined, "an addon without tunStats adds nothing");
  const tunStats = () => ({ reads: 10, superPackets: 2, segments: 90, coalescedWrites: 0, coalescedPackets: 0, dropped: 3 });
  const A = new UserspaceBackend({ addon: { ...fakeAddon(w), tunStats }, ip, rawEsp: false });
  await A.start();
  A.stats.drops.replay = 2;
  const d = A.dropCounts();
  assert.equal(d.tun_offload, 3);
  assert.equal(d.replay, 2);
  assert.equal(A.stats.drops.replay, 2);
  assert.equal((A.stats.drops as Record<string, number>).tun_offload, undefined, "stats.drops itself unchanged");
  await plain.close();
  await A.close();
});
