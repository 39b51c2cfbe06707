import { test } from "node:test";
import assert from "node:assert/strict";
import { createCipheriv, createDecipheriv, createHmac } from "node:crypto";
import { dataplane } from "@fleetswan/proto";
import { EspCrypto, EspConfigError } from "../../src/userspace/esp.js";
import { WeakCryptoError } from "@fleetswan/common";

const E = dataplane.Encryption, I = dataplane.Integrity;

function sa(enc: dataplane.Encryption, key: Buffer, integ = I.INTEGRITY_NONE, ikey = Buffer.alloc(0), esn = false): dataplane.SecurityAssociation {
  return dataplane.SecurityAssociation.fromPartial({ id: { dst: "192.0.2.2", spi: 0x1234, protocol: 50 }, encryption: enc, encryptionKey: key, integrity: integ, integrityKey: ikey, esn });
}
const hex = (s: string) => Buffer.from(s.replace(/\s+/g, ""), "hex");
const inner = Buffer.from("4500001c000000004001000a0a0100010a020001080077ff00000000", "hex");

test("RFC 4868 §2.7.2.1 AUTH256-1: HMAC-SHA-256-128 is the first 128 bits of HMAC-SHA-256", () => {
  const key = Buffer.alloc(32, 0x0b);
  const full = createHmac("sha256", key).update("Hi There").digest();
  assert.equal(full.toString("hex"), "198a607eb44bfbc69903a0f1cf2bbdc5ba0aa3f3d9ae3c1c7a3b1696a0b68cf7");
  assert.equal(full.subarray(0, 16).toString("hex"), "198a607eb44bfbc69903a0f1cf2bbdc5");
});

test("AES-GCM ESP layout (RFC 4106 §3-5): IV = sequence, nonce = salt||IV, AAD = SPI||seq, 16-octet ICV", () => {
  const key = hex("feffe9928665731c6d6a8f9467308308 cafebabe");
  const c = new EspCrypto(sa(E.ENCRYPTION_AES_GCM_16, key));
  const pkt = c.seal(0x1234, 7, 4, inner);
  assert.equal(pkt.readUInt32BE(0), 0x1234);
  assert.equal(pkt.readUInt32BE(4), 7);
  const iv = pkt.subarray(8, 16);
  assert.deepEqual([...iv], [0, 0, 0, 0, 0, 0, 0, 7]);
  // independent decryption with the primitive
  const d = createDecipheriv("aes-128-gcm", key.subarray(0, 16), Buffer.concat([key.subarray(16), iv]), { authTagLength: 16 });
  d.setAAD(pkt.subarray(0, 8));
  d.setAuthTag(pkt.subarray(pkt.length - 16));
  const pt = Buffer.concat([d.update(pkt.subarray(16, pkt.length - 16)), d.final()]);
  assert.equal(pt.length % 4, 0, "4-octet alignment (RFC 4303 §2.4)");
  const padLen = pt[pt.length - 2]!;
  assert.equal(pt[pt.length - 1], 4, "next header IPv4");
  assert.deepEqual(pt.subarray(0, inner.length), inner);
  assert.deepEqual([...pt.subarray(inner.length, inner.length + padLen)], Array.from({ length: padLen }, (_, i) => i + 1));
  const o = c.open(pkt, 7);
  assert.ok(typeof o !== "string");
  assert.deepEqual(o.payload, inner);
});

test("AES-GCM with ESN: AAD = SPI||seq-high||seq-low (RFC 4106 §5)", () => {
  const key = Buffer.alloc(36, 0x42);
  const c = new EspCrypto(sa(E.ENCRYPTION_AES_GCM_16, key, I.INTEGRITY_NONE, Buffer.alloc(0), true));
  const seq = 3 * 0x100000000 + 9;
  const pkt = c.seal(0x1234, seq, 4, inner);
  assert.equal(pkt.readUInt32BE(4), 9, "only the low 32 bits on the wire");
  const aad = Buffer.alloc(12);
  aad.writeUInt32BE(0x1234, 0); aad.writeUInt32BE(3, 4); aad.writeUInt32BE(9, 8);
  const d = createDecipheriv("aes-256-gcm", key.subarray(0, 32), Buffer.concat([key.subarray(32), pkt.subarray(8, 16)]), { authTagLength: 16 });
  d.setAAD(aad);
  d.setAuthTag(pkt.subarray(pkt.length - 16));
  d.update(pkt.subarray(16, pkt.length - 16));
  d.final(); // throws if our AAD differed
  assert.equal(c.open(pkt, 9), "integrity", "wrong high bits fail the ICV");
  assert.ok(typeof c.open(pkt, seq) !== "string");
});

test("ChaCha20-Poly1305 ESP (RFC 7634 §2): 36-octet key, 8-octet IV, independent decrypt", () => {
  const key = Buffer.alloc(36);
  for (let i = 0; i < 36; i++) key[i] = i;
  const c = new EspCrypto(sa(E.ENCRYPTION_CHACHA20_POLY1305, key));
  const pkt = c.seal(0x1234, 1, 4, inner);
  const d = createDecipheriv("chacha20-poly1305", key.subarray(0, 32), Buffer.concat([key.subarray(32), pkt.subarray(8, 16)]), { authTagLength: 16 });
  d.setAAD(pkt.subarray(0, 8), { plaintextLength: pkt.length - 32 });
  d.setAuthTag(pkt.subarray(pkt.length - 16));
  const pt = Buffer.concat([d.update(pkt.subarray(16, pkt.length - 16)), d.final()]);
  assert.deepEqual(pt.subarray(0, inner.length), inner);
});

