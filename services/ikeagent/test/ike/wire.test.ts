/**
 * Wire robustness: every prefix of valid messages rejected with a typed error, bad-input
 * tables, unknown and critical payloads, round trips of every payload, fragmentation.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  CfgType, DecodeErrorCode, EncrId, ExchangeType, FragmentError, FragmentReassembler, IdType, IkeDecodeError, NotifyType, PayloadType, TsType,
  UnsupportedCriticalPayloadError, InvalidMajorVersionError, decodeMessage, encodeMessage, openFragment, openMessage, sealMaybeFragmented, sealMessage,
  type IkeHeader, type Payload,
} from "../../src/ike/wire/index.js";
import { createSkCipher } from "../../src/ike/crypto/index.js";
import * as fx from "./fixtures/strongswan-psk-gcm.js";

const h = (s: string) => Buffer.from(s.replace(/\s+/g, ""), "hex");
const HDR: IkeHeader = { spiI: h("0102030405060708"), spiR: h("1112131415161718"), exchangeType: ExchangeType.IKE_AUTH, messageId: 1, initiator: true, response: false };
const GCM = createSkCipher({ encr: EncrId.AES_GCM_16, encrKeyBits: 128, integ: 0 }, Buffer.alloc(20, 3), Buffer.alloc(0));

/** One of every payload type that can be encoded. */
const ALL: Payload[] = [
  { type: PayloadType.SA, proposals: [{ num: 1, protocol: 3, spi: h("c0ffee01"), transforms: [{ type: 1, id: 12, attributes: [{ type: 14, value: 256 }, { type: 99, value: h("abcd") }] }, { type: 3, id: 12, attributes: [] }, { type: 5, id: 0, attributes: [] }] },
    { num: 2, protocol: 3, spi: h("c0ffee01"), transforms: [{ type: 1, id: 28, attributes: [] }] }] },
  { type: PayloadType.KE, group: 19, data: Buffer.alloc(64, 4) },
  { type: PayloadType.IDi, idType: IdType.IPV4_ADDR, data: h("c0000201") },
  { type: PayloadType.IDr, idType: IdType.FQDN, data: Buffer.from("gw.example") },
  { type: PayloadType.CERT, encoding: 4, data: Buffer.alloc(100, 5) },
  { type: PayloadType.CERTREQ, encoding: 4, data: Buffer.alloc(40, 6) },
  { type: PayloadType.AUTH, method: 14, data: Buffer.alloc(70, 7) },
  { type: PayloadType.NONCE, nonce: Buffer.alloc(32, 8) },
  { type: PayloadType.NOTIFY, protocol: 3, notifyType: NotifyType.REKEY_SA, spi: h("deadbeef"), data: Buffer.alloc(0) },
  { type: PayloadType.NOTIFY, protocol: 0, notifyType: 40000, spi: Buffer.alloc(0), data: h("01") },
  { type: PayloadType.DELETE, protocol: 3, spiSize: 4, spis: [h("00000001"), h("00000002")] },
  { type: PayloadType.DELETE, protocol: 1, spiSize: 0, spis: [] },
  { type: PayloadType.VENDOR_ID, data: Buffer.from("fleetswan") },
  { type: PayloadType.TSi, selectors: [{ tsType: TsType.IPV4_ADDR_RANGE, ipProtocol: 6, startPort: 80, endPort: 443, startAddress: h("0a000000"), endAddress: h("0a0000ff") },
    { tsType: TsType.IPV6_ADDR_RANGE, ipProtocol: 0, startPort: 0, endPort: 65535, startAddress: Buffer.alloc(16, 0), endAddress: Buffer.alloc(16, 0xff) },
    { tsType: 200, ipProtocol: 0, startPort: 0, endPort: 0, startAddress: Buffer.alloc(0), endAddress: Buffer.alloc(0), raw: h("0102030405") }] },
  { type: PayloadType.TSr, selectors: [] },
  { type: PayloadType.CP, cfgType: CfgType.CFG_REQUEST, attributes: [{ type: 1, value: Buffer.alloc(0) }, { type: 8, value: Buffer.alloc(17) }] },
  { type: 200, unknown: true, critical: false, body: h("cafe") },
];

