/**
 * TUN offloads (native/tun-offload.h) through the addon's test hooks: splitting a TSO
 * super-packet (IPv4 and IPv6) gives segments with the right lengths, sequence numbers, IPv4
 * IDs, flags and valid checksums whose payloads add up to the original; coalescing takes only
 * in-order segments of one flow with valid checksums and writes the super-packet's header and
 * virtio header as the kernel expects them (CHECKSUM_PARTIAL with the pseudo-header sum).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { loadAddon } from "../../src/userspace/native.js";

interface Hooks {
  tunSplit(packet: Buffer, gsoSize: number): Buffer[] | null;
  tunCoalesce(packets: Buffer[]): { count: number; vnet?: Buffer; header?: Buffer };
}
let hooks: Hooks | undefined;
let why: string | false = false;
try {
  const a = loadAddon() as unknown as Partial<Hooks>;
  if (a.tunSplit && a.tunCoalesce) hooks = a as Hooks;
  else why = "the built fsesp.node has no tunSplit/tunCoalesce (rebuild: npm run build:native -w @fleetswan/dataplane)";
} catch (e) {
  why = `fsesp addon not built: ${(e as Error).message}`;
}

const ACK = 0x10, PSH = 0x08, FIN = 0x01, SYN = 0x02;

/** RFC 1071 sum of a buffer (not complemented), plus `init`. */
function sum16(b: Buffer, init = 0): number {
  let s = init;
  for (let i = 0; i + 1 < b.length; i += 2) s += b.readUInt16BE(i);
  if (b.length & 1) s += b[b.length - 1]! << 8;
  while (s > 0xffff) s = (s & 0xffff) + (s >>> 16);
  return s;
}

function pseudo(pkt: Buffer, tcpLen: number): number {
  const v4 = pkt[0]! >> 4 === 4;
  const addrs = v4 ? pkt.subarray(12, 20) : pkt.subarray(8, 40);
  return sum16(addrs, 6 + (tcpLen & 0xffff) + (v4 ? 0 : tcpLen >>> 16));
}

function ipLen(pkt: Buffer): number {
  return pkt[0]! >> 4 === 4 ? (pkt[0]! & 15) * 4 : 40;
}

function tcpChecksumOk(pkt: Buffer): boolean {
  const t = pkt.subarray(ipLen(pkt));
  return sum16(t, pseudo(pkt, t.length)) === 0xffff;
}

/** A TCP packet with a timestamp option; checksums filled in. */
function tcpPacket(v: 4 | 6, opts: { seq: number; flags: number; payload: Buffer; id?: number; sport?: number }): Buffer {
  const tcp = Buffer.alloc(32);
  tcp.writeUInt16BE(opts.sport ?? 40000, 0);
  tcp.writeUInt16BE(5201, 2);
  tcp.writeUInt32BE(opts.seq >>> 0, 4);
  tcp.writeUInt32BE(0x01020304, 8);
  tcp[12] = 8 << 4;
  tcp[13] = opts.flags;
  tcp.writeUInt16BE(501, 14);
  tcp.set([1, 1, 8, 10, 0, 0, 0, 7, 0, 0, 0, 9], 20);
  let ip: Buffer;
  const total = tcp.length + opts.payload.length;
  if (v === 4) {
    ip = Buffer.alloc(20);
    ip[0] = 0x45;
    ip.writeUInt16BE(Math.min(20 + total, 0xffff), 2);
    ip.writeUInt16BE(opts.id ?? 0x1234, 4);
    ip[6] = 0x40; // DF
    ip[8] = 64;
    ip[9] = 6;
    ip.set([10, 1, 0, 1, 10, 2, 0, 1], 12);
    ip.writeUInt16BE(~sum16(ip) & 0xffff, 10);
  } else {
    ip = Buffer.alloc(40);
    ip[0] = 0x60;
    ip.writeUInt16BE(total, 4);
    ip[6] = 6;
    ip[7] = 64;
    ip.set([0xfd, 0, 0, 1], 8);
    ip[23] = 1;
    ip.set([0xfd, 0, 0, 2], 24);
    ip[39] = 1;
  }
  const pkt = Buffer.concat([ip, tcp, opts.payload]);
  const t = pkt.subarray(ip.length);
  t.writeUInt16BE(~sum16(t, pseudo(pkt, t.length)) & 0xffff, 16);
  return pkt;
}

