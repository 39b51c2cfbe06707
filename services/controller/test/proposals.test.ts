import { test } from "node:test";
import assert from "node:assert/strict";
import { checkProposal } from "../src/proposals.js";

const msgs = (p: string, k: "ike" | "esp") => checkProposal(p, k).map((x) => x.message);

test("strong proposals pass", () => {
  for (const p of ["aes256gcm16-prfsha384-curve25519", "aes128gcm16-prfsha256-ecp256", "chacha20poly1305-prfsha512-modp3072", "aes256-sha384-ecp384", "aes128-sha256-prfsha256-modp2048", "AES256GCM16-PRFSHA384-ECP521"]) {
    assert.deepEqual(msgs(p, "ike"), [], p);
  }
  for (const p of ["aes256gcm16", "aes256gcm16-esn", "aes256-sha256-curve25519", "chacha20poly1305-noesn", "aes128-sha512-modp4096-esn"]) {
    assert.deepEqual(msgs(p, "esp"), [], p);
  }
});

test("weak and unknown algorithms are named with the reason", () => {
  assert.match(msgs("3des-sha1-modp1024", "ike").join("\n"), /weak algorithm "3des".*Sweet32[\s\S]*weak algorithm "sha1"[\s\S]*weak algorithm "modp1024"/);
  assert.match(msgs("aes256-md5", "esp")[0]!, /weak algorithm "md5": MD5 is broken/);
  assert.match(msgs("serpent256-sha256", "esp")[0]!, /unknown algorithm "serpent256" \(allowed: /);
  assert.match(msgs("null", "esp")[0]!, /no encryption/);
});

test("structural rules", () => {
  assert.match(msgs("aes256gcm16-curve25519", "ike")[0]!, /needs a PRF/);
  assert.match(msgs("aes256gcm16-prfsha256", "ike")[0]!, /no Diffie-Hellman group/);
  assert.match(msgs("aes256-curve25519", "esp")[0]!, /without an integrity algorithm/);
  assert.match(msgs("aes256gcm16-sha256", "esp")[0]!, /combines an AEAD cipher with an integrity algorithm/);
  assert.match(msgs("aes256gcm16-prfsha256", "esp")[0]!, /PRFs belong in IKE proposals/);
  assert.match(msgs("aes256gcm16-prfsha256-ecp256-esn", "ike")[0]!, /only applies to ESP/);
  assert.match(msgs("sha256-ecp256", "esp")[0]!, /no encryption algorithm/);
  assert.match(msgs("", "esp")[0]!, /empty/);
});
