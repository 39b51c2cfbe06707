import { test } from "node:test";
import assert from "node:assert/strict";
import { inspect, format } from "node:util";
import { Writable } from "node:stream";
import { Secret, createLogger, redact } from "../src/index.js";

const RAW = "correct-horse-battery-staple-4711";

test("a Secret never prints its value", () => {
  const s = new Secret(RAW);
  for (const text of [String(s), `${s}`, JSON.stringify({ s }), inspect(s), inspect({ nested: { s } }), format("%s %o %j", s, s, { s })]) {
    assert.ok(!text.includes(RAW), `leaked in: ${text}`);
    assert.match(text, /REDACTED/);
  }
  assert.equal(s.reveal().toString(), RAW);
  assert.equal(s.length, RAW.length);
});

test("Secret.equals compares bytes", () => {
  assert.ok(new Secret(RAW).equals(new Secret(RAW)));
  assert.ok(!new Secret(RAW).equals(new Secret(RAW + "x")));
  assert.ok(!new Secret("a").equals(new Secret("b")));
});

test("the logger redacts Secrets and key-named fields", async () => {
  let out = "";
  const sink = new Writable({ write(chunk, _enc, cb) { out += chunk.toString(); cb(); } });
  const log = createLogger("test", { destination: sink });
  log.info({ psk: RAW, conn: { secret: new Secret(RAW), name: "net-a" }, token: RAW }, "configured");
  log.info({ s: new Secret(RAW) }, "again");
  await new Promise((r) => setImmediate(r));
  assert.ok(out.includes("net-a"));
  assert.ok(!out.includes(RAW), out);
  assert.equal(out.match(/REDACTED/g)?.length, 4);
});

test("redact leaves ordinary fields alone", () => {
  assert.deepEqual(redact({ name: "gw-a", spi: 0x1234, keyId: 7 }), { name: "gw-a", spi: 0x1234, keyId: 7 });
});
