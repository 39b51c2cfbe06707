/**
 * espSealSend over loopback UDP: runs of equal-sized ESP packets leave as UDP GSO datagrams,
 * the receiving Poller (UDP_GRO socket, recvmmsg) splits coalesced datagrams back into
 * packets; every packet arrives once, in order, and opens to its payload. Also with GSO/GRO
 * off (FLEETSWAN_ESP_NO_GSO=1 in a child process is not needed: mixed sizes are sent too).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { dataplane } from "@fleetswan/proto";
import { loadAddon, type FsespAddon } from "../../src/userspace/native.js";
import {
  JOB_ADDR, JOB_FAMILY, JOB_FD, JOB_HANDLE, JOB_IN_LEN, JOB_IN_OFF, JOB_NH, JOB_OUT_LEN, JOB_OUT_OFF, JOB_PORT, JOB_SEQ_LO, JOB_SPI, JOB_STATUS, JOB_WORDS,
  ST_OK, createNativeSa, espAddon, type EspAddon,
} from "../../src/userspace/esp-native.js";

let addon: (FsespAddon & EspAddon) | undefined;
let why: string | false = false;
try {
  addon = espAddon(loadAddon());
  if (!addon) why = "addon without native ESP (rebuild it)";
} catch (e) {
  why = (e as Error).message;
}

test("espSealSend: GSO runs out, GRO/recvmmsg split back in, in order, every packet once", { skip: why }, async () => {
  const a = addon!;
  const lo = Buffer.from([127, 0, 0, 1]);
  const rx = a.udpSocket(4, lo, 0, false);
  const tx = a.udpSocket(4, lo, 0, false);
  const port = a.localPort!(rx);
  const got: Buffer[] = [];
  const poller = new a.Poller(rx, true, 256, (data, meta) => {
    for (let i = 0; i < meta.length / 8; i++) got.push(Buffer.from(data.subarray(meta[i * 8]!, meta[i * 8]! + meta[i * 8 + 1]!)));
  });
  poller.start();
  const sa = dataplane.SecurityAssociation.fromPartial({ id: { dst: "127.0.0.1", spi: 0xc0001234, protocol: 50 }, encryption: dataplane.Encryption.ENCRYPTION_AES_GCM_16, encryptionKey: Buffer.alloc(36, 5) });
  const enc = createNativeSa(a, sa, true), dec = createNativeSa(a, sa, false);
  // 100 packets: runs of equal sizes (GSO candidates) broken by odd sizes
  const lens = Array.from({ length: 100 }, (_, i) => (i % 37 === 36 ? 200 + i : i % 23 === 22 ? 1300 : 1400));
  const payloads = lens.map((l, i) => Buffer.alloc(l, i));
  const data = Buffer.concat(payloads);
  const jobs = new Uint32Array(lens.length * JOB_WORDS);
  const addr = new Uint32Array(4);
  new Uint8Array(addr.buffer).set(lo);
  let off = 0;
  lens.forEach((l, i) => {
    const j = i * JOB_WORDS;
    jobs[j + JOB_HANDLE] = enc; jobs[j + JOB_SPI] = 0xc0001234; jobs[j + JOB_SEQ_LO] = i + 1; jobs[j + JOB_NH] = 4;
    jobs[j + JOB_IN_OFF] = off; jobs[j + JOB_IN_LEN] = l; jobs[j + JOB_FD] = tx; jobs[j + JOB_FAMILY] = 4; jobs[j + JOB_PORT] = port;
    jobs.set(addr, j + JOB_ADDR);
    off += l;
  });
  assert.equal(a.espSealSend(data, jobs, lens.length), lens.length);
  const end = Date.now() + 5000;
  while (got.length < lens.length && Date.now() < end) await new Promise((r) => setTimeout(r, 20));
  poller.close();
  a.close(rx);
  a.close(tx);
  assert.equal(got.length, lens.length);
  const odata = Buffer.concat(got);
  const ojobs = new Uint32Array(got.length * JOB_WORDS);
  off = 0;
  got.forEach((p, i) => {
    const j = i * JOB_WORDS;
    ojobs[j + JOB_HANDLE] = dec; ojobs[j + JOB_SEQ_LO] = p.readUInt32BE(4); ojobs[j + JOB_IN_OFF] = off; ojobs[j + JOB_IN_LEN] = p.length;
    off += p.length;
  });
  assert.equal(a.espOpen(odata, ojobs, got.length), got.length);
  got.forEach((p, i) => {
    assert.equal(p.readUInt32BE(4), i + 1, "in order");
    const j = i * JOB_WORDS;
    assert.equal(ojobs[j + JOB_STATUS], ST_OK);
    assert.deepEqual(odata.subarray(ojobs[j + JOB_OUT_OFF]!, ojobs[j + JOB_OUT_OFF]! + ojobs[j + JOB_OUT_LEN]!), payloads[i]);
  });
  a.espSaFree(enc);
  a.espSaFree(dec);
});
