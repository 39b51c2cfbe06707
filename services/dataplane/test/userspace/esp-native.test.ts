/**
 * The native ESP path (native/esp-native.cc, one OpenSSL context per SA) against the
 * TypeScript reference (EspCrypto on node:crypto): for every transform, with and without
 * ESN, the same SA / sequence number / IV gives byte-identical ESP packets, and each side
 * opens the other's output. Also: tampering, truncation, freed handles, the datapath with
 * native crypto on one side and TypeScript on the other.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { dataplane } from "@fleetswan/proto";
import { EspCrypto } from "../../src/userspace/esp.js";
import {
  JOB_HANDLE, JOB_IN_LEN, JOB_IN_OFF, JOB_NH, JOB_OUT_LEN, JOB_OUT_OFF, JOB_SEQ_HI, JOB_SEQ_LO, JOB_SPI, JOB_STATUS, JOB_WORDS,
  ST_BAD_HANDLE, ST_INTEGRITY, ST_MALFORMED, ST_OK, createNativeSa, espAddon, type EspAddon,
} from "../../src/userspace/esp-native.js";
import { loadAddon, type FsespAddon } from "../../src/userspace/native.js";
import { UserspaceBackend } from "../../src/userspace/userspace-backend.js";
import { makeSpec, sideConfig } from "./tunnel-config.js";

const E = dataplane.Encryption, I = dataplane.Integrity;

let addon: (FsespAddon & EspAddon) | undefined;
let why = "";
try {
  addon = espAddon(loadAddon());
  if (!addon) why = "the built fsesp.node has no native ESP functions (rebuild: npm run build:native -w @fleetswan/dataplane)";
} catch (e) {
  why = `fsesp addon not built: ${(e as Error).message}`;
}

interface Transform { name: string; encryption: dataplane.Encryption; encLen: number; integrity: dataplane.Integrity; intLen: number }
const transforms: Transform[] = [
  { name: "aes-gcm-128", encryption: E.ENCRYPTION_AES_GCM_16, encLen: 20, integrity: I.INTEGRITY_NONE, intLen: 0 },
  { name: "aes-gcm-192", encryption: E.ENCRYPTION_AES_GCM_16, encLen: 28, integrity: I.INTEGRITY_NONE, intLen: 0 },
  { name: "aes-gcm-256", encryption: E.ENCRYPTION_AES_GCM_16, encLen: 36, integrity: I.INTEGRITY_NONE, intLen: 0 },
  { name: "chacha20-poly1305", encryption: E.ENCRYPTION_CHACHA20_POLY1305, encLen: 36, integrity: I.INTEGRITY_NONE, intLen: 0 },
  { name: "aes-128-cbc+hmac-sha256", encryption: E.ENCRYPTION_AES_CBC, encLen: 16, integrity: I.INTEGRITY_HMAC_SHA2_256_128, intLen: 32 },
  { name: "aes-192-cbc+hmac-sha384", encryption: E.ENCRYPTION_AES_CBC, encLen: 24, integrity: I.INTEGRITY_HMAC_SHA2_384_192, intLen: 48 },
  { name: "aes-256-cbc+hmac-sha512", encryption: E.ENCRYPTION_AES_CBC, encLen: 32, integrity: I.INTEGRITY_HMAC_SHA2_512_256, intLen: 64 },
];

const bytes = (n: number, seed: number) => Buffer.from(Array.from({ length: n }, (_, i) => (seed * 131 + i * 29) & 0xff));

function saOf(t: Transform, esn: boolean): dataplane.SecurityAssociation {
  return dataplane.SecurityAssociation.fromPartial({
    id: { dst: "192.0.2.2", spi: 0xc0012345, protocol: 50 },
    encryption: t.encryption, encryptionKey: bytes(t.encLen, 1), integrity: t.integrity, integrityKey: bytes(t.intLen, 2), esn,
  });
}

/** Native seal of several payloads in one batch; returns the ESP packets. */
function nativeSeal(h: number, spi: number, items: { seq: number; nh: number; payload: Buffer }[], ivs: Buffer): { pkts: Buffer[]; status: number[] } {
  const data = Buffer.concat(items.map((x) => x.payload));
  const jobs = new Uint32Array(items.length * JOB_WORDS);
  let off = 0;
  items.forEach((x, i) => {
    const j = i * JOB_WORDS;
    jobs[j + JOB_HANDLE] = h; jobs[j + JOB_SPI] = spi; jobs[j + JOB_SEQ_LO] = x.seq % 2 ** 32; jobs[j + JOB_SEQ_HI] = Math.floor(x.seq / 2 ** 32);
    jobs[j + JOB_NH] = x.nh; jobs[j + JOB_IN_OFF] = off; jobs[j + JOB_IN_LEN] = x.payload.length;
    off += x.payload.length;
  });
  const out = Buffer.alloc(data.length + items.length * 128);
  addon!.espSeal(data, jobs, items.length, out, ivs);
  return {
    pkts: items.map((_, i) => Buffer.from(out.subarray(jobs[i * JOB_WORDS + JOB_OUT_OFF]!, jobs[i * JOB_WORDS + JOB_OUT_OFF]! + jobs[i * JOB_WORDS + JOB_OUT_LEN]!))),
    status: items.map((_, i) => jobs[i * JOB_WORDS + JOB_STATUS]!),
  };
}

