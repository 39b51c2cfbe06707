/** Proposal strings, policy refusals and responder selection (RFC 7296 §2.7, §3.3.6). */
import { test } from "node:test";
import assert from "node:assert/strict";
import { WeakCryptoError } from "@fleetswan/common";
import { DhId, EncrId, EsnId, IntegId, PrfId, ProtocolId, TransformType, keyLengthOf } from "../../src/ike/wire/index.js";
import {
  ProposalSyntaxError, algorithmsOf, formatProposal, formatProposals, formatSelectionReport, isAllowedProposal, parseProposal, parseProposals, selectProposal,
} from "../../src/ike/proposal.js";

const ids = (s: string, kind: "ike" | "esp") => parseProposal(s, kind).transforms.map((t) => [t.type, t.id, keyLengthOf(t) ?? 0]);

test("the issue's proposals parse into the right transforms and format back", () => {
  assert.deepEqual(ids("aes256gcm16-prfsha384-curve25519", "ike"), [[1, EncrId.AES_GCM_16, 256], [2, PrfId.HMAC_SHA2_384, 0], [4, DhId.CURVE25519, 0]]);
  assert.deepEqual(ids("aes128gcm16-prfsha256-ecp256", "ike"), [[1, EncrId.AES_GCM_16, 128], [2, PrfId.HMAC_SHA2_256, 0], [4, DhId.ECP_256, 0]]);
  // non-AEAD without explicit PRF: the PRF follows the integrity algorithm (strongSwan behaviour)
  assert.deepEqual(ids("aes256-sha512-modp4096", "ike"), [[1, EncrId.AES_CBC, 256], [2, PrfId.HMAC_SHA2_512, 0], [3, IntegId.HMAC_SHA2_512_256, 0], [4, DhId.MODP_4096, 0]]);
  assert.deepEqual(ids("chacha20poly1305-prfsha256-curve25519", "ike"), [[1, EncrId.CHACHA20_POLY1305, 0], [2, PrfId.HMAC_SHA2_256, 0], [4, DhId.CURVE25519, 0]]);
  assert.deepEqual(ids("aes256gcm16", "esp"), [[1, EncrId.AES_GCM_16, 256], [5, EsnId.NO_ESN, 0]]);
  assert.deepEqual(ids("aes256-sha256-curve25519", "esp"), [[1, EncrId.AES_CBC, 256], [3, IntegId.HMAC_SHA2_256_128, 0], [4, DhId.CURVE25519, 0], [5, EsnId.NO_ESN, 0]]);
  assert.deepEqual(ids("aes128gcm16-esn", "esp"), [[1, EncrId.AES_GCM_16, 128], [5, EsnId.ESN, 0]]);
  assert.deepEqual(ids("aes128gcm16-esn-noesn", "esp"), [[1, EncrId.AES_GCM_16, 128], [5, EsnId.ESN, 0], [5, EsnId.NO_ESN, 0]]);
  for (const s of ["aes256gcm16-prfsha384-curve25519", "aes128gcm16-prfsha256-ecp256", "chacha20poly1305-prfsha256-curve25519", "aes256-prfsha512-sha512-modp4096"]) {
    assert.equal(formatProposal(parseProposal(s, "ike")), s);
  }
  assert.equal(formatProposal(parseProposal("aes256-sha256-curve25519", "esp")), "aes256-sha256-curve25519-noesn");
  const list = parseProposals("aes256gcm16-prfsha384-curve25519, aes128-sha256-modp2048", "ike");
  assert.deepEqual(list.map((p) => p.num), [1, 2]);
  assert.equal(list[0]!.protocol, ProtocolId.IKE);
  assert.equal(formatProposals(list), "aes256gcm16-prfsha384-curve25519,aes128-prfsha256-sha256-modp2048");
  assert.ok(list.every(isAllowedProposal));
});

test("weak algorithms are refused with WeakCryptoError naming the token", () => {
  for (const [s, tok] of [
    ["3des-sha256-modp2048", "3des"], ["des-sha256-modp2048", "des"], ["aes128-md5-modp2048", "md5"], ["aes128-sha1-modp2048", "sha1"],
    ["aes128-sha256-modp1024", "modp1024"], ["aes128-sha256-modp1536", "modp1536"], ["aes128gcm16-prfsha1-ecp256", "prfsha1"],
    ["aes256gcm16-prfsha256-ecp192", "ecp192"], ["aes128gcm8-prfsha256-ecp256", "aes128gcm8"], ["null-sha256-modp2048", "null"],
  ]) {
    assert.throws(() => parseProposal(s!, "ike"), (e: unknown) => e instanceof WeakCryptoError && e.code === "WEAK_CRYPTO" && e.details.token === tok && e.message.includes(`"${tok}"`), s);
  }
});