const withCritical = (ps: Payload[]) => ps.map((p) => ({ ...p, critical: p.critical ?? false }));

test("every payload round-trips through encode/decode (cleartext and inside SK)", () => {
  const raw = encodeMessage(HDR, ALL);
  const m = decodeMessage(raw);
  assert.deepEqual(m.payloads, withCritical(ALL));
  assert.equal(m.header.length, raw.length);
  const sealed = sealMessage(HDR, ALL, GCM);
  assert.deepEqual(openMessage(decodeMessage(sealed), GCM), withCritical(ALL));
});

test("every prefix of a valid message is rejected with a typed error (byte-at-a-time)", () => {
  for (const msg of [fx.ikeSaInitRequest, fx.ikeSaInitResponse, fx.ikeAuthRequest, encodeMessage(HDR, ALL)]) {
    for (let n = 0; n < msg.length; n++) {
      assert.throws(() => decodeMessage(msg.subarray(0, n)), IkeDecodeError, `prefix ${n}`);
    }
    // fixing up the length field still leaves a truncated payload chain
    for (let n = 28; n < msg.length; n++) {
      const cut = Buffer.from(msg.subarray(0, n));
      cut.writeUInt32BE(n, 24);
      assert.throws(() => decodeMessage(cut), (e: unknown) => e instanceof IkeDecodeError && e.notifyType === NotifyType.INVALID_SYNTAX, `fixed-up prefix ${n}`);
    }
  }
});

test("bad-input table: each malformation gives its code", () => {
  const base = encodeMessage(HDR, [{ type: PayloadType.NONCE, nonce: Buffer.alloc(16, 1) }]);
  const mut = (f: (b: Buffer) => void) => {
    const b = Buffer.from(base);
    f(b);
    return b;
  };
  const cases: [string, Buffer, string][] = [
    ["major version 1", mut((b) => (b[17] = 0x10)), DecodeErrorCode.BAD_VERSION],
    ["major version 3", mut((b) => (b[17] = 0x30)), DecodeErrorCode.BAD_VERSION],
    ["length < 28", mut((b) => b.writeUInt32BE(20, 24)), DecodeErrorCode.BAD_LENGTH],
    ["length > datagram", mut((b) => b.writeUInt32BE(500, 24)), DecodeErrorCode.TRUNCATED],
    ["trailing datagram bytes", Buffer.concat([base, h("00")]), DecodeErrorCode.TRAILING_BYTES],
    ["payload length < 4", mut((b) => b.writeUInt16BE(3, 30)), DecodeErrorCode.BAD_LENGTH],
    ["payload length past end", mut((b) => b.writeUInt16BE(200, 30)), DecodeErrorCode.TRUNCATED],
    ["nonce too short", encodeMessage(HDR, [{ type: PayloadType.NONCE, nonce: Buffer.alloc(15) }]), DecodeErrorCode.BAD_VALUE],
    ["nonce too long", encodeMessage(HDR, [{ type: PayloadType.NONCE, nonce: Buffer.alloc(257) }]), DecodeErrorCode.BAD_VALUE],
    ["bytes after last payload", (() => { const b = Buffer.concat([base, h("00000000")]); b.writeUInt32BE(b.length, 24); return b; })(), DecodeErrorCode.TRAILING_BYTES],
    ["SA without proposals", encodeMessage(HDR, [{ type: PayloadType.SA, proposals: [] }]), DecodeErrorCode.BAD_VALUE],
  ];
  for (const [name, buf, code] of cases) {
    assert.throws(() => decodeMessage(buf), (e: unknown) => e instanceof IkeDecodeError && e.code === code, name);
  }
  const sa = encodeMessage(HDR, [ALL[0]!]);
  const saCases: [string, (b: Buffer) => void, string][] = [
    ["proposal Last Substruc 1", (b) => (b[32] = 1), DecodeErrorCode.BAD_VALUE],
    ["first proposal says last, second follows", (b) => (b[32] = 0), DecodeErrorCode.TRAILING_BYTES],
    ["transform Last Substruc 2", (b) => (b[40 + 4] = 2), DecodeErrorCode.BAD_VALUE],
    ["num transforms too big", (b) => (b[39] = 4), DecodeErrorCode.BAD_VALUE],
    ["num transforms too small", (b) => (b[39] = 2), DecodeErrorCode.BAD_VALUE],
    ["proposal length below its header", (b) => b.writeUInt16BE(3, 34), DecodeErrorCode.BAD_LENGTH],
    ["proposal length cuts its fields", (b) => b.writeUInt16BE(6, 34), DecodeErrorCode.TRUNCATED],
    ["spi size beyond proposal", (b) => (b[38] = 200), DecodeErrorCode.TRUNCATED],
  ];
  for (const [name, f, code] of saCases) {
    const b = Buffer.from(sa);
    f(b);
    assert.throws(() => decodeMessage(b), (e: unknown) => e instanceof IkeDecodeError && e.code === code, name);
  }
  const ts = (sel: string) => { const m = encodeMessage(HDR, [{ type: PayloadType.TSi, selectors: [] }]); const b = Buffer.concat([m, h(sel)]); b[28 + 4] = 1; b.writeUInt16BE(8 + sel.length / 2, 30); b.writeUInt32BE(b.length, 24); return b; };
  assert.throws(() => decodeMessage(ts("07000014" + "0000ffff" + "0a000000" + "0a0000ff" + "00000000")), { code: DecodeErrorCode.BAD_LENGTH });
  assert.throws(() => decodeMessage(ts("08000010" + "0000ffff" + "0a000000" + "0a0000ff")), { code: DecodeErrorCode.BAD_LENGTH });
  const del = encodeMessage(HDR, [{ type: PayloadType.DELETE, protocol: 3, spiSize: 4, spis: [h("00000001")] }]);
  const d2 = Buffer.from(del);
  d2.writeUInt16BE(2, 34);
  assert.throws(() => decodeMessage(d2), { code: DecodeErrorCode.TRUNCATED });
  const d3 = encodeMessage(HDR, [{ type: PayloadType.DELETE, protocol: 1, spiSize: 0, spis: [] }]);
  d3.writeUInt16BE(1, 34);
  assert.throws(() => decodeMessage(d3), { code: DecodeErrorCode.BAD_VALUE });
});

