/**
 * Fuzz targets, one per decode entry point: decodeMessage, openMessage (with the right
 * key, so mutations reach the inner parser), openFragment + FragmentReassembler,
 * decodePayloads, parseProposal, parseSignatureAuthData / decodeSignatureHashAlgorithms.
 * Each input must either decode or throw the entry point's typed error; anything else
 * (TypeError, RangeError, a hang) fails. Bounded: FLEETSWAN_FUZZ_SECONDS (default 8 s in
 * total, split across targets); the seed is printed so a failure can be replayed with
 * FLEETSWAN_FUZZ_SEED.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { FleetswanError } from "@fleetswan/common";
import {
  EncrId, ExchangeType, FragmentReassembler, IkeDecodeError, PayloadType, decodeMessage, decodePayloads, encodeMessage, openFragment, openMessage,
  sealMaybeFragmented, sealMessage, type IkeHeader, type Payload,
} from "../../src/ike/wire/index.js";
import { AuthError, createSkCipher, decodeSignatureHashAlgorithms, parseSignatureAuthData } from "../../src/ike/crypto/index.js";
import { parseProposal } from "../../src/ike/proposal.js";
import * as fx from "./fixtures/strongswan-psk-gcm.js";

const TOTAL_SECONDS = Number(process.env.FLEETSWAN_FUZZ_SECONDS ?? "8");
const SEED = Number(process.env.FLEETSWAN_FUZZ_SEED ?? Date.now() % 2 ** 31);

/** xorshift32: deterministic per seed. */
function rng(seed: number): () => number {
  let x = seed || 1;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) / 2 ** 32;
  };
}

function mutate(r: () => number, input: Buffer): Buffer {
  const b = Buffer.from(input);
  const n = 1 + Math.floor(r() * 4);
  let out = b;
  for (let i = 0; i < n; i++) {
    const op = Math.floor(r() * 7);
    const at = Math.floor(r() * Math.max(1, out.length));
    switch (op) {
      case 0: if (out.length) out[at] = Math.floor(r() * 256); break; // random byte
      case 1: if (out.length) out[at] ^= 1 << Math.floor(r() * 8); break; // bit flip
      case 2: out = out.subarray(0, at); break; // truncate
      case 3: out = Buffer.concat([out.subarray(0, at), Buffer.from([Math.floor(r() * 256)]), out.subarray(at)]); break; // insert
      case 4: if (out.length > 1) out.writeUInt16BE([0, 1, 3, 4, 0xffff, out.length - at][Math.floor(r() * 6)]! & 0xffff, Math.min(at, out.length - 2)); break; // interesting 16-bit length
      case 5: out = Buffer.concat([out.subarray(0, at), out.subarray(Math.min(out.length, at + 1 + Math.floor(r() * 8)))]); break; // delete
      case 6: out = Buffer.from(Array.from({ length: Math.floor(r() * 64) }, () => Math.floor(r() * 256))); break; // random
    }
  }
  return out;
}

/** Fix up the IKE header length so mutations get past the first check more often. */
function fixLength(b: Buffer): Buffer {
  if (b.length >= 28) b.writeUInt32BE(b.length, 24);
  return b;
}

function run(name: string, seconds: number, corpus: Buffer[], target: (b: Buffer) => void, ok: (e: unknown) => boolean): number {
  const r = rng(SEED ^ name.length * 7919);
  const end = Date.now() + seconds * 1000;
  let n = 0;
  while (Date.now() < end) {
    for (let k = 0; k < 50; k++, n++) {
      let input = mutate(r, corpus[Math.floor(r() * corpus.length)]!);
      if (r() < 0.5) input = fixLength(input);
      try {
        target(input);
      } catch (e) {
        if (!ok(e)) {
          assert.fail(`${name}: input ${input.toString("hex")} threw ${(e as Error)?.constructor?.name}: ${(e as Error)?.message} (seed ${SEED})`);
        }
      }
    }
  }
  return n;
}

