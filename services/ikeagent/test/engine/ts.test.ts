import { test } from "node:test";
import assert from "node:assert/strict";
import { contains, narrow, parseTs, toPrefixes, toSelectors, tsToString, hostTs, fromWire, toWire } from "../../src/ike/engine/ts.js";

test("parse and print selectors", () => {
  for (const s of ["10.1.0.0/16", "10.1.2.3/32", "2001:db8::/32", "10.0.0.0/8[tcp/443]", "10.0.0.0/8[udp]", "::/0"]) assert.equal(tsToString(parseTs(s)), s);
  assert.equal(tsToString(parseTs("10.1.2.3/16")), "10.1.0.0/16", "host bits cleared");
  assert.equal(tsToString(parseTs("10.1.2.3")), "10.1.2.3/32");
  for (const bad of ["10.1.0.0/33", "nope", "10.0.0.0/8[bogus]", "10.0.0.0/8[tcp/70000]"]) assert.throws(() => parseTs(bad), RangeError, bad);
});

test("§2.9 narrowing: intersections, subsets dropped, disjoint empty", () => {
  const got = narrow([parseTs("10.1.0.0/16")], [parseTs("10.1.5.0/24"), parseTs("10.1.5.128/25"), parseTs("10.9.0.0/16")]);
  assert.deepEqual(got.map(tsToString), ["10.1.5.0/24"]);
  assert.deepEqual(narrow([parseTs("10.1.0.0/16")], [parseTs("10.2.0.0/16")]), []);
  assert.deepEqual(narrow([parseTs("10.0.0.0/8[tcp/443]")], [parseTs("10.1.0.0/16")]).map(tsToString), ["10.1.0.0/16[tcp/443]"]);
  assert.deepEqual(narrow([parseTs("10.0.0.0/8[tcp]")], [parseTs("10.0.0.0/8[udp]")]), []);
  assert.deepEqual(narrow([parseTs("2001:db8::/32")], [parseTs("10.0.0.0/8")]), [], "families do not mix");
  assert.ok(contains(parseTs("10.0.0.0/8"), hostTs("10.2.3.4")));
});

test("ranges that are not one prefix split into prefixes; wire round trip", () => {
  const t = { ...parseTs("10.0.0.0/32"), end: parseTs("10.0.0.5/32").start };
  assert.deepEqual(toPrefixes(t).map((p) => `${p.address}/${p.length}`), ["10.0.0.0/30", "10.0.0.4/31"]);
  assert.equal(tsToString(t), "10.0.0.0..10.0.0.5");
  const w = fromWire(toWire(parseTs("2001:db8:1::/48[udp/500]")))!;
  assert.equal(tsToString(w), "2001:db8:1::/48[udp/500]");
  assert.deepEqual(toSelectors(parseTs("10.1.0.0/16"), parseTs("10.2.0.0/16[tcp/22]")), [{ src: { address: "10.1.0.0", length: 16 }, dst: { address: "10.2.0.0", length: 16 }, protocol: 6, srcPort: 0, dstPort: 22 }]);
});