test("unknown non-critical payloads are kept and skipped; critical ones map to UNSUPPORTED_CRITICAL_PAYLOAD", () => {
  const ok = decodeMessage(encodeMessage(HDR, [{ type: 99, unknown: true, critical: false, body: h("0102") }, { type: PayloadType.NONCE, nonce: Buffer.alloc(16) }]));
  assert.deepEqual(ok.payloads.map((p) => p.type), [99, PayloadType.NONCE]);
  const crit = encodeMessage(HDR, [{ type: PayloadType.NONCE, nonce: Buffer.alloc(16) }, { type: 99, unknown: true, critical: true, body: h("0102") }]);
  assert.throws(() => decodeMessage(crit), (e: unknown) => {
    assert.ok(e instanceof UnsupportedCriticalPayloadError);
    assert.equal(e.code, DecodeErrorCode.UNSUPPORTED_CRITICAL);
    assert.equal(e.payloadType, 99);
    assert.equal(e.notifyType, NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD);
    assert.equal(e.notifyData().toString("hex"), "63");
    return true;
  });
  // the critical bit on a known payload is ignored (§3.2) but kept for round trips
  const known = decodeMessage(encodeMessage(HDR, [{ type: PayloadType.NONCE, nonce: Buffer.alloc(16), critical: true }]));
  assert.equal(known.payloads[0]!.critical, true);
  const v = new InvalidMajorVersionError(3);
  assert.equal(v.notifyType, NotifyType.INVALID_MAJOR_VERSION);
});

test("EAP is decoded (not encoded)", () => {
  const m = Buffer.from(encodeMessage(HDR, [{ type: 48, unknown: true, body: h("0107000701") }]));
  const r = Buffer.concat([m, h("6869")]);
  r.writeUInt16BE(4 + 7, 30);
  r.writeUInt32BE(r.length, 24);
  const payload = decodeMessage(r).payloads[0]!;
  assert.deepEqual({ ...payload }, { type: PayloadType.EAP, code: 1, identifier: 7, eapType: 1, data: h("6869"), critical: false });
  const bad = Buffer.from(r);
  bad.writeUInt16BE(9, 34);
  assert.throws(() => decodeMessage(bad), { code: DecodeErrorCode.BAD_LENGTH });
});

