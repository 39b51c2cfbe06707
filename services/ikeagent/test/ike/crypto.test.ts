/**
 * Crypto against published vectors: RFC 4868 (HMAC-SHA2 PRF and truncated integrity),
 * RFC 7634 Appendix B (ChaCha20-Poly1305 in an IKEv2 SK payload), RFC 5903 §8 (ECP),
 * RFC 7748 §6.1 and RFC 8031 Appendix A (X25519); prf+ and KEYMAT against hand-derived
 * expectations; RFC 7427 signatures round-trip and refusals.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { createHmac, generateKeyPairSync } from "node:crypto";
import { DhId, EncrId, IntegId, NotifyType, PayloadType, PrfId, ExchangeType, decodeMessage, openMessage, sealMessage, type NotifyPayload } from "../../src/ike/wire/index.js";
import {
  AuthError, CookieJar, KeyExchangeError, SIGNATURE_ALGORITHM_IDENTIFIERS, SignatureScheme, addressBytes, createKeyExchange, createSkCipher,
  decodeSignatureHashAlgorithms, defaultSchemeFor, deriveChildKeys, encodeSignatureHashAlgorithms, integParams, modpPrime, parseSignatureAuthData,
  deriveIkeKeys, deriveInitialIkeKeys, prf, prfPlus, rekeySkeyseed, skeyseed, signAuthData, validatePublicValue, verifySignatureAuthData, type SignatureSchemeName,
} from "../../src/ike/crypto/index.js";

const h = (s: string) => Buffer.from(s.replace(/\s+/g, ""), "hex");
const hex = (b: Buffer) => b.toString("hex");

// ---------------------------------------------------------------- RFC 4868

const RFC4868 = [
  { key: Buffer.alloc(20, 0x0b), data: Buffer.from("Hi There"), prf: {
    [PrfId.HMAC_SHA2_256]: "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
    [PrfId.HMAC_SHA2_384]: "afd03944d84895626b0825f4ab46907f15f9dadbe4101ec682aa034c7cebc59cfaea9ea9076ede7f4af152e8b2fa9cb6",
    [PrfId.HMAC_SHA2_512]: "87aa7cdea5ef619d4ff0b4241a1d6cb02379f4e2ce4ec2787ad0b30545e17cdedaa833b7d6b8a702038b274eaea3f4e4be9d914eeb61f1702e696c203a126854",
  } },
  { key: Buffer.alloc(20, 0xaa), data: Buffer.alloc(50, 0xdd), prf: {
    [PrfId.HMAC_SHA2_256]: "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe",
    [PrfId.HMAC_SHA2_384]: "88062608d3e6ad8a0aa2ace014c8a86f0aa635d947ac9febe83ef4e55966144b2a5ab39dc13814b94e3ab6e101a34f27",
    [PrfId.HMAC_SHA2_512]: "fa73b0089d56a284efb0f0756c890be9b1b5dbdd8ee81a3655f83e33b2279d39bf3e848279a722c806b485a47e67c807b946a337bee8942674278859e13292fb",
  } },
  { key: Buffer.from(Array.from({ length: 25 }, (_, i) => i + 1)), data: Buffer.alloc(50, 0xcd), prf: {
    [PrfId.HMAC_SHA2_256]: "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b",
    [PrfId.HMAC_SHA2_384]: "3e8a69b7783c25851933ab6290af6ca77a9981480850009cc5577c6e1f573b4e6801dd23c4a7d679ccf8a386c674cffb",
    [PrfId.HMAC_SHA2_512]: "b0ba465637458c6990e5a8c5f61d4af7e576d97ff94b872de76f8050361ee3dba91ca5c11aa25eb4d679275cc5788063a5f19741120c4f2de2adebeb10a298dd",
  } },
  { key: Buffer.alloc(131, 0xaa), data: Buffer.from("Test Using Larger Than Block-Size Key - Hash Key First"), prf: {
    [PrfId.HMAC_SHA2_256]: "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
    [PrfId.HMAC_SHA2_384]: "4ece084485813e9088d2c63a041bc5b44f9ef1012a2b588f3cd11f05033ac4c60c2ef6ab4030fe8296248df163f44952",
    [PrfId.HMAC_SHA2_512]: "80b24263c7c1a3ebb71493c1dd7be8b49b46d1f41b4aeec1121b013783f8f3526b56d037e05f2598bd0fd2215d6a1e5295e64f73f63f0aec8b915a985d786598",
  } },
];

test("RFC 4868 §2.7.1: PRF_HMAC_SHA2_256/384/512 test cases", () => {
  for (const tc of RFC4868) {
    for (const [id, out] of Object.entries(tc.prf)) assert.equal(hex(prf(Number(id), tc.key, tc.data)), out, `prf ${id}`);
  }
});

test("RFC 4868 §2.7.2: AUTH_HMAC_SHA2_*_* truncated ICVs (key = hash length)", () => {
  const cases: [number, Buffer, Buffer, string][] = [
    [IntegId.HMAC_SHA2_256_128, Buffer.alloc(32, 0x0b), Buffer.from("Hi There"), "198a607eb44bfbc69903a0f1cf2bbdc5"],
    [IntegId.HMAC_SHA2_384_192, Buffer.alloc(48, 0x0b), Buffer.from("Hi There"), "b6a8d5636f5c6a7224f9977dcf7ee6c7fb6d0c48cbdee973"],
    [IntegId.HMAC_SHA2_512_256, Buffer.alloc(64, 0x0b), Buffer.from("Hi There"), "637edc6e01dce7e6742a99451aae82df23da3e92439e590e43e761b33e910fb8"],
    [IntegId.HMAC_SHA2_256_128, Buffer.from("JefeJefeJefeJefeJefeJefeJefeJefe"), Buffer.from("what do ya want for nothing?"), "167f928588c5cc2eef8e3093caa0e87c"],
    [IntegId.HMAC_SHA2_384_192, Buffer.from("Jefe".repeat(12)), Buffer.from("what do ya want for nothing?"), "2c7353974f1842fd66d53c452ca42122b28c0b594cfb184d"],
    [IntegId.HMAC_SHA2_512_256, Buffer.from("Jefe".repeat(16)), Buffer.from("what do ya want for nothing?"), "cb370917ae8a7ce28cfd1d8f4705d6141c173b2a9362c15df235dfb251b15454"],
    [IntegId.HMAC_SHA2_256_128, Buffer.alloc(32, 0xaa), Buffer.alloc(50, 0xdd), "cdcb1220d1ecccea91e53aba3092f962"],
    [IntegId.HMAC_SHA2_384_192, Buffer.alloc(48, 0xaa), Buffer.alloc(50, 0xdd), "809f439be00274321d4a538652164b53554a508184a0c316"],
    [IntegId.HMAC_SHA2_512_256, Buffer.alloc(64, 0xaa), Buffer.alloc(50, 0xdd), "2ee7acd783624ca9398710f3ee05ae41b9f9b0510c87e49e586cc9bf961733d8"],
  ];
  for (const [id, key, data, icv] of cases) {
    const p = integParams(id)!;
    assert.equal(p.keyLength, key.length);
    assert.equal(hex(createHmac(p.hash, key).update(data).digest().subarray(0, p.icvLength)), icv);
  }
});

test("RFC 4868 ICVs through an AES-CBC SK payload: the ICV is HMAC over header..ciphertext, truncated", () => {
  for (const integ of [IntegId.HMAC_SHA2_256_128, IntegId.HMAC_SHA2_384_192, IntegId.HMAC_SHA2_512_256]) {
    for (const bits of [128, 256]) {
      const p = integParams(integ)!;
      const ka = Buffer.alloc(p.keyLength, 0x0b);
      const ke = Buffer.alloc(bits / 8, 0x42);
      const c = createSkCipher({ encr: EncrId.AES_CBC, encrKeyBits: bits, integ }, ke, ka);
      const hdr = { spiI: Buffer.alloc(8, 1), spiR: Buffer.alloc(8, 2), exchangeType: ExchangeType.INFORMATIONAL, messageId: 5, initiator: true, response: false };
      const inner: NotifyPayload[] = [{ type: PayloadType.NOTIFY, protocol: 0, notifyType: NotifyType.INITIAL_CONTACT, spi: Buffer.alloc(0), data: Buffer.alloc(0) }];
      const msg = sealMessage(hdr, inner, c);
      const icv = msg.subarray(msg.length - p.icvLength);
      assert.equal(hex(icv), hex(createHmac(p.hash, ka).update(msg.subarray(0, msg.length - p.icvLength)).digest().subarray(0, p.icvLength)));
      // plaintext (8) + Pad Length (1) padded to 16: one block
      assert.equal(msg.length, 28 + 4 + 16 + 16 + p.icvLength);
      const dec = decodeMessage(msg);
      assert.deepEqual(openMessage(dec, c), inner.map((x) => ({ ...x, critical: false })));
      const bad = Buffer.from(msg);
      bad[40] ^= 1;
      assert.throws(() => openMessage(decodeMessage(bad), c), { code: "IKE_INTEGRITY_FAILED" });
    }
  }
});

// ---------------------------------------------------------------- RFC 7634

test("RFC 7634 Appendix B: IKEv2 SK payload with ChaCha20-Poly1305, byte for byte", () => {
  const key = h("808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f a0a1a2a3"); // key | salt
  const c = createSkCipher({ encr: EncrId.CHACHA20_POLY1305, encrKeyBits: 256, integ: 0 }, key, Buffer.alloc(0), { iv: () => h("1011121314151617") });
  const hdr = { spiI: h("c0c1c2c3c4c5c6c7"), spiR: h("d0d1d2d3d4d5d6d7"), exchangeType: ExchangeType.INFORMATIONAL, messageId: 9, initiator: false, response: false };
  const inner: NotifyPayload[] = [{ type: PayloadType.NOTIFY, protocol: 0, notifyType: NotifyType.SET_WINDOW_SIZE, spi: Buffer.alloc(0), data: h("0000000a") }];
  const msg = sealMessage(hdr, inner, c);
  const expected = h(
    "c0c1c2c3c4c5c6c7 d0d1d2d3d4d5d6d7 2e202500 00000009 00000045" + // IKE header
    "29000029" + // SK: next = N, length 41
    "1011121314151617" + // IV
    "6103947 01f8d017f7c129248896b71bfe25236efd7cdc67066906315b2".replace(/ /g, ""), // ciphertext | ICV
  );
  assert.equal(hex(msg), hex(expected));
  const dec = decodeMessage(expected);
  const ps = openMessage(dec, c) as NotifyPayload[];
  assert.equal(ps.length, 1);
  assert.equal(ps[0]!.notifyType, NotifyType.SET_WINDOW_SIZE);
  assert.equal(hex(ps[0]!.data), "0000000a");
});

test("AES-GCM-128/256 SK round trip and tamper detection (RFC 5282)", () => {
  for (const bits of [128, 256]) {
    const key = Buffer.alloc(bits / 8 + 4, 7);
    const c = createSkCipher({ encr: EncrId.AES_GCM_16, encrKeyBits: bits, integ: 0 }, key, Buffer.alloc(0));
    const hdr = { spiI: Buffer.alloc(8, 1), spiR: Buffer.alloc(8, 2), exchangeType: ExchangeType.INFORMATIONAL, messageId: 1, initiator: false, response: true };
    const msg = sealMessage(hdr, [], c);
    assert.equal(msg.length, 28 + 4 + 8 + 1 + 16);
    assert.deepEqual(openMessage(decodeMessage(msg), c), []);
    for (const at of [0, 17, 30, 35, msg.length - 1]) {
      const bad = Buffer.from(msg);
      bad[at] ^= 0x80;
      assert.throws(() => openMessage(decodeMessage(bad), c), (e: { code?: string }) => e.code === "IKE_INTEGRITY_FAILED" || e.code === "IKE_BAD_MAJOR_VERSION" || (e.code ?? "").startsWith("IKE_"));
    }
  }
});

// ---------------------------------------------------------------- DH

test("RFC 5903 §8: ECP groups 19, 20, 21 (KE data x||y, shared secret x)", () => {
  const vectors: [number, string, string, string, string, string][] = [
    [DhId.ECP_256,
      "814264145f2f56f2e96a8e337a1284993faf432a5abce59e867b7291d507a3af",
      "2ce1788ec197e096db95a200cc0ab26a19ce6bccad562b8eee1b593761cf7f41",
      "2af502f3be8952f2c9b5a8d4160d09e97165be50bc42ae4a5e8d3b4ba83aeb15eb0faf4ca986c4d38681a0f9872d79d56795bd4bff6e6de3c0f5015ece5efd85",
      "b120de4aa36492795346e8de6c2c8646ae06aaea279fa775b3ab0715f6ce51b09f1b7eece20d7b5ed8ec685fa3f071d83727027092a8411385c34dde5708b2b6",
      "dd0f5396219d1ea393310412d19a08f1f5811e9dc8ec8eea7f80d21c820c2788"],
    [DhId.ECP_384,
      "d27335ea71664af244dd14e9fd1260715dfd8a7965571c48d709ee7a7962a156d706a90cbcb5df2986f05feadb9376f1",
      "52d1791fdb4b70f89c0f00d456c2f7023b6125262c36a7df1f80231121cce3d39be52e00c194a4132c4a6c768bcd94d2",
      "793148f1787634d5da4c6d9074417d05e057ab62f82054d10ee6b0403d6279547e6a8ea9d1fd77427d016fe27a8b8c66c6c41294331d23e6f480f4fb4cd40504c947392e94f4c3f06b8f398bb29e42368f7a685923de3b67baced214a1a1d128",
      "5cd42ab9c41b5347f74b8d4efb708b3d5b36db65915359b44abc17647b6b9999789d72a84865ae2f223f12b5a1abc120e171458feaa939aaa3a8bfac46b404bd8f6d5b348c0fa4d80ceca16356ca933240bde8723415a8ece035b0edf36755de",
      "5ea1fc4af7256d2055981b110575e0a8cae53160137d904c59d926eb1b8456e427aa8a4540884c37de159a58028abc0e"],
    [DhId.ECP_521,
      "0113f82da825735e3d97276683b2b74277bad27335ea71664af2430cc4f33459b9669ee78b3ffb9b8683015d344dcbfef6fb9af4c6c470be254516cd3c1a1fb47362",
      "00cee3480d8645a17d249f2776d28bae616952d1791fdb4b70f7c3378732aa1b22928448bcd1dc2496d435b01048066ebe4f72903c361b1a9dc1193dc2c9d0891b96",
      "01ebb34dd75721abf8adc9dbed17889cbb9765d90a7c60f2cef007bb0f2b26e14881fd4442e689d61cb2dd046ee30e3ffd20f9a45bbdf6413d583a2dbf59924fd35c00f6b632d194c0388e22d8437e558c552ae195adfd153f92d74908351b2f8c4eda94edb0916d1b53c020b5eecaed1a5fc38a233e4830587bb2ee3489b3b42a5a86a4",
      "010ebfafc6e85e08d24bfffcc1a4511db0e634beeb1b6dec8c5939ae44766201af6200430ba97c8ac6a0e9f08b33ce7e9feeb5ba4ee5e0d81510c24295b8a08d023500a4a6ec300df9e257b0372b5e7abfef093436719a77887ebb0b18cf8099b9f4212b6e30a1419c18e029d36863cc9d448f4dba4d2a0e60711be572915fbd4fef2695",
      "00cdea89621cfa46b132f9e4cfe2261cde2d4368eb5656634c7cc98c7a00cde54ed1866a0dd3e6126c9d2f845daff82ceb1da08f5d87521bb0ebeca77911169c20cc"],
  ];
  for (const [group, i, r, gi, gr, shared] of vectors) {
    const a = createKeyExchange(group, { privateKey: h(i) });
    const b = createKeyExchange(group, { privateKey: h(r) });
    assert.equal(hex(a.publicValue), gi, `g^i group ${group}`);
    assert.equal(hex(b.publicValue), gr, `g^r group ${group}`);
    assert.equal(hex(a.computeSharedSecret(h(gr))), shared);
    assert.equal(hex(b.computeSharedSecret(h(gi))), shared);
    validatePublicValue(group, h(gi));
    // a point off the curve, and wrong lengths, are refused
    const off = h(gi);
    off[off.length - 1] ^= 1;
    assert.throws(() => a.computeSharedSecret(off), KeyExchangeError);
    assert.throws(() => validatePublicValue(group, off), KeyExchangeError);
    assert.throws(() => a.computeSharedSecret(h(gi).subarray(1)), KeyExchangeError);
    assert.throws(() => a.computeSharedSecret(Buffer.alloc(h(gi).length)), KeyExchangeError);
  }
});

test("RFC 7748 §6.1 and RFC 8031 Appendix A: X25519", () => {
  const vectors = [
    ["77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a", "5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb",
      "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a", "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f",
      "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742"],
    ["75 1f b4 30 86 55 b4 76 b6 78 9b 73 25 f9 ea 8c dd d1 6a 58 53 3f f6 d9 e6 00 09 46 4a 5f 9d 94", "0a546452 53290d60 ddadd0e0 30bacd9e 5501efdc 220755a1 e978f1b8 39a05688",
      "48d5ddd4061257ba166fa3f9bbdb74f1a4e81c089384fa77f790709f0dfbc766", "0be7c1f5aad87d7e448662673298a443478b8597 45179eaf564c79c0ef6eee25",
      "c74950607a12327f3204d94b6825bfb068b7f8319a9e3708ed3d43ce8130c950"],
  ];
  for (const [a, b, pa, pb, k] of vectors) {
    const ka = createKeyExchange(DhId.CURVE25519, { privateKey: h(a!) });
    const kb = createKeyExchange(DhId.CURVE25519, { privateKey: h(b!) });
    assert.equal(hex(ka.publicValue), hex(h(pa!)));
    assert.equal(hex(kb.publicValue), hex(h(pb!)));
    assert.equal(hex(ka.computeSharedSecret(h(pb!))), hex(h(k!)));
    assert.equal(hex(kb.computeSharedSecret(h(pa!))), hex(h(k!)));
  }
  const x = createKeyExchange(DhId.CURVE25519);
  // RFC 8031 §2: all-zero output (low-order points) MUST be rejected
  assert.throws(() => x.computeSharedSecret(Buffer.alloc(32)), KeyExchangeError);
  assert.throws(() => x.computeSharedSecret(h("0100000000000000000000000000000000000000000000000000000000000000")), KeyExchangeError);
  assert.throws(() => x.computeSharedSecret(Buffer.alloc(31, 9)), KeyExchangeError);
});

test("MODP 14/15/16: RFC 3526 primes, agreement, padding and range checks", () => {
  for (const [group, bytes] of [[DhId.MODP_2048, 256], [DhId.MODP_3072, 384], [DhId.MODP_4096, 512]] as const) {
    const p = modpPrime(group);
    assert.equal(p.length, bytes);
    // RFC 3526: p = 2^n - 2^(n-64) - 1 + 2^64 * ( [2^(n-130) pi] + k ): top and bottom 64 bits all ones
    assert.equal(hex(p.subarray(0, 8)), "ffffffffffffffff");
    assert.equal(hex(p.subarray(8, 16)), "c90fdaa22168c234");
    assert.equal(hex(p.subarray(bytes - 8)), "ffffffffffffffff");
    const a = createKeyExchange(group);
    const b = createKeyExchange(group);
    assert.equal(a.publicValue.length, bytes);
    const s1 = a.computeSharedSecret(b.publicValue);
    assert.equal(s1.length, bytes);
    assert.equal(hex(s1), hex(b.computeSharedSecret(a.publicValue)));
    const one = Buffer.alloc(bytes);
    one[bytes - 1] = 1;
    const pm1 = Buffer.from(p);
    pm1[bytes - 1]! -= 1;
    for (const bad of [Buffer.alloc(bytes), one, pm1, p, Buffer.alloc(bytes, 0xff), Buffer.alloc(bytes - 1, 5)]) {
      assert.throws(() => a.computeSharedSecret(bad), KeyExchangeError);
    }
  }
  // a private value of 1 makes g^x = 2: left-padded to the prime length
  const k = createKeyExchange(DhId.MODP_2048, { privateKey: Buffer.from([1]) });
  assert.equal(k.publicValue.length, 256);
  assert.equal(k.publicValue[255], 2);
  assert.ok(k.publicValue.subarray(0, 255).every((x) => x === 0));
});

test("weak or unknown DH groups are refused", () => {
  for (const g of [DhId.MODP_1024, DhId.MODP_1536, DhId.MODP_768, DhId.ECP_192, DhId.CURVE448, 1000]) {
    assert.throws(() => createKeyExchange(g), { code: "WEAK_CRYPTO" });
  }
});

// ---------------------------------------------------------------- prf+, KEYMAT

test("prf+ (RFC 7296 §2.13) against a hand-derived expansion", () => {
  const K = Buffer.from("key");
  const S = Buffer.from("seed");
  const hm = (d: Buffer) => createHmac("sha256", K).update(d).digest();
  const t1 = hm(Buffer.concat([S, Buffer.from([1])]));
  const t2 = hm(Buffer.concat([t1, S, Buffer.from([2])]));
  const t3 = hm(Buffer.concat([t2, S, Buffer.from([3])]));
  assert.equal(hex(prfPlus(PrfId.HMAC_SHA2_256, K, S, 70)), hex(Buffer.concat([t1, t2, t3]).subarray(0, 70)));
  assert.equal(hex(prfPlus(PrfId.HMAC_SHA2_256, K, S, 32)), hex(t1));
  assert.equal(prfPlus(PrfId.HMAC_SHA2_512, K, S, 255 * 64).length, 255 * 64);
  assert.throws(() => prfPlus(PrfId.HMAC_SHA2_256, K, S, 255 * 32 + 1), RangeError);
  assert.throws(() => prf(PrfId.HMAC_SHA1, K, S), { code: "WEAK_CRYPTO" });
});

test("IKE SA keys in one HKDF call equal SKEYSEED + prf+ (RFC 7296 §2.14) for every PRF and cipher kind", () => {
  const g = Buffer.alloc(32, 0x5a), ni = Buffer.alloc(32, 1), nr = Buffer.alloc(24, 2), spiI = Buffer.alloc(8, 3), spiR = Buffer.alloc(8, 4);
  for (const prfId of [PrfId.HMAC_SHA2_256, PrfId.HMAC_SHA2_384, PrfId.HMAC_SHA2_512]) {
    for (const c of [{ encr: EncrId.AES_GCM_16, encrKeyBits: 256, integ: IntegId.NONE }, { encr: EncrId.AES_CBC, encrKeyBits: 128, integ: IntegId.HMAC_SHA2_256_128 }]) {
      const alg = { prf: prfId, ...c };
      const want = deriveIkeKeys(alg, skeyseed(prfId, ni, nr, g), ni, nr, spiI, spiR);
      const got = deriveInitialIkeKeys(alg, g, ni, nr, spiI, spiR);
      for (const k of Object.keys(want) as (keyof typeof want)[]) assert.equal(hex(got[k]), hex(want[k]), `${k} prf ${prfId} encr ${c.encr}`);
    }
  }
});

test("CHILD SA KEYMAT (RFC 7296 §2.17): order and salt, with and without PFS", () => {
  const skD = Buffer.alloc(32, 9);
  const ni = Buffer.alloc(32, 1);
  const nr = Buffer.alloc(32, 2);
  const gcm = deriveChildKeys(PrfId.HMAC_SHA2_256, skD, { encr: EncrId.AES_GCM_16, encrKeyBits: 256, integ: 0 }, ni, nr);
  const km = prfPlus(PrfId.HMAC_SHA2_256, skD, Buffer.concat([ni, nr]), 72);
  assert.equal(hex(gcm.encrI), hex(km.subarray(0, 36)));
  assert.equal(hex(gcm.encrR), hex(km.subarray(36, 72)));
  assert.equal(gcm.integI.length + gcm.integR.length, 0);
  const cbc = deriveChildKeys(PrfId.HMAC_SHA2_384, skD, { encr: EncrId.AES_CBC, encrKeyBits: 128, integ: IntegId.HMAC_SHA2_256_128 }, ni, nr, Buffer.alloc(256, 3));
  const km2 = prfPlus(PrfId.HMAC_SHA2_384, skD, Buffer.concat([Buffer.alloc(256, 3), ni, nr]), 2 * (16 + 32));
  assert.deepEqual([cbc.encrI, cbc.integI, cbc.encrR, cbc.integR].map(hex), [km2.subarray(0, 16), km2.subarray(16, 48), km2.subarray(48, 64), km2.subarray(64, 96)].map(hex));
  const cc = deriveChildKeys(PrfId.HMAC_SHA2_256, skD, { encr: EncrId.CHACHA20_POLY1305, encrKeyBits: 256, integ: 0 }, ni, nr);
  assert.equal(cc.encrI.length, 36);
});

test("rekeyed SKEYSEED = prf(SK_d(old), g^ir(new) | Ni | Nr) with the old PRF (RFC 7296 §2.18)", () => {
  const old = Buffer.alloc(48, 4);
  const g = Buffer.alloc(32, 5);
  const ni = Buffer.alloc(32, 6);
  const nr = Buffer.alloc(32, 7);
  assert.equal(hex(rekeySkeyseed(PrfId.HMAC_SHA2_384, old, g, ni, nr)), hex(createHmac("sha384", old).update(Buffer.concat([g, ni, nr])).digest()));
});

// ---------------------------------------------------------------- RFC 7427

test("RFC 7427 AlgorithmIdentifier blobs are well-formed DER with the right OIDs", () => {
  const ids = SIGNATURE_ALGORITHM_IDENTIFIERS;
  for (const blob of Object.values(ids)) {
    assert.equal(blob[0], 0x30);
    assert.equal(blob[1], blob.length - 2); // short-form SEQUENCE length covers the rest
    assert.equal(blob[2], 0x06); // OID first
  }
  assert.equal(hex(ids[SignatureScheme.ED25519]), "300506032b6570");
  assert.equal(hex(ids[SignatureScheme.ECDSA_SHA256]), "300a06082a8648ce3d040302");
  assert.equal(hex(ids[SignatureScheme.ECDSA_SHA384]), "300a06082a8648ce3d040303");
  assert.equal(ids[SignatureScheme.RSA_PSS_SHA256].length, 67);
  assert.ok(hex(ids[SignatureScheme.RSA_PSS_SHA256]).startsWith("304106092a864886f70d01010a3034"));
  assert.ok(hex(ids[SignatureScheme.RSA_PSS_SHA256]).endsWith("a203020120"));
});

test("RFC 7427 signature AUTH: sign and verify Ed25519, ECDSA P-256/P-384, RSA-PSS, RSA PKCS#1", () => {
  const octets = Buffer.from("InitiatorSignedOctets");
  const keys: [SignatureSchemeName, ReturnType<typeof generateKeyPairSync>][] = [
    [SignatureScheme.ED25519, generateKeyPairSync("ed25519")],
    [SignatureScheme.ECDSA_SHA256, generateKeyPairSync("ec", { namedCurve: "prime256v1" })],
    [SignatureScheme.ECDSA_SHA384, generateKeyPairSync("ec", { namedCurve: "secp384r1" })],
    [SignatureScheme.RSA_PSS_SHA256, generateKeyPairSync("rsa", { modulusLength: 2048 })],
    [SignatureScheme.RSA_PKCS1_SHA256, generateKeyPairSync("rsa", { modulusLength: 2048 })],
  ];
  for (const [scheme, kp] of keys) {
    if (scheme !== SignatureScheme.RSA_PKCS1_SHA256) assert.equal(defaultSchemeFor(kp.privateKey), scheme);
    const data = signAuthData(scheme, kp.privateKey, octets);
    assert.equal(data[0], SIGNATURE_ALGORITHM_IDENTIFIERS[scheme].length);
    assert.equal(parseSignatureAuthData(data).scheme, scheme);
    assert.equal(verifySignatureAuthData(data, kp.publicKey, octets), scheme);
    assert.throws(() => verifySignatureAuthData(data, kp.publicKey, Buffer.from("other octets")), AuthError);
    const bad = Buffer.from(data);
    bad[bad.length - 5] ^= 1;
    assert.throws(() => verifySignatureAuthData(bad, kp.publicKey, octets), AuthError);
    assert.throws(() => verifySignatureAuthData(data, kp.publicKey, octets, [SignatureScheme.ED25519].filter((s) => s !== scheme)), AuthError);
  }
  // a signature that claims Ed25519 against an ECDSA key is refused
  const ed = signAuthData(SignatureScheme.ED25519, keys[0]![1].privateKey, octets);
  assert.throws(() => verifySignatureAuthData(ed, keys[1]![1].publicKey, octets), AuthError);
  // unknown AlgorithmIdentifier (sha1WithRSAEncryption) and truncated data
  assert.throws(() => parseSignatureAuthData(h("0f300d06092a864886f70d0101050500aa")), AuthError);
  assert.throws(() => parseSignatureAuthData(h("0c300a06")), AuthError);
  assert.throws(() => parseSignatureAuthData(Buffer.alloc(0)), AuthError);
});

test("SIGNATURE_HASH_ALGORITHMS notify data (RFC 7427 §4)", () => {
  assert.equal(hex(encodeSignatureHashAlgorithms([2, 3, 4, 5])), "0002000300040005");
  assert.deepEqual(decodeSignatureHashAlgorithms(h("00020003000400050099")), [2, 3, 4, 5, 0x99]);
  assert.throws(() => decodeSignatureHashAlgorithms(h("000200")), AuthError);
});

// ---------------------------------------------------------------- NAT-D, cookies

test("address bytes for NAT-D and cookies", () => {
  assert.equal(hex(addressBytes("192.0.2.1")), "c0000201");
  assert.equal(hex(addressBytes("2001:db8::1")), "20010db8000000000000000000000001");
  assert.equal(hex(addressBytes("::")), "00000000000000000000000000000000");
  assert.equal(hex(addressBytes("::ffff:192.0.2.1")), "00000000000000000000ffffc0000201");
  assert.equal(hex(addressBytes("fe80::1:2")), "fe800000000000000000000000010002");
  assert.throws(() => addressBytes("not-an-ip"), RangeError);
});

test("COOKIE (RFC 7296 §2.6): versioned secrets, current and previous accepted", () => {
  const jar = new CookieJar(Buffer.alloc(32, 1));
  const ni = Buffer.alloc(32, 2);
  const spi = Buffer.alloc(8, 3);
  const c0 = jar.make(ni, "192.0.2.1", spi);
  assert.equal(c0.length, 33);
  assert.equal(c0[0], 0);
  assert.ok(jar.verify(c0, ni, "192.0.2.1", spi));
  assert.ok(!jar.verify(c0, ni, "192.0.2.9", spi));
  assert.ok(!jar.verify(c0, Buffer.alloc(32, 9), "192.0.2.1", spi));
  jar.rotate(Buffer.alloc(32, 4));
  const c1 = jar.make(ni, "192.0.2.1", spi);
  assert.equal(c1[0], 1);
  assert.notEqual(hex(c1), hex(c0));
  assert.ok(jar.verify(c0, ni, "192.0.2.1", spi), "previous secret still accepted");
  assert.ok(jar.verify(c1, ni, "192.0.2.1", spi));
  jar.rotate();
  assert.ok(!jar.verify(c0, ni, "192.0.2.1", spi), "two rotations old: refused");
  assert.ok(!jar.verify(Buffer.alloc(5), ni, "192.0.2.1", spi));
  assert.ok(!String(jar).includes("01010101"));
});