test("malformed proposals are ProposalSyntaxError", () => {
  for (const [s, kind] of [
    ["", "ike"], ["aes256gcm16-curve25519", "ike"], ["aes256-prfsha256-curve25519", "ike"], ["prfsha256-curve25519", "ike"],
    ["aes256gcm16-prfsha256", "ike"], ["aes256gcm16-sha256-prfsha256-ecp256", "ike"], ["aes256gcm16-aes256-sha256-prfsha256-ecp256", "ike"],
    ["aes256gcm16-prfsha256-ecp256-esn", "ike"], ["aes256gcm16-prfsha256", "esp"], ["aes192-sha256-modp2048", "ike"], ["bogus", "esp"], ["aes256", "esp"],
  ] as const) {
    assert.throws(() => parseProposal(s, kind), ProposalSyntaxError, `${kind}: ${s}`);
  }
});

test("selection picks the first offered proposal that matches, with one transform per type", () => {
  const local = parseProposals("aes256gcm16-prfsha384-curve25519", "ike");
  const offered = parseProposals("aes128-sha256-modp2048,aes256gcm16-aes128gcm16-prfsha256-prfsha384-ecp256-curve25519", "ike");
  const r = selectProposal(offered, local);
  assert.ok(r.chosen);
  assert.equal(r.chosen!.num, 2);
  assert.equal(r.localIndex, 0);
  assert.equal(formatProposal(r.chosen!), "aes256gcm16-prfsha384-curve25519");
  assert.deepEqual(r.report.map((v) => v.accepted), [false, true]);
  assert.equal(r.report[0]!.reason, "ENCR_AES_CBC-128 not in local proposals aes256gcm16-prfsha384-curve25519");
  const alg = algorithmsOf(r.chosen!);
  assert.deepEqual(alg, { protocol: ProtocolId.IKE, encr: EncrId.AES_GCM_16, encrKeyBits: 256, integ: 0, prf: PrfId.HMAC_SHA2_384, dh: DhId.CURVE25519, esn: false });
});

test("the peer's transform order wins within a matching proposal (§2.7)", () => {
  const local = parseProposals("aes128gcm16-aes256gcm16-prfsha256-ecp256-curve25519", "ike");
  const offered = parseProposals("aes256gcm16-aes128gcm16-prfsha256-curve25519-ecp256", "ike");
  assert.equal(formatProposal(selectProposal(offered, local).chosen!), "aes256gcm16-prfsha256-curve25519");
});

test("no acceptable proposal: a reason per offered proposal naming the transforms", () => {
  const local = parseProposals("aes256gcm16-prfsha384-curve25519", "ike");
  const offered = parseProposals("aes256gcm16-prfsha256-curve25519,aes256gcm16-prfsha384-ecp256-modp2048", "ike");
  const r = selectProposal(offered, local);
  assert.equal(r.chosen, undefined);
  assert.deepEqual(r.report.map((v) => v.reason), [
    "PRF_HMAC_SHA2_256 not in local proposals aes256gcm16-prfsha384-curve25519",
    "DH_ECP_256/DH_MODP_2048 not in local proposals aes256gcm16-prfsha384-curve25519",
  ]);
  assert.match(formatSelectionReport(offered, r), /^proposal 1 \(aes256gcm16-prfsha256-curve25519\): PRF_HMAC_SHA2_256 not in/);
  // a foreign protocol
  const esp = selectProposal(parseProposals("aes256gcm16", "esp"), local);
  assert.match(esp.report[0]!.reason, /^protocol ESP not in local proposals/);
});

test("ESP: PFS group must match; no-PFS offer vs PFS local is refused and vice versa; ESN", () => {
  const pfs = parseProposals("aes256gcm16-curve25519", "esp");
  const nopfs = parseProposals("aes256gcm16", "esp");
  assert.equal(selectProposal(nopfs, pfs).chosen, undefined);
  assert.equal(selectProposal(nopfs, pfs).report[0]!.reason, "DH_NONE not in local proposals aes256gcm16-curve25519-noesn");
  assert.equal(selectProposal(pfs, nopfs).chosen, undefined);
  const ok = selectProposal(pfs, pfs).chosen!;
  assert.equal(algorithmsOf(ok).dh, DhId.CURVE25519);
  const withSpi = { ...nopfs[0]!, spi: Buffer.from("01020304", "hex") };
  const c = selectProposal([withSpi], nopfs).chosen!;
  assert.equal(c.spi.toString("hex"), "01020304");
  assert.deepEqual(c.transforms.map((t) => t.type), [TransformType.ENCR, TransformType.ESN]);
  assert.equal(selectProposal(parseProposals("aes256gcm16-esn", "esp"), nopfs).chosen, undefined);
  assert.equal(algorithmsOf(selectProposal(parseProposals("aes256gcm16-esn-noesn", "esp"), parseProposals("aes256gcm16-esn", "esp")).chosen!).esn, true);
});

test("key length is part of the match", () => {
  const r = selectProposal(parseProposals("aes128-sha256-modp2048", "ike"), parseProposals("aes256-sha256-modp2048", "ike"));
  assert.equal(r.chosen, undefined);
  assert.match(r.report[0]!.reason, /^ENCR_AES_CBC-128 not in local proposals aes256-prfsha256-sha256-modp2048$/);
});