const isDecode = (e: unknown) => e instanceof IkeDecodeError;
const HDR: IkeHeader = { spiI: Buffer.alloc(8, 1), spiR: Buffer.alloc(8, 2), exchangeType: ExchangeType.IKE_AUTH, messageId: 1, initiator: true, response: false };
const KEY = Buffer.alloc(36, 5);
/** A cipher whose "encryption" is identity plus a trivially valid tag would hide bugs; use real GCM and re-seal mutated plaintexts instead. */
const GCM = createSkCipher({ encr: EncrId.AES_GCM_16, encrKeyBits: 256, integ: 0 }, KEY, Buffer.alloc(0));
const SHARE = TOTAL_SECONDS / 6;

test(`fuzz decodeMessage (seed ${SEED})`, () => {
  const corpus = [fx.ikeSaInitRequest, fx.ikeSaInitResponse, fx.ikeAuthRequest, fx.ikeAuthResponse, fx.informationalRequest];
  const n = run("decodeMessage", SHARE, corpus, (b) => void decodeMessage(b), isDecode);
  assert.ok(n > 0);
});

test(`fuzz the SK inner chain via openMessage (seed ${SEED})`, () => {
  const inner = openMessage(decodeMessage(fx.ikeAuthRequest), createSkCipher({ encr: EncrId.AES_GCM_16, encrKeyBits: 256, integ: 0 }, fx.charonLog.skEi, Buffer.alloc(0)));
  const plain = encodeMessage(HDR, inner).subarray(28);
  const first = inner[0]!.type;
  // mutate the plaintext chain, then seal it properly so the parser behind the ICV sees it
  run("openMessage", SHARE, [plain], (b) => {
    const sealed = sealInner(first, b);
    void openMessage(decodeMessage(sealed), GCM);
  }, isDecode);
});

function sealInner(first: number, plaintext: Buffer): Buffer {
  // an SK payload whose decrypted chain is exactly `plaintext`
  const fake: Payload = { type: 200, unknown: true, body: Buffer.alloc(0) };
  const msg = sealMessage(HDR, [fake], {
    sealedLength: (n) => GCM.sealedLength(plaintext.length + 0 * n),
    seal: (aad) => GCM.seal(patchFirst(aad, first), plaintext),
    open: () => Buffer.alloc(0),
  });
  return patchFirst(msg, first);
}

function patchFirst(b: Buffer, first: number): Buffer {
  b[28] = first; // SK generic header's Next Payload = first inner payload
  return b;
}

test(`fuzz fragments and reassembly (seed ${SEED})`, () => {
  const inner: Payload[] = [{ type: PayloadType.CERT, encoding: 4, data: Buffer.alloc(1500, 3) }, { type: PayloadType.NONCE, nonce: Buffer.alloc(32, 1) }];
  const frags = sealMaybeFragmented(HDR, inner, GCM, { fragmentation: true, maxDatagram: 400 });
  const r = new FragmentReassembler({ maxFragments: 16, maxBytes: 4000 });
  run("fragments", SHARE, frags, (b) => {
    const m = decodeMessage(b);
    if (m.encrypted?.type === PayloadType.SKF) r.add(1, openFragment(m, GCM));
  }, isDecode);
});

test(`fuzz decodePayloads (seed ${SEED})`, () => {
  const chain = decodeMessage(fx.ikeSaInitRequest).raw.subarray(28);
  run("decodePayloads", SHARE, [chain], (b) => void decodePayloads(PayloadType.SA, b), isDecode);
});

test(`fuzz parseProposal (seed ${SEED})`, () => {
  const corpus = ["aes256gcm16-prfsha384-curve25519", "aes256-sha512-modp4096", "chacha20poly1305-prfsha256-curve25519-esn"].map((s) => Buffer.from(s));
  run("parseProposal", SHARE, corpus, (b) => {
    void parseProposal(b.toString("latin1"), "ike");
    void parseProposal(b.toString("latin1"), "esp");
  }, (e) => e instanceof FleetswanError && (e.code === "PROPOSAL_INVALID" || e.code === "WEAK_CRYPTO"));
});

test(`fuzz signature AUTH data and SIGNATURE_HASH_ALGORITHMS (seed ${SEED})`, () => {
  const corpus = [Buffer.from("0c300a06082a8648ce3d040302" + "00".repeat(70), "hex"), Buffer.from("0002000300040005", "hex")];
  run("auth", SHARE, corpus, (b) => {
    try {
      void parseSignatureAuthData(b);
    } finally {
      void decodeSignatureHashAlgorithms(b);
    }
  }, (e) => e instanceof AuthError);
});