test("SK must be the last payload; no SK inside SK", () => {
  const good = sealMessage(HDR, [], GCM);
  const extra = Buffer.concat([good, h("00000004")]);
  extra.writeUInt32BE(extra.length, 24);
  assert.throws(() => decodeMessage(extra), { code: DecodeErrorCode.BAD_SK_PLACEMENT });
  const nested = sealMessage(HDR, [{ type: PayloadType.SK, innerFirst: 0, body: Buffer.alloc(30) }], GCM);
  assert.throws(() => openMessage(decodeMessage(nested), GCM), { code: DecodeErrorCode.BAD_SK_PLACEMENT });
  assert.throws(() => openMessage(decodeMessage(fx.ikeSaInitRequest), GCM), { code: DecodeErrorCode.BAD_SK_PLACEMENT });
});

test("fragmentation (RFC 7383): split on send, reassemble in any order, limits", () => {
  const inner = [ALL[4]!, { type: PayloadType.CERT, encoding: 4, data: Buffer.alloc(3000, 9) } as Payload, ALL[6]!];
  const single = sealMaybeFragmented(HDR, inner, GCM, { fragmentation: false });
  assert.equal(single.length, 1);
  const frags = sealMaybeFragmented(HDR, inner, GCM, { fragmentation: true, maxDatagram: 576 });
  assert.ok(frags.length >= 6);
  for (const f of frags) assert.ok(f.length <= 576);
  const decoded = frags.map(decodeMessage);
  decoded.forEach((m, i) => {
    assert.equal(m.encrypted?.type, PayloadType.SKF);
    assert.equal(m.header.messageId, 1);
    if (m.encrypted?.type === PayloadType.SKF) {
      assert.equal(m.encrypted.fragmentNumber, i + 1);
      assert.equal(m.encrypted.totalFragments, frags.length);
      assert.equal(m.encrypted.innerFirst, i === 0 ? PayloadType.CERT : 0);
    }
  });
  const r = new FragmentReassembler();
  const order = decoded.map((_, i) => i).reverse();
  let done: ReturnType<FragmentReassembler["add"]> | undefined;
  for (const i of order) {
    done = r.add(1, openFragment(decoded[i]!, GCM));
    if (i === order[0]) assert.deepEqual(r.add(1, openFragment(decoded[i]!, GCM)), { status: "duplicate" });
  }
  assert.equal(done?.status, "complete");
  if (done?.status === "complete") assert.deepEqual(done.payloads, withCritical(inner));
  // limits
  const small = new FragmentReassembler({ maxFragments: 3, maxBytes: 100000 });
  assert.throws(() => small.add(1, openFragment(decoded[0]!, GCM)), FragmentError);
  const tiny = new FragmentReassembler({ maxFragments: 64, maxBytes: 600 });
  assert.throws(() => { for (const d of decoded) tiny.add(1, openFragment(d, GCM)); }, FragmentError);
  // a fragment with a smaller Total Fragments is discarded; a larger one restarts
  const r2 = new FragmentReassembler();
  r2.add(1, { fragmentNumber: 1, totalFragments: 3, innerFirst: 41, plaintext: h("00") });
  assert.equal(r2.add(1, { fragmentNumber: 2, totalFragments: 2, innerFirst: 0, plaintext: h("00") }).status, "discarded");
  assert.deepEqual(r2.add(1, { fragmentNumber: 2, totalFragments: 4, innerFirst: 0, plaintext: h("00") }), { status: "incomplete", received: 1, total: 4 });
  // decode-level checks of SKF
  const f0 = Buffer.from(frags[1]!);
  f0.writeUInt16BE(0, 32);
  assert.throws(() => decodeMessage(f0), { code: DecodeErrorCode.BAD_VALUE });
  const f1 = Buffer.from(frags[1]!);
  f1[28] = PayloadType.NONCE;
  assert.throws(() => decodeMessage(f1), { code: DecodeErrorCode.BAD_VALUE });
});
