/**
 * Golden vectors from a real strongSwan 5.9.8 exchange (fixtures/strongswan-psk-gcm.ts):
 * every field of IKE_SA_INIT, the decrypted IKE_AUTH, and key derivation / AUTH checked
 * against what charon logged.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  DhId, EncrId, ExchangeType, HashAlgorithm, IdType, NotifyType, PayloadType, PrfId, ProtocolId, TransformType, TsType,
  decodeMessage, encodeMessage, idPayloadBody, keyLengthOf, openMessage, sealMessage,
  type IdPayload, type KePayload, type NoncePayload, type NotifyPayload, type Payload, type SaPayload, type TsPayload, type AuthPayload,
} from "../../src/ike/wire/index.js";
import {
  createSkCipher, decodeSignatureHashAlgorithms, deriveIkeKeys, natDetectionHash, prf, pskAuthData, signedOctets, skeyseed, verifyPskAuth,
} from "../../src/ike/crypto/index.js";
import * as fx from "./fixtures/strongswan-psk-gcm.js";

const hex = (b: Buffer) => b.toString("hex");
const notifies = (ps: Payload[]) => ps.filter((p): p is NotifyPayload => p.type === PayloadType.NOTIFY);
const find = <T extends Payload>(ps: Payload[], type: number) => ps.find((p) => p.type === type) as T;
const GCM256 = { encr: EncrId.AES_GCM_16, encrKeyBits: 256, integ: 0 };

test("strongSwan IKE_SA_INIT request: header and every payload", () => {
  const m = decodeMessage(fx.ikeSaInitRequest);
  assert.equal(hex(m.header.spiI), "b238fb7f3159511b");
  assert.equal(hex(m.header.spiR), "0000000000000000");
  assert.equal(m.header.majorVersion, 2);
  assert.equal(m.header.minorVersion, 0);
  assert.equal(m.header.exchangeType, ExchangeType.IKE_SA_INIT);
  assert.equal(m.header.initiator, true);
  assert.equal(m.header.response, false);
  assert.equal(m.header.higherVersion, false);
  assert.equal(m.header.messageId, 0);
  assert.equal(m.header.length, 232);
  assert.deepEqual(m.payloads.map((p) => p.type), [33, 34, 40, 41, 41, 41, 41, 41]);
  assert.ok(m.payloads.every((p) => p.critical === false));

  const sa = find<SaPayload>(m.payloads, PayloadType.SA);
  assert.equal(sa.proposals.length, 1);
  const p = sa.proposals[0]!;
  assert.equal(p.num, 1);
  assert.equal(p.protocol, ProtocolId.IKE);
  assert.equal(p.spi.length, 0);
  assert.equal(p.transforms.length, 3);
  assert.deepEqual([p.transforms[0]!.type, p.transforms[0]!.id, keyLengthOf(p.transforms[0]!)], [TransformType.ENCR, EncrId.AES_GCM_16, 256]);
  assert.deepEqual([p.transforms[1]!.type, p.transforms[1]!.id, p.transforms[1]!.attributes.length], [TransformType.PRF, PrfId.HMAC_SHA2_256, 0]);
  assert.deepEqual([p.transforms[2]!.type, p.transforms[2]!.id], [TransformType.DH, DhId.CURVE25519]);

  const ke = find<KePayload>(m.payloads, PayloadType.KE);
  assert.equal(ke.group, DhId.CURVE25519);
  assert.equal(ke.data.length, 32);
  assert.equal(hex(ke.data), "fed69f532db108d30c0562e8eb81f8ad911365e660e24e77db98f66564e0da31");

  const n = find<NoncePayload>(m.payloads, PayloadType.NONCE);
  assert.equal(n.nonce.length, 32);

  const ns = notifies(m.payloads);
  assert.deepEqual(ns.map((x) => x.notifyType), [
    NotifyType.NAT_DETECTION_SOURCE_IP, NotifyType.NAT_DETECTION_DESTINATION_IP,
    NotifyType.IKEV2_FRAGMENTATION_SUPPORTED, NotifyType.SIGNATURE_HASH_ALGORITHMS, NotifyType.REDIRECT_SUPPORTED,
  ]);
  for (const x of ns) {
    assert.equal(x.protocol, 0);
    assert.equal(x.spi.length, 0);
  }
  assert.equal(ns[0]!.data.length, 20);
  assert.equal(ns[2]!.data.length, 0);
  assert.deepEqual(decodeSignatureHashAlgorithms(ns[3]!.data), [HashAlgorithm.SHA2_256, HashAlgorithm.SHA2_384, HashAlgorithm.SHA2_512, HashAlgorithm.IDENTITY]);
});

test("strongSwan IKE_SA_INIT response: header, chosen proposal and notifies", () => {
  const m = decodeMessage(fx.ikeSaInitResponse);
  assert.equal(hex(m.header.spiR), "cbcd6cdd50d918d9");
  assert.equal(m.header.response, true);
  assert.equal(m.header.initiator, false);
  assert.equal(m.header.length, 240);
  const sa = find<SaPayload>(m.payloads, PayloadType.SA);
  assert.equal(sa.proposals.length, 1);
  assert.deepEqual(sa.proposals[0]!.transforms.map((t) => t.id), [EncrId.AES_GCM_16, PrfId.HMAC_SHA2_256, DhId.CURVE25519]);
  assert.deepEqual(notifies(m.payloads).map((x) => x.notifyType), [
    NotifyType.NAT_DETECTION_SOURCE_IP, NotifyType.NAT_DETECTION_DESTINATION_IP, NotifyType.IKEV2_FRAGMENTATION_SUPPORTED,
    NotifyType.SIGNATURE_HASH_ALGORITHMS, NotifyType.CHILDLESS_IKEV2_SUPPORTED, NotifyType.MULTIPLE_AUTH_SUPPORTED,
  ]);
});

test("re-encoding the strongSwan messages yields the same bytes", () => {
  for (const raw of [fx.ikeSaInitRequest, fx.ikeSaInitResponse, fx.ikeAuthRequest, fx.ikeAuthResponse, fx.informationalRequest]) {
    const m = decodeMessage(raw);
    assert.equal(hex(encodeMessage(m.header, m.payloads)), hex(raw));
  }
});

test("NAT-D hashes match charon's (RFC 7296 §2.23)", () => {
  const c = fx.charonLog;
  // the chunk charon hashed is SPIi | SPIr | IP | port
  assert.equal(hex(natDetectionHash(c.natdChunk2.subarray(0, 8), c.natdChunk2.subarray(8, 16), "192.0.2.2", 500)), hex(c.natdHash2));
  assert.equal(hex(natDetectionHash(c.natdChunk1.subarray(0, 8), c.natdChunk1.subarray(8, 16), c.natdChunk1.subarray(16, 20), c.natdChunk1.readUInt16BE(20))), hex(c.natdHash1));
  const m = decodeMessage(fx.ikeSaInitRequest);
  assert.equal(hex(notifies(m.payloads)[1]!.data), hex(c.natdHash2));
});

test("SKEYSEED and the seven keys match charon (RFC 7296 §2.14)", () => {
  const i = decodeMessage(fx.ikeSaInitRequest);
  const r = decodeMessage(fx.ikeSaInitResponse);
  const ni = find<NoncePayload>(i.payloads, PayloadType.NONCE).nonce;
  const nr = find<NoncePayload>(r.payloads, PayloadType.NONCE).nonce;
  const seed = skeyseed(PrfId.HMAC_SHA2_256, ni, nr, fx.charonLog.gir);
  assert.equal(hex(seed), hex(fx.charonLog.skeyseed));
  const k = deriveIkeKeys({ prf: PrfId.HMAC_SHA2_256, ...GCM256 }, seed, ni, nr, r.header.spiI, r.header.spiR);
  assert.equal(hex(k.skD), hex(fx.charonLog.skD));
  assert.equal(k.skAi.length, 0);
  assert.equal(k.skAr.length, 0);
  assert.equal(hex(k.skEi), hex(fx.charonLog.skEi));
  assert.equal(hex(k.skEr), hex(fx.charonLog.skEr));
  assert.equal(hex(k.skPi), hex(fx.charonLog.skPi));
  assert.equal(hex(k.skPr), hex(fx.charonLog.skPr));
});

test("strongSwan IKE_AUTH request decrypts (AES-GCM-256, RFC 5282) and every inner field is right", () => {
  const m = decodeMessage(fx.ikeAuthRequest);
  assert.equal(m.header.exchangeType, ExchangeType.IKE_AUTH);
  assert.equal(m.header.messageId, 1);
  assert.equal(m.encrypted?.type, PayloadType.SK);
  assert.equal(m.encrypted?.innerFirst, PayloadType.IDi);
  const ps = openMessage(m, createSkCipher(GCM256, fx.charonLog.skEi, Buffer.alloc(0)));
  assert.deepEqual(ps.map((p) => p.type), [35, 41, 36, 39, 33, 44, 45, 41, 41, 41, 41, 41]);
  const idi = find<IdPayload>(ps, PayloadType.IDi);
  assert.equal(idi.idType, IdType.FQDN);
  assert.equal(idi.data.toString(), "gwa.example.test");
  const idr = find<IdPayload>(ps, PayloadType.IDr);
  assert.equal(idr.data.toString(), "gwb.example.test");
  const auth = find<AuthPayload>(ps, PayloadType.AUTH);
  assert.equal(auth.method, 2);
  assert.equal(hex(auth.data), hex(fx.charonLog.initiatorAuth));
  const sa = find<SaPayload>(ps, PayloadType.SA);
  assert.equal(sa.proposals[0]!.protocol, ProtocolId.ESP);
  assert.equal(hex(sa.proposals[0]!.spi), "05655dd2");
  assert.deepEqual(sa.proposals[0]!.transforms.map((t) => [t.type, t.id]), [[1, 20], [5, 0]]);
  const tsi = find<TsPayload>(ps, PayloadType.TSi);
  assert.equal(tsi.selectors.length, 1);
  const s = tsi.selectors[0]!;
  assert.deepEqual([s.tsType, s.ipProtocol, s.startPort, s.endPort, hex(s.startAddress), hex(s.endAddress)], [TsType.IPV4_ADDR_RANGE, 0, 0, 65535, "0a010000", "0a01ffff"]);
  const tsr = find<TsPayload>(ps, PayloadType.TSr);
  assert.equal(hex(tsr.selectors[0]!.startAddress), "0a020000");
  assert.deepEqual(notifies(ps).map((n) => n.notifyType), [
    NotifyType.INITIAL_CONTACT, NotifyType.MOBIKE_SUPPORTED, NotifyType.NO_ADDITIONAL_ADDRESSES, NotifyType.MULTIPLE_AUTH_SUPPORTED,
    NotifyType.EAP_ONLY_AUTHENTICATION, NotifyType.IKEV2_MESSAGE_ID_SYNC_SUPPORTED,
  ]);
});

test("re-sealing the decrypted IKE_AUTH with charon's IV reproduces its bytes", () => {
  const m = decodeMessage(fx.ikeAuthRequest);
  const ps = openMessage(m, createSkCipher(GCM256, fx.charonLog.skEi, Buffer.alloc(0)));
  const iv = fx.ikeAuthRequest.subarray(28 + 4, 28 + 4 + 8);
  const again = sealMessage(m.header, ps, createSkCipher(GCM256, fx.charonLog.skEi, Buffer.alloc(0), { iv: () => Buffer.from(iv) }));
  assert.equal(hex(again), hex(fx.ikeAuthRequest));
});

test("the other protected messages open with the right direction's key", () => {
  const open = (raw: Buffer, key: Buffer) => openMessage(decodeMessage(raw), createSkCipher(GCM256, key, Buffer.alloc(0)));
  const resp = open(fx.ikeAuthResponse, fx.charonLog.skEr);
  assert.equal(find<AuthPayload>(resp, PayloadType.AUTH).data.length, 32);
  // MOBIKE address updates: INFORMATIONAL { N(NO_ADDITIONAL_ADDRESSES) } and empty responses
  assert.deepEqual(notifies(open(fx.informationalRequest, fx.charonLog.skEi)).map((n) => n.notifyType), [NotifyType.NO_ADDITIONAL_ADDRESSES]);
  assert.deepEqual(open(fx.informationalResponse, fx.charonLog.skEr), []);
  assert.deepEqual(notifies(open(fx.informationalRequest2, fx.charonLog.skEr)).map((n) => n.notifyType), [NotifyType.NO_ADDITIONAL_ADDRESSES]);
  assert.deepEqual(open(fx.informationalResponse2, fx.charonLog.skEi), []);
  assert.throws(() => open(fx.ikeAuthRequest, fx.charonLog.skEr), { code: "IKE_INTEGRITY_FAILED" });
});

test("AUTH octets and PSK AUTH match charon (RFC 7296 §2.15)", () => {
  const i = decodeMessage(fx.ikeSaInitRequest);
  const r = decodeMessage(fx.ikeSaInitResponse);
  const ni = find<NoncePayload>(i.payloads, PayloadType.NONCE).nonce;
  const nr = find<NoncePayload>(r.payloads, PayloadType.NONCE).nonce;
  const auth = openMessage(decodeMessage(fx.ikeAuthRequest), createSkCipher(GCM256, fx.charonLog.skEi, Buffer.alloc(0)));
  const idi = find<IdPayload>(auth, PayloadType.IDi);
  const octI = signedOctets(PrfId.HMAC_SHA2_256, fx.ikeSaInitRequest, nr, fx.charonLog.skPi, idPayloadBody(idi));
  assert.equal(hex(octI), hex(fx.charonLog.initiatorOctets));
  assert.equal(hex(prf(PrfId.HMAC_SHA2_256, fx.PSK, Buffer.from("Key Pad for IKEv2"))), hex(fx.charonLog.prfPskKeypad));
  assert.equal(hex(pskAuthData(PrfId.HMAC_SHA2_256, fx.PSK, octI)), hex(fx.charonLog.initiatorAuth));
  assert.ok(verifyPskAuth(PrfId.HMAC_SHA2_256, fx.PSK, octI, fx.charonLog.initiatorAuth));
  assert.ok(!verifyPskAuth(PrfId.HMAC_SHA2_256, Buffer.from("wrong"), octI, fx.charonLog.initiatorAuth));

  const resp = openMessage(decodeMessage(fx.ikeAuthResponse), createSkCipher(GCM256, fx.charonLog.skEr, Buffer.alloc(0)));
  const idr = find<IdPayload>(resp, PayloadType.IDr);
  const octR = signedOctets(PrfId.HMAC_SHA2_256, fx.ikeSaInitResponse, ni, fx.charonLog.skPr, idPayloadBody(idr));
  assert.equal(hex(octR), hex(fx.charonLog.responderOctets));
  assert.equal(hex(pskAuthData(PrfId.HMAC_SHA2_256, fx.PSK, octR)), hex(fx.charonLog.responderAuth));
  assert.equal(hex(find<AuthPayload>(resp, PayloadType.AUTH).data), hex(fx.charonLog.responderAuth));
});
