import { test } from "node:test";
import assert from "node:assert/strict";
import { contains, isHostName, overlaps, parsePrefix, type Prefix } from "../src/net.js";

const P = (s: string): Prefix => {
  const p = parsePrefix(s);
  assert.ok(typeof p !== "string", String(p));
  return p;
};

test("prefixes: v4, v6, bare addresses, selectors", () => {
  assert.equal(P("10.1.0.0/16").text, "10.1.0.0/16");
  assert.equal(P("192.0.2.7").text, "192.0.2.7/32");
  assert.equal(P("2001:db8:0:0::/48").text, "2001:db8::/48");
  assert.equal(P("::ffff:192.0.2.0/120").text, "::ffff:c000:200/120");
  assert.equal(P("10.9.0.0/24[tcp/443]").text, "10.9.0.0/24");
  assert.match(String(parsePrefix("2001:db8::1/64")), /host bits set.*2001:db8::\/64/);
});

test("overlap and containment", () => {
  assert.ok(overlaps(P("10.0.0.0/8"), P("10.1.2.0/24")));
  assert.ok(!overlaps(P("10.1.0.0/16"), P("10.2.0.0/16")));
  assert.ok(!overlaps(P("10.0.0.0/8"), P("::/0")));
  assert.ok(contains(P("192.0.2.96/27"), P("192.0.2.98/32")));
  assert.ok(!contains(P("192.0.2.98/32"), P("192.0.2.96/27")));
  assert.ok(overlaps(P("2001:db8::/32"), P("2001:db8:1::/48")));
});

test("host names", () => {
  assert.ok(isHostName("vpn.example.net"));
  assert.ok(!isHostName("192.0.2.1"));
  assert.ok(!isHostName("bad_name!"));
});