/** Native open of several ESP packets in one batch (on copies). */
function nativeOpen(h: number, items: { seq: number; esp: Buffer }[]): { status: number; nh: number; payload: Buffer }[] {
  const data = Buffer.concat(items.map((x) => x.esp));
  const jobs = new Uint32Array(items.length * JOB_WORDS);
  let off = 0;
  items.forEach((x, i) => {
    const j = i * JOB_WORDS;
    jobs[j + JOB_HANDLE] = h; jobs[j + JOB_SEQ_LO] = x.seq % 2 ** 32; jobs[j + JOB_SEQ_HI] = Math.floor(x.seq / 2 ** 32);
    jobs[j + JOB_IN_OFF] = off; jobs[j + JOB_IN_LEN] = x.esp.length;
    off += x.esp.length;
  });
  addon!.espOpen(data, jobs, items.length);
  return items.map((_, i) => {
    const j = i * JOB_WORDS;
    return { status: jobs[j + JOB_STATUS]!, nh: jobs[j + JOB_NH]!, payload: Buffer.from(data.subarray(jobs[j + JOB_OUT_OFF]!, jobs[j + JOB_OUT_OFF]! + jobs[j + JOB_OUT_LEN]!)) };
  });
}

for (const t of transforms) {
  for (const esn of [false, true]) {
    test(`${t.name}${esn ? " ESN" : ""}: native and TypeScript ESP are identical and open each other's packets`, (ctx) => {
      if (!addon) return ctx.skip(why);
      const sa = saOf(t, esn);
      const ts = new EspCrypto(sa);
      const enc = createNativeSa(addon, sa, true);
      const dec = createNativeSa(addon, sa, false);
      try {
        const seqs = esn ? [1, 2, 0xffffffff, 0x100000000, 0x100000005, 0x7_0000_1234] : [1, 2, 77, 0xfffffffe, 0xffffffff];
        const lens = [1, 20, 63, 64, 1400, 1500];
        const items = seqs.flatMap((seq, k) => lens.map((len, m) => ({ seq, nh: (k + m) % 2 ? 4 : 41, payload: bytes(len, k * 10 + m) })));
        const ivs = bytes(items.length * 16, 9);
        const nat = nativeSeal(enc, sa.id!.spi, items, ivs);
        items.forEach((x, i) => {
          assert.equal(nat.status[i], ST_OK);
          const ref = ts.seal(sa.id!.spi, x.seq, x.nh, x.payload, 0, ivs.subarray(i * 16, i * 16 + 16));
          assert.equal(nat.pkts[i]!.toString("hex"), ref.toString("hex"), `seq ${x.seq} len ${x.payload.length}: identical ESP`);
        });
        // native opens TypeScript's packets (freshly sealed with random CBC IVs) and vice versa
        const tsPkts = items.map((x) => ts.seal(sa.id!.spi, x.seq, x.nh, x.payload));
        const opened = nativeOpen(dec, items.map((x, i) => ({ seq: x.seq, esp: tsPkts[i]! })));
        items.forEach((x, i) => {
          assert.equal(opened[i]!.status, ST_OK);
          assert.equal(opened[i]!.nh, x.nh);
          assert.deepEqual(opened[i]!.payload, x.payload);
          const back = ts.open(nat.pkts[i]!, x.seq);
          assert.ok(typeof back !== "string", `TS opens native seq ${x.seq}: ${String(back)}`);
          assert.equal(back.nextHeader, x.nh);
          assert.deepEqual(Buffer.from(back.payload), x.payload);
        });
        // tampering: a flipped ICV bit, a flipped ciphertext bit, a wrong sequence (AAD / ESN high bits), a truncation
        const good = nat.pkts[4]!, seq = items[4]!.seq;
        const icvBad = Buffer.from(good); icvBad[icvBad.length - 1]! ^= 1;
        const ctBad = Buffer.from(good); ctBad[30]! ^= 0x40;
        const r = nativeOpen(dec, [
          { seq, esp: icvBad }, { seq, esp: ctBad }, { seq: seq + 2 ** 32 * (esn ? 1 : 0) + (esn ? 0 : 1), esp: good },
          { seq, esp: good.subarray(0, 20) }, { seq, esp: good },
        ]);
        // (CBC without ESN: the sequence number is authenticated from the packet itself, so the caller's value does not matter)
        const wrongSeq = t.integrity !== I.INTEGRITY_NONE && !esn ? ST_OK : ST_INTEGRITY;
        assert.deepEqual(r.map((x) => x.status), [ST_INTEGRITY, ST_INTEGRITY, wrongSeq, ST_MALFORMED, ST_OK]);
        assert.equal(ts.open(icvBad, seq), "integrity");
      } finally {
        addon.espSaFree(enc);
        addon.espSaFree(dec);
      }
      // freed: the handle selects nothing any more (the context and its key are gone)
      const after = nativeSeal(enc, 1, [{ seq: 1, nh: 4, payload: bytes(40, 1) }], Buffer.alloc(16));
      assert.equal(after.status[0], ST_BAD_HANDLE);
    });
  }
}

