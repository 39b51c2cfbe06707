import { test } from "node:test";
import assert from "node:assert/strict";
import { compileSpec, compileStats, SpecInvalidError, type CompiledFleet } from "../src/spec/compile.js";
import { renderGateways } from "../src/render.js";
import { BASIC, fakeDns } from "./fixtures.js";

const ring = (n: number, extra = ""): string => {
  const lines = ["version: 1", "defaults:", "  dpd: { delay: 20, timeout: 150 }", "gateways:"];
  for (let i = 0; i < n; i++) lines.push(`  - { name: gw-${i}, addresses: [10.100.0.${i}], subnets: [10.${i}.0.0/24] }`);
  lines.push("connections:");
  for (let i = 0; i < n; i++) lines.push(`  - { name: ring-${i}, gateways: [gw-${i}, gw-${(i + 1) % n}] }`);
  return lines.join("\n") + "\n" + extra;
};

/** What the views are made of, for comparing the two parse paths. */
const summary = (f: CompiledFleet) => JSON.stringify({ c: f.connections.map(({ peer, ...c }) => ({ ...c, peer: peer && { ...peer, psk: peer.psk?.reveal().toString() } })), g: [...f.gateways], h: [...renderGateways(f)].map(([g, r]) => [g, r.hash]), y: f.redactedYaml });

test("fast path: a valid spec without problems is compiled without source positions", async () => {
  const f0 = compileStats.fast;
  const p0 = compileStats.positioned;
  const f = await compileSpec(ring(5), "fleet.yaml", fakeDns());
  assert.equal(compileStats.fast, f0 + 1);
  assert.equal(compileStats.positioned, p0);
  assert.equal(f.connections.length, 5);
  assert.equal(f.redactedYaml, ring(5));
});

test("fast path falls back: errors and warnings keep file:line:field", async () => {
  const p0 = compileStats.positioned;
  const errs = await compileSpec(ring(3).replace("gw-2, gw-0", "gw-2, gw-9"), "fleet.yaml", fakeDns()).then(() => [] as string[], (e: SpecInvalidError) => e.errors);
  assert.equal(compileStats.positioned, p0 + 1);
  assert.equal(errs.length, 1);
  assert.match(errs[0]!, /^fleet\.yaml:\d+:connections\[2\]\.gateways\[1\]: connection "ring-2": unknown gateway "gw-9"/);
  // BASIC has an operator PSK and a policy group: its warnings/redaction need positions.
  const f = await compileSpec(BASIC, "fleet.yaml", fakeDns());
  assert.match(f.redactedYaml, /psk: "@keymgr"/);
  // YAML syntax errors: the line of the problem.
  await assert.rejects(compileSpec("gateways:\n  - { name: a\n", "f.yaml", fakeDns()), (e: Error) => /^f\.yaml:\d+/.test(e.message));
  // Duplicate keys are refused by both parsers.
  await assert.rejects(compileSpec("gateways: []\ngateways: []\n", "f.yaml", fakeDns()), SpecInvalidError);
});

test("fast and positioned compiles agree on a 200-gateway ring and on scalar edge cases", async () => {
  const spec = ring(200);
  const fast = await compileSpec(spec, "fleet.yaml", fakeDns());
  // Force the positioned path: an alias (refused by the fast parser) in a value that means the same.
  const slow = await compileSpec(spec.replace("dpd: { delay: 20, timeout: 150 }", "dpd: { delay: &d 20, timeout: 150 }\n  mark: *d"), "fleet.yaml", fakeDns());
  assert.equal(slow.connections[0]!.options.mark, 20);
  const strip = (f: CompiledFleet) => summary({ ...f, connections: f.connections.map((c) => ({ ...c, options: { ...c.options, mark: 0 } })), redactedYaml: "" });
  assert.equal(strip(fast), strip(slow));
  // YAML 1.2 core scalars: 0o/0x numbers, ~ null, quoted numbers stay strings.
  const f2 = await compileSpec(ring(2, "").replace("dpd: { delay: 20, timeout: 150 }", "dpd: { delay: 0x14, timeout: 0o226 }\n  mark: ~"), "fleet.yaml", fakeDns()).catch((e: Error) => e);
  const s2 = await compileSpec(ring(2, "").replace("dpd: { delay: 20, timeout: 150 }", "dpd: { delay: &x 0x14, timeout: 0o226 }\n  mark: ~\n  keying_tries: *x"), "fleet.yaml", fakeDns()).catch((e: Error) => e);
  assert.equal(f2 instanceof Error, s2 instanceof Error, `fast: ${String(f2)}; positioned: ${String(s2)}`);
  if (!(f2 instanceof Error) && !(s2 instanceof Error)) {
    assert.equal(f2.connections[0]!.options.dpdDelay, 20);
    assert.equal(f2.connections[0]!.options.dpdTimeout, 150);
    assert.equal(s2.connections[0]!.options.dpdDelay, 20);
    assert.equal(s2.connections[0]!.options.dpdTimeout, 150);
  }
});