const payloadOf = (pkt: Buffer) => pkt.subarray(ipLen(pkt) + (pkt[ipLen(pkt) + 12]! >> 4) * 4);
const flagsOf = (pkt: Buffer) => pkt[ipLen(pkt) + 13]!;
const seqOf = (pkt: Buffer) => pkt.readUInt32BE(ipLen(pkt) + 4);

for (const v of [4, 6] as const) {
  test(`tun offload: split an IPv${v} TSO super-packet (sequence wrap, PSH|FIN on the last only)`, { skip: hooks ? false : why }, () => {
    const payload = Buffer.alloc(5000);
    for (let i = 0; i < payload.length; i++) payload[i] = (i * 7 + 3) & 0xff;
    const gso = 1348;
    const sp = tcpPacket(v, { seq: 0xfffff000, flags: ACK | PSH | FIN, payload });
    const segs = hooks!.tunSplit(sp, gso)!;
    assert.equal(segs.length, 4);
    assert.deepEqual(Buffer.concat(segs.map(payloadOf)), payload);
    segs.forEach((s, i) => {
      const pl = i < 3 ? gso : 5000 - 3 * gso;
      assert.equal(payloadOf(s).length, pl);
      assert.equal(seqOf(s), (0xfffff000 + i * gso) >>> 0, `segment ${i} sequence number`);
      assert.equal(flagsOf(s), i === 3 ? ACK | PSH | FIN : ACK, `segment ${i} flags`);
      assert.ok(tcpChecksumOk(s), `segment ${i} TCP checksum`);
      if (v === 4) {
        assert.equal(s.readUInt16BE(2), s.length);
        assert.equal(s.readUInt16BE(4), 0x1234 + i);
        assert.equal(sum16(s.subarray(0, 20)), 0xffff, `segment ${i} IPv4 header checksum`);
      } else {
        assert.equal(s.readUInt16BE(4), s.length - 40);
      }
      assert.deepEqual(s.subarray(ipLen(s) + 20, ipLen(s) + 32), sp.subarray(ipLen(sp) + 20, ipLen(sp) + 32), "options copied");
    });
  });

  test(`tun offload: coalesce IPv${v} segments into one GSO write, and only when they belong together`, { skip: hooks ? false : why }, () => {
    const gso = 1348;
    const seg = (i: number, o: Partial<{ flags: number; len: number; sport: number; seq: number }> = {}) =>
      tcpPacket(v, { seq: o.seq ?? 1000 + i * gso, flags: o.flags ?? ACK, payload: Buffer.alloc(o.len ?? gso, i + 1), id: 100 + i, sport: o.sport });
    const run = [seg(0), seg(1), seg(2), seg(3, { flags: ACK | PSH, len: 500 })];
    const c = hooks!.tunCoalesce(run);
    assert.equal(c.count, 4);
    const h = c.header!, vn = c.vnet!;
    const ipl = v === 4 ? 20 : 40;
    const total = ipl + 32 + 3 * gso + 500;
    assert.equal(h.length, ipl + 32);
    if (v === 4) {
      assert.equal(h.readUInt16BE(2), total);
      assert.equal(sum16(h.subarray(0, 20)), 0xffff, "IPv4 header checksum");
    } else {
      assert.equal(h.readUInt16BE(4), total - 40);
    }
    assert.equal(h[ipl + 13], ACK | PSH, "PSH of the last segment");
    assert.equal(h.readUInt32BE(ipl + 4), 1000);
    // virtio_net_hdr (host order): NEEDS_CSUM, GSO_TCPV4/6, hdr_len, gso_size, csum_start, csum_offset
    assert.equal(vn[0], 1);
    assert.equal(vn[1], v === 4 ? 1 : 4);
    assert.deepEqual([vn.readUInt16LE(2), vn.readUInt16LE(4), vn.readUInt16LE(6), vn.readUInt16LE(8)], [ipl + 32, gso, ipl, 16]);
    // CHECKSUM_PARTIAL: the field holds the pseudo-header sum over the whole TCP length
    assert.equal(h.readUInt16BE(ipl + 16), pseudo(h, total - ipl));
    // the full super-packet, its checksum completed, is valid and carries the payloads in order
    const whole = Buffer.concat([h, ...run.map(payloadOf)]);
    const t = whole.subarray(ipl);
    t.writeUInt16BE(~sum16(t) & 0xffff, 16);
    assert.ok(tcpChecksumOk(whole));

    // what must end or prevent a run
    const bad = seg(1);
    bad[bad.length - 1] = bad[bad.length - 1]! ^ 0xff; // corrupted in transit: TCP checksum wrong
    assert.equal(hooks!.tunCoalesce([seg(0), bad, seg(2)]).count, 1, "bad checksum");
    assert.equal(hooks!.tunCoalesce([seg(0), seg(2)]).count, 1, "gap in sequence");
    assert.equal(hooks!.tunCoalesce([seg(0), seg(1, { sport: 40001 })]).count, 1, "other flow");
    assert.equal(hooks!.tunCoalesce([seg(0, { flags: ACK | SYN }), seg(1)]).count, 1, "SYN");
    assert.equal(hooks!.tunCoalesce([seg(0, { flags: ACK | PSH }), seg(1)]).count, 1, "PSH ends a run");
    assert.equal(hooks!.tunCoalesce([seg(0), seg(1, { flags: ACK | FIN })]).count, 1, "FIN");
    assert.equal(hooks!.tunCoalesce([seg(0), seg(1, { len: 100 }), seg(2, { seq: 1000 + gso + 100 })]).count, 2, "a short segment is the last one");
    assert.equal(hooks!.tunCoalesce([seg(0, { len: 100 }), seg(1, { seq: 1100, len: 100 })]).count, 2, "later segments may be as long as the first");
    assert.equal(hooks!.tunCoalesce([seg(0, { len: 100 }), seg(1, { seq: 1100, len: 200 })]).count, 1, "not longer");
    assert.equal(hooks!.tunCoalesce([seg(0, { len: 0 }), seg(1)]).count, 1, "pure ACKs are not coalesced");
    const many = Array.from({ length: 60 }, (_, i) => seg(i));
    const big = hooks!.tunCoalesce(many);
    assert.ok(big.count > 1 && (ipl + 32) + big.count * gso <= 0xffff && (ipl + 32) + (big.count + 1) * gso > 0xffff, `at most 64 KiB (${big.count} segments)`);
  });
}

test("tun offload: packets we cannot split are refused", { skip: hooks ? false : why }, () => {
  const udp = tcpPacket(4, { seq: 1, flags: ACK, payload: Buffer.alloc(3000) });
  udp[9] = 17;
  assert.equal(hooks!.tunSplit(udp, 1348), null, "not TCP");
  const frag = tcpPacket(4, { seq: 1, flags: ACK, payload: Buffer.alloc(3000) });
  frag[6] = 0x20; // MF
  assert.equal(hooks!.tunSplit(frag, 1348), null, "a fragment");
  assert.equal(hooks!.tunSplit(tcpPacket(4, { seq: 1, flags: ACK, payload: Buffer.alloc(3000) }), 0), null, "gso_size 0");
  assert.equal(hooks!.tunSplit(Buffer.alloc(10), 1348), null, "truncated");
});