test("native SA creation refuses wrong keys without printing them", (ctx) => {
  if (!addon) return ctx.skip(why);
  assert.throws(
    () => addon!.espSaCreate({ cipher: "aes-256-gcm", encrypt: true, esn: false, key: Buffer.alloc(7, 0xab), salt: Buffer.alloc(4), icvLen: 16 }),
    (e: Error) => /32-octet key, got 7/.test(e.message) && !/ab/.test(e.message),
  );
});

// The backend's batching (flushOut/flushIn, deferred TUN writes) with real native crypto on A and
// the TypeScript path on B, and the other way round.
interface Wire { sent: Buffer[]; tun: Buffer[] }
function wiredAddon(w: Wire, native: boolean): FsespAddon {
  const base: FsespAddon = {
    openTun: (name) => ({ fd: 100, name }),
    udpSocket: () => 101,
    rawEspSocket: () => 102,
    setUdpEncap: () => undefined,
    close: () => undefined,
    write: (_fd, b) => { w.tun.push(Buffer.from(b)); return b.length; },
    writeBatch: (_fd, data, ol, n) => { for (let i = 0; i < n; i++) w.tun.push(Buffer.from(data.subarray(ol[i * 2]!, ol[i * 2]! + ol[i * 2 + 1]!))); return n; },
    sendTo: (_fd, b) => { w.sent.push(Buffer.from(b)); return b.length; },
    Poller: class { start() {} stop() {} close() {} },
  };
  if (!native || !addon) return base;
  const a = addon;
  const ext: FsespAddon & EspAddon = {
    ...base,
    espSaCreate: (o) => a.espSaCreate(o),
    espSaFree: (h) => a.espSaFree(h),
    espSeal: (d, j, n, o, iv) => a.espSeal(d, j, n, o, iv),
    espOpen: (d, j, n) => a.espOpen(d, j, n),
    espSealSend: (d, j, n) => {
      const out = Buffer.alloc(d.length + n * 128);
      a.espSeal(d, j, n, out);
      let sent = 0;
      for (let i = 0; i < n; i++) {
        if (j[i * JOB_WORDS + JOB_STATUS] !== ST_OK) continue;
        const o = j[i * JOB_WORDS + JOB_OUT_OFF]!;
        w.sent.push(Buffer.from(out.subarray(o, o + j[i * JOB_WORDS + JOB_OUT_LEN]!)));
        sent++;
      }
      return sent;
    },
  };
  return ext;
}

