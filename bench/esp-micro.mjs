import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
const root = join(dirname(fileURLToPath(import.meta.url)), "../services/dataplane/dist");
const { loadAddon } = await import(root + "/src/userspace/native.js");
const { createNativeSa, JOB_WORDS } = await import(root + "/src/userspace/esp-native.js");
const { EspCrypto } = await import(root + "/src/userspace/esp.js");
const { dataplane } = await import("@fleetswan/proto");
const a = loadAddon();
const E = dataplane.Encryption, I = dataplane.Integrity;
for (const [name, enc, el, integ, il] of [["gcm256", E.ENCRYPTION_AES_GCM_16, 36, I.INTEGRITY_NONE, 0], ["chacha", E.ENCRYPTION_CHACHA20_POLY1305, 36, I.INTEGRITY_NONE, 0], ["cbc+sha256", E.ENCRYPTION_AES_CBC, 16, I.INTEGRITY_HMAC_SHA2_256_128, 32]]) {
  const sa = dataplane.SecurityAssociation.fromPartial({ id: { dst: "1.2.3.4", spi: 1, protocol: 50 }, encryption: enc, encryptionKey: Buffer.alloc(el, 1), integrity: integ, integrityKey: Buffer.alloc(il, 2) });
  const h = createNativeSa(a, sa, true), d = createNativeSa(a, sa, false);
  const N = 256, L = 1400;
  const data = Buffer.alloc(N * L, 7);
  const jobs = new Uint32Array(N * JOB_WORDS);
  for (let i = 0; i < N; i++) { const j = i * JOB_WORDS; jobs[j] = h; jobs[j + 1] = 1; jobs[j + 2] = i + 1; jobs[j + 4] = 4; jobs[j + 5] = i * L; jobs[j + 6] = L; }
  const out = Buffer.alloc(N * (L + 128));
  let t = process.hrtime.bigint(); let seq = 1;
  const R = 200;
  for (let r = 0; r < R; r++) { for (let i = 0; i < N; i++) jobs[i * JOB_WORDS + 2] = seq++; a.espSeal(data, jobs, N, out); }
  const sealNs = Number(process.hrtime.bigint() - t) / (R * N);
  // open
  const ojobs = new Uint32Array(N * JOB_WORDS);
  const pk = [];
  for (let i = 0; i < N; i++) { const o = jobs[i * JOB_WORDS + 7], l = jobs[i * JOB_WORDS + 8]; pk.push(out.subarray(o, o + l)); }
  const odata0 = Buffer.concat(pk); let off = 0;
  for (let i = 0; i < N; i++) { const j = i * JOB_WORDS; ojobs[j] = d; ojobs[j + 2] = jobs[i * JOB_WORDS + 2]; ojobs[j + 5] = off; ojobs[j + 6] = pk[i].length; off += pk[i].length; }
  const odata = Buffer.alloc(odata0.length);
  t = process.hrtime.bigint();
  let ok = 0;
  for (let r = 0; r < R; r++) { odata0.copy(odata); ok = a.espOpen(odata, ojobs, N); }
  const openNs = Number(process.hrtime.bigint() - t) / (R * N);
  const ts = new EspCrypto(sa);
  const p = data.subarray(0, L);
  t = process.hrtime.bigint();
  for (let i = 0; i < 20000; i++) ts.seal(1, i + 1, 4, p);
  const tsNs = Number(process.hrtime.bigint() - t) / 20000;
  console.log(`${name}: native seal ${(sealNs / 1000).toFixed(2)} µs, open ${(openNs / 1000).toFixed(2)} µs (ok ${ok}/${N}); ts seal ${(tsNs / 1000).toFixed(2)} µs per 1400-octet packet`);
}