for (const [integ, alg, klen, icv] of [
  [I.INTEGRITY_HMAC_SHA2_256_128, "sha256", 32, 16],
  [I.INTEGRITY_HMAC_SHA2_384_192, "sha384", 48, 24],
  [I.INTEGRITY_HMAC_SHA2_512_256, "sha512", 64, 32],
] as const) {
  test(`AES-CBC + HMAC-${alg.toUpperCase()} truncated to ${icv * 8} bits (RFC 3602, RFC 4868 §2.3)`, () => {
    const ekey = Buffer.alloc(16, 1), ikey = Buffer.alloc(klen, 2);
    for (const esn of [false, true]) {
      const c = new EspCrypto(sa(E.ENCRYPTION_AES_CBC, ekey, integ, ikey, esn));
      const seq = esn ? 0x100000005 : 5;
      const pkt = c.seal(0x1234, seq, 4, inner);
      assert.equal((pkt.length - 8 - 16 - icv) % 16, 0);
      const h = createHmac(alg, ikey).update(pkt.subarray(0, pkt.length - icv));
      if (esn) h.update(Buffer.from([0, 0, 0, 1])); // RFC 4303 §2.2.1: high bits appended for the ICV only
      assert.deepEqual(pkt.subarray(pkt.length - icv), h.digest().subarray(0, icv));
      const d = createDecipheriv("aes-128-cbc", ekey, pkt.subarray(8, 24)).setAutoPadding(false);
      const pt = Buffer.concat([d.update(pkt.subarray(24, pkt.length - icv)), d.final()]);
      assert.deepEqual(pt.subarray(0, inner.length), inner);
      const o = c.open(pkt, seq);
      assert.ok(typeof o !== "string");
      assert.equal(o.nextHeader, 4);
    }
  });
}

test("ICV failure: a flipped bit anywhere is 'integrity', never delivered", () => {
  for (const [enc, key, integ, ikey] of [
    [E.ENCRYPTION_AES_GCM_16, Buffer.alloc(20, 3), I.INTEGRITY_NONE, Buffer.alloc(0)],
    [E.ENCRYPTION_CHACHA20_POLY1305, Buffer.alloc(36, 3), I.INTEGRITY_NONE, Buffer.alloc(0)],
    [E.ENCRYPTION_AES_CBC, Buffer.alloc(32, 3), I.INTEGRITY_HMAC_SHA2_256_128, Buffer.alloc(32, 4)],
  ] as const) {
    const c = new EspCrypto(sa(enc, key, integ, ikey));
    const pkt = c.seal(0x1234, 1, 4, inner);
    for (const at of [4, 9, 20, pkt.length - 1]) {
      const bad = Buffer.from(pkt);
      bad[at]! ^= 0x01;
      assert.equal(c.open(bad, at === 4 ? 0x01000001 : 1), "integrity", `byte ${at}`);
    }
  }
});

test("padding checks: wrong pad bytes or a pad length past the payload are rejected", () => {
  // Build packets with bad padding under a valid ICV using the primitive directly.
  const key = Buffer.alloc(20, 9);
  const c = new EspCrypto(sa(E.ENCRYPTION_AES_GCM_16, key));
  const mk = (plain: Buffer) => {
    const iv = Buffer.alloc(8, 0); iv[7] = 1;
    const hdr = Buffer.from([0, 0, 0x12, 0x34, 0, 0, 0, 1]);
    const ci = createCipheriv("aes-128-gcm", key.subarray(0, 16), Buffer.concat([key.subarray(16), iv]), { authTagLength: 16 });
    ci.setAAD(hdr);
    const ct = Buffer.concat([ci.update(plain), ci.final()]);
    return Buffer.concat([hdr, iv, ct, ci.getAuthTag()]);
  };
  assert.equal(c.open(mk(Buffer.from([0xaa, 0xbb, 0xcc, 0xdd, 1, 9, 2, 4])), 1), "padding", "pad byte 9 instead of 2");
  assert.equal(c.open(mk(Buffer.from([0xaa, 0xbb, 7, 4])), 1), "padding", "pad length beyond the payload");
  const ok = c.open(mk(Buffer.from([0xaa, 0xbb, 0xcc, 0xdd, 1, 2, 2, 4])), 1);
  assert.ok(typeof ok !== "string" && ok.payload.equals(Buffer.from([0xaa, 0xbb, 0xcc, 0xdd])));
  assert.equal(c.open(Buffer.alloc(30), 1), "malformed");
});

test("bad keys and algorithm combinations are refused with a clear error", () => {
  assert.throws(() => new EspCrypto(sa(E.ENCRYPTION_AES_GCM_16, Buffer.alloc(16))), EspConfigError);
  assert.throws(() => new EspCrypto(sa(E.ENCRYPTION_CHACHA20_POLY1305, Buffer.alloc(32))), /32 octets \+ 4/);
  assert.throws(() => new EspCrypto(sa(E.ENCRYPTION_AES_CBC, Buffer.alloc(16))), WeakCryptoError);
  assert.throws(() => new EspCrypto(sa(E.ENCRYPTION_AES_CBC, Buffer.alloc(16), I.INTEGRITY_HMAC_SHA2_256_128, Buffer.alloc(20))), /RFC 4868/);
  assert.throws(() => new EspCrypto(sa(E.ENCRYPTION_AES_GCM_16, Buffer.alloc(20), I.INTEGRITY_HMAC_SHA2_256_128, Buffer.alloc(32))), /AEAD/);
});