function ipv4(src: string, dst: string, len: number, id: number): Buffer {
  const b = Buffer.alloc(len, id & 0xff);
  b[0] = 0x45; b.writeUInt16BE(len, 2); b.writeUInt16BE(id, 4); b[6] = 0; b[7] = 0; b[8] = 64; b[9] = 17;
  Buffer.from(src.split(".").map(Number)).copy(b, 12);
  Buffer.from(dst.split(".").map(Number)).copy(b, 16);
  return b;
}

for (const alg of ["aes-gcm-256", "chacha20-poly1305", "aes-cbc-sha256"] as const) {
  for (const aNative of [true, false]) {
    test(`datapath ${alg}: A ${aNative ? "native" : "ts"} -> B ${aNative ? "ts" : "native"}, batches through the TUN`, async (ctx) => {
      if (!addon) return ctx.skip(why);
      const ip = async (args: string[]) => (args.includes("-j") ? "[]" : "");
      const spec = makeSpec(alg, true);
      const wa: Wire = { sent: [], tun: [] }, wb: Wire = { sent: [], tun: [] };
      const A = new UserspaceBackend({ addon: wiredAddon(wa, aNative), ip, rawEsp: false });
      const B = new UserspaceBackend({ addon: wiredAddon(wb, !aNative), ip, rawEsp: false });
      let cbA: ((d: Buffer, m: Uint32Array, e: string | undefined) => void) | undefined;
      for (const [be, side] of [[A, "a"], [B, "b"]] as const) {
        const c = sideConfig(spec, side);
        for (const s of c.sas) await be.addSa(s);
        for (const p of c.policies) await be.addPolicy(p);
      }
      // a TUN batch of 40 packets on A through the batch entry point
      const pkts = Array.from({ length: 40 }, (_, i) => ipv4("10.1.0.1", "10.2.0.1", 60 + i * 33, i + 1));
      const meta = new Uint32Array(pkts.length * 8);
      let off = 0;
      pkts.forEach((p, i) => { meta[i * 8] = off; meta[i * 8 + 1] = p.length; off += p.length; });
      cbA = (A as unknown as { onTunBatch: typeof cbA }).onTunBatch!.bind(A);
      cbA(Buffer.concat(pkts), meta, undefined);
      assert.equal(wa.sent.length, 40);
      assert.equal(A.stats.outPackets, 40);
      // B receives them as one UDP batch, plus a duplicate and a corrupted copy
      const dup = wa.sent[3]!, bad = Buffer.from(wa.sent[7]!);
      bad[bad.length - 2]! ^= 0x10;
      const inPkts = [bad, ...wa.sent, dup];
      const im = new Uint32Array(inPkts.length * 8);
      off = 0;
      inPkts.forEach((p, i) => { im[i * 8] = off; im[i * 8 + 1] = p.length; im[i * 8 + 2] = 4; im[i * 8 + 3] = 4500; off += p.length; });
      (B as unknown as { onUdpBatch(d: Buffer, m: Uint32Array): void }).onUdpBatch(Buffer.concat(inPkts), im);
      assert.equal(wb.tun.length, 40);
      wb.tun.forEach((p, i) => assert.deepEqual(p, pkts[i]));
      assert.equal(B.stats.drops.integrity, 1);
      assert.equal(B.stats.drops.replay, 1);
      assert.equal(B.stats.inPackets, 40);
      const inSa = (await B.listSas()).find((s) => s.sa!.direction === dataplane.Direction.DIRECTION_IN)!;
      assert.equal(inSa.counters!.packets, 40n);
      assert.equal(inSa.counters!.integrityErrors, 1n);
      await A.close();
      await B.close();
    });
  }
}
