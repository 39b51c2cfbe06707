import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { parseDocument } from "yaml";
import { fleet } from "@fleetswan/proto";
import { compileSpec, parseDuration, pskWeakness, SpecInvalidError } from "../src/spec/compile.js";
import { FLEET_SPEC_SCHEMA, schemaJson } from "../src/spec/schema.js";
import { checkSchema } from "../src/spec/schema-check.js";
import { buildViews, EMPTY_STATE, nextState, renderGateways, resolveState } from "../src/render.js";
import { BASIC, GOOD_PSK, fakeDns } from "./fixtures.js";

const repo = (p: string): string => fileURLToPath(new URL(`../../../../${p}`, import.meta.url));

/** Compile and expect rejection; returns the error lines. */
async function rejects(yaml: string, dns = fakeDns()): Promise<string[]> {
  try {
    await compileSpec(yaml, "fleet.yaml", dns);
  } catch (e) {
    assert.ok(e instanceof SpecInvalidError, String(e));
    assert.equal(e.code, "CONFIG_INVALID");
    return e.errors;
  }
  assert.fail("spec was accepted");
}
const ok = (yaml: string, dns = fakeDns()) => compileSpec(yaml, "fleet.yaml", dns);
const two = (extra = "", gwExtra = "") => `gateways:
  - { name: gw-a, addresses: [192.0.2.1], subnets: [10.1.0.0/16]${gwExtra} }
  - { name: gw-b, addresses: [192.0.2.2], subnets: [10.2.0.0/16] }
${extra}`;

test("the basic spec compiles: mesh expands, defaults and proposal sets apply", async () => {
  const f = await ok(BASIC);
  assert.deepEqual(f.connections.map((c) => c.name), ["gw-a--gw-b", "gw-a--gw-c", "gw-b--gw-c", "partner"]);
  const ab = f.connections[0]!;
  assert.deepEqual(ab.gateways, ["gw-a", "gw-b"]);
  assert.deepEqual(ab.subnets, [["10.1.0.0/16"], ["10.2.0.0/16"]]);
  assert.deepEqual(ab.options.ikeProposals, ["aes256gcm16-prfsha384-curve25519"]);
  assert.equal(ab.options.start, "route");
  assert.equal(ab.options.dpdTimeout, 150);
  assert.equal(f.gateways.get("gw-a")!.id, "gw-a.example.net");
  assert.equal(f.gateways.get("gw-b")!.id, "192.0.2.2");
  assert.deepEqual(f.warnings, []);
});

test("operator PSKs never stay in the stored YAML", async () => {
  const f = await ok(BASIC);
  assert.ok(!f.redactedYaml.includes(GOOD_PSK));
  assert.match(f.redactedYaml, /psk: "@keymgr"/);
  const again = await ok(f.redactedYaml);
  assert.equal(again.connections.find((c) => c.name === "partner")!.peer!.pskKept, true);
  assert.equal(String(f.connections.find((c) => c.name === "partner")!.peer!.psk), "[REDACTED]");
});

test("durations", () => {
  assert.equal(parseDuration("1h30m"), 5400);
  assert.equal(parseDuration(90), 90);
  assert.equal(parseDuration("1d"), 86400);
});

test("structure errors are file:line:field with the value", async () => {
  const errs = await rejects(`gateways:\n  - name: gw-a\n    addresses: [192.0.2.1]\n    colour: blue\n  - name: GW_B\n    addresses: []\n`);
  assert.ok(errs.some((e) => /^fleet\.yaml:4:gateways\[0\]\.colour: unknown field "colour"/.test(e)), errs.join("\n"));
  assert.ok(errs.some((e) => /^fleet\.yaml:5:gateways\[1\]\.name: "GW_B" does not match/.test(e)), errs.join("\n"));
  assert.ok(errs.some((e) => /^fleet\.yaml:6:gateways\[1\]\.addresses: needs at least 1 item/.test(e)), errs.join("\n"));
  const e2 = await rejects(two("defaults: { start: sometimes, dpd: { delay: soon } }"));
  assert.ok(e2.some((e) => /defaults\.start: must be one of start, route, add; got "sometimes"/.test(e)), e2.join("\n"));
  assert.ok(e2.some((e) => /defaults\.dpd\.delay: "soon" is not valid here/.test(e)), e2.join("\n"));
});

test("rule: unknown references (gateway, proposal set)", async () => {
  const errs = await rejects(two(`connections:\n  - { name: x, gateways: [gw-a, gw-z] }\n  - { name: y, gateways: [gw-a, gw-b], proposals: nope }\npeers:\n  - { name: p, gateway: gw-q, address: 203.0.113.1, psk: "${GOOD_PSK}" }\n`));
  assert.ok(errs.some((e) => /fleet\.yaml:5:connections\[0\]\.gateways\[1\]: connection "x": unknown gateway "gw-z" \(known: gw-a, gw-b\)/.test(e)), errs.join("\n"));
  assert.ok(errs.some((e) => /connections\[1\]\.proposals: connection "y": unknown proposal set "nope"/.test(e)), errs.join("\n"));
  assert.ok(errs.some((e) => /peers\[0\]\.gateway: peer "p": unknown gateway "gw-q"/.test(e)), errs.join("\n"));
});

test("rule: both ends on the same gateway", async () => {
  const errs = await rejects(two(`connections:\n  - { name: loop, gateways: [gw-a, gw-a] }\n`));
  assert.match(errs.join("\n"), /connections\[0\]\.gateways: connection "loop": both ends are gateway "gw-a"/);
});

test("rule: duplicate names", async () => {
  const errs = await rejects(`gateways:\n  - { name: gw-a, addresses: [192.0.2.1] }\n  - { name: gw-a, addresses: [192.0.2.2] }\n`);
  assert.match(errs.join("\n"), /fleet\.yaml:3:gateways\[1\]\.name: duplicate gateway name "gw-a"/);
  const e2 = await rejects(two(`connections:\n  - { name: x, gateways: [gw-a, gw-b] }\n  - { name: x, gateways: [gw-b, gw-a] }\n`));
  assert.match(e2.join("\n"), /connections\[1\]\.name: duplicate connection name "x" \(also connections\[0\]\)/);
});

test("rule: local and remote subnets of a connection overlap", async () => {
  const errs = await rejects(two(`connections:\n  - name: x\n    gateways: [gw-a, gw-b]\n    subnets: { gw-b: [10.1.128.0/17] }\n`));
  assert.match(errs.join("\n"), /connection "x" on gateway "gw-a": local subnet 10\.1\.0\.0\/16 and remote subnet 10\.1\.128\.0\/17 \(of gateway "gw-b"\) overlap in 10\.1\.128\.0\/17/);
});

test("rule: remote subnets on one gateway overlap with different peers", async () => {
  const errs = await rejects(two(`connections:\n  - { name: a-b, gateways: [gw-a, gw-b] }\npeers:\n  - { name: partner, gateway: gw-a, address: 203.0.113.9, psk: "${GOOD_PSK}", subnets: [10.2.64.0/24] }\n`));
  assert.match(errs.join("\n"), /fleet\.yaml:7:peers\[0\]: gateway "gw-a": remote subnets of connection "a-b" \(10\.2\.0\.0\/16 via gateway "gw-b"\) and connection "partner" \(10\.2\.64\.0\/24 via external peer 203\.0\.113\.9\) overlap in 10\.2\.64\.0\/24/);
  // the same peer twice with overlapping remotes is fine (different local subnets)
  await ok(two(`peers:\n  - { name: p1, gateway: gw-a, address: 203.0.113.9, psk: "${GOOD_PSK}", subnets: [172.16.0.0/16] }\n  - { name: p2, gateway: gw-a, address: 203.0.113.9, psk: "${GOOD_PSK}", subnets: [172.16.1.0/24], local_subnets: [10.9.0.0/24] }\n`));
});

test("rule: duplicate SPIs among manual connections of a gateway", async () => {
  const errs = await rejects(two(`peers:\n  - { name: m1, gateway: gw-a, address: 203.0.113.1, subnets: [172.16.1.0/24], psk: "${GOOD_PSK}", manual: { spi: "0x1000" } }\n  - { name: m2, gateway: gw-a, address: 203.0.113.2, subnets: [172.16.2.0/24], psk: "${GOOD_PSK}", manual: { spi: 4096 } }\n`));
  assert.match(errs.join("\n"), /peers\[1\]\.manual\.spi: gateway "gw-a": manual connections "m1" and "m2" both use SPI 0x1000/);
});

test("rule: host names are resolved at apply time or rejected", async () => {
  const f = await ok(two(`peers:\n  - { name: p, gateway: gw-a, address: vpn.partner.example, psk: "${GOOD_PSK}", subnets: [172.16.0.0/24] }\n`), fakeDns({ "vpn.partner.example": ["198.51.100.7"] }));
  const views = buildViews(renderGateways(f), resolveState(nextState(renderGateways(f), EMPTY_STATE, 0, new Date()).state, 1));
  const p = views.get("gw-a")!.connections.find((c) => c.name === "p")!;
  assert.deepEqual(p.remote!.addresses, ["198.51.100.7"]);
  assert.deepEqual(f.resolved, { "vpn.partner.example": ["198.51.100.7"] });
  const errs = await rejects(two(`peers:\n  - { name: p, gateway: gw-a, address: nowhere.invalid, psk: "${GOOD_PSK}" }\n`));
  assert.match(errs.join("\n"), /peers\[0\]\.address: host name "nowhere\.invalid" does not resolve \(ENOTFOUND\); agents never do DNS/);
});

test("rule: weak algorithms name the token and the reason", async () => {
  const errs = await rejects(two(`defaults:\n  ike_proposals: [3des-sha1-modp1024]\n  esp_proposals: [aes128gcm16-sha256]\n`));
  const all = errs.join("\n");
  assert.match(all, /defaults\.ike_proposals\[0\]: defaults: weak algorithm "3des"/);
  assert.match(all, /weak algorithm "sha1"/);
  assert.match(all, /weak algorithm "modp1024"/);
  assert.match(all, /defaults\.esp_proposals\[0\]: defaults: proposal "aes128gcm16-sha256" combines an AEAD cipher with an integrity algorithm/);
});

test("rule: PSKs shorter than 20 random-looking bytes", async () => {
  const errs = await rejects(two(`peers:\n  - { name: p, gateway: gw-a, address: 203.0.113.1, psk: "secret" }\n  - { name: q, gateway: gw-a, address: 203.0.113.2, psk: "aaaaaaaaaaaaaaaaaaaaaaaaaaaa", subnets: [172.16.0.0/24] }\n`));
  assert.match(errs.join("\n"), /peers\[0\]\.psk: peer "p": PSK is 6 bytes long; at least 20/);
  assert.match(errs.join("\n"), /peers\[1\]\.psk: peer "q": PSK does not look random/);
  assert.ok(!errs.join("\n").includes("secret\""), "the PSK value must not appear in errors");
  assert.equal(pskWeakness(GOOD_PSK), undefined);
  assert.match(pskWeakness("abcabcabcabcabcabcabcabc") ?? "", /does not look random|repeats/);
});

test("rule: lifetimes and DPD must make sense", async () => {
  const errs = await rejects(two(`defaults: { child_lifetime: 5m, rekey_margin: 9m, dpd: { delay: 60, timeout: 30 } }\n`));
  assert.match(errs.join("\n"), /defaults\.rekey_margin: defaults: rekey_margin \(540s\) must be shorter than child_lifetime \(300s\)/);
  assert.match(errs.join("\n"), /defaults\.dpd\.timeout: defaults: dpd\.timeout \(30s\) must be longer than dpd\.delay \(60s\)/);
});

test("rule: a policy-group entry shadowing a connection is a warning naming both (FAQ 192.0.2.96/27)", async () => {
  const f = await ok(`gateways:
  - name: gw-a
    addresses: [192.0.2.2]
    policy_groups:
      private-or-clear: [192.0.2.98/32, 192.0.2.0/24]
peers:
  - { name: net-to-net, gateway: gw-a, address: 192.0.2.8, psk: "${GOOD_PSK}", subnets: [192.0.2.96/27] }
`);
  assert.equal(f.warnings.length, 1, f.warnings.join("\n"));
  assert.match(f.warnings[0]!, /fleet\.yaml:5:gateways\[0\]\.policy_groups\.private-or-clear\[0\]: gateway "gw-a": policy group "private-or-clear" entry 192\.0\.2\.98\/32 lies within remote subnet 192\.0\.2\.96\/27 of connection "net-to-net"/);
});

test("bad prefixes say what is wrong", async () => {
  const errs = await rejects(`gateways:\n  - { name: gw-a, addresses: [192.0.2.1], subnets: [10.1.0.1/16, 10.0.0.0/33, banana] }\n`);
  const all = errs.join("\n");
  assert.match(all, /subnets\[0\]: host bits set in "10\.1\.0\.1\/16" \(did you mean 10\.1\.0\.0\/16\?\)/);
  assert.match(all, /subnets\[1\]: bad prefix length in "10\.0\.0\.0\/33"/);
  assert.match(all, /subnets\[2\]: not an IP address or CIDR prefix: "banana"/);
});

test("rendering: one view per gateway, oriented, secret refs only, policy groups", async () => {
  const f = await ok(BASIC);
  const r = renderGateways(f);
  const { state, changes } = nextState(r, EMPTY_STATE, 0, new Date("2026-01-01T00:00:00Z"));
  assert.deepEqual(changes.map((c) => [c.gateway, c.added]), [
    ["gw-a", ["(gateway)", "gw-a--gw-b", "gw-a--gw-c", "partner"]],
    ["gw-b", ["(gateway)", "gw-a--gw-b", "gw-b--gw-c"]],
    ["gw-c", ["(gateway)", "gw-a--gw-c", "gw-b--gw-c"]],
  ]);
  const views = buildViews(r, resolveState(state, 7));
  const b = views.get("gw-b")!;
  assert.equal(b.revision, 7n);
  assert.deepEqual(b.connections.map((c) => c.name), ["gw-a--gw-b", "gw-b--gw-c"]);
  const ab = b.connections[0]!;
  assert.deepEqual(ab.local!.subnets, ["10.2.0.0/16"]);
  assert.deepEqual(ab.remote!.subnets, ["10.1.0.0/16"]);
  assert.deepEqual(ab.remote!.addresses, ["192.0.2.1"]);
  assert.equal(ab.remote!.id, "gw-a.example.net");
  assert.equal(ab.peerGateway, "gw-a");
  assert.equal(ab.secretRef, "psk.gw-a--gw-b");
  assert.equal(ab.startAction, fleet.StartAction.START_ACTION_ROUTE);
  assert.equal(ab.revision, 7n);
  const a = views.get("gw-a")!;
  const partner = a.connections.find((c) => c.name === "partner")!;
  assert.equal(partner.remote!.id, "vpn.partner.example");
  assert.equal(partner.peerGateway, "");
  assert.equal(partner.secretRef, "psk.partner");
  const bytes = Buffer.from(fleet.GatewayView.encode(a).finish()).toString("latin1");
  assert.ok(!bytes.includes(GOOD_PSK), "no PSK value in any view");
  assert.deepEqual(views.get("gw-c")!.policyGroups, [{ name: "private-or-clear", destinations: ["198.51.100.0/24"] }]);
  assert.equal(views.get("gw-c")!.self!.backend, "userspace");
});

test("rendering: ConnectionDef.revision is where the connection last changed; unchanged views keep theirs", async () => {
  const f1 = await ok(BASIC);
  const r1 = renderGateways(f1);
  const s1 = resolveState(nextState(r1, EMPTY_STATE, 0, new Date()).state, 5);
  // change only gw-b--gw-c (a subnet override on gw-c's side)
  const f2 = await ok(BASIC.replace("  - mesh: [gw-a, gw-b, gw-c]\n    proposals: strong\n", "  - mesh: [gw-a, gw-b]\n    proposals: strong\n  - mesh: [gw-a, gw-c]\n    proposals: strong\n  - { name: gw-b--gw-c, gateways: [gw-b, gw-c], proposals: strong, subnets: { gw-c: [10.3.1.0/24] } }\n"));
  const r2 = renderGateways(f2);
  const { state, changes } = nextState(r2, s1, 0, new Date());
  assert.deepEqual(changes.map((c) => [c.gateway, c.added, c.changed, c.removed]), [
    ["gw-b", [], ["gw-b--gw-c"], []],
    ["gw-c", [], ["gw-b--gw-c"], []],
  ]);
  const v = buildViews(r2, resolveState(state, 9));
  assert.equal(v.get("gw-a")!.revision, 5n, "gw-a's view did not change");
  const c = v.get("gw-c")!;
  assert.equal(c.revision, 9n);
  assert.equal(c.connections.find((x) => x.name === "gw-a--gw-c")!.revision, 5n);
  assert.equal(c.connections.find((x) => x.name === "gw-b--gw-c")!.revision, 9n);
  // removing a gateway shows up as removed
  const f3 = await ok(BASIC.replace("[gw-a, gw-b, gw-c]", "[gw-a, gw-b]").replace(/  - name: gw-c[\s\S]*?198\.51\.100\.0\/24\]\n/, ""));
  const ch3 = nextState(renderGateways(f3), s1, 0, new Date()).changes;
  assert.deepEqual(ch3.find((c) => c.gateway === "gw-c")!.removed, ["(gateway)", "gw-a--gw-c", "gw-b--gw-c"]);
});

test("JSON Schema: docs/fleet-spec.schema.json is the schema the controller validates with", () => {
  assert.equal(readFileSync(repo("docs/fleet-spec.schema.json"), "utf8"), schemaJson());
});

test("JSON Schema: the examples in docs/fleet-spec.md validate against it", async () => {
  const md = readFileSync(repo("docs/fleet-spec.md"), "utf8");
  const blocks = [...md.matchAll(/```yaml\n([\s\S]*?)```/g)].map((m) => m[1]!);
  assert.ok(blocks.length >= 1);
  for (const b of blocks) {
    if (!/^gateways:/m.test(b)) continue;
    assert.deepEqual(checkSchema(FLEET_SPEC_SCHEMA, parseDocument(b).toJS()), [], b);
    await ok(b, fakeDns({ "vpn.partner.example": ["198.51.100.7"] }));
  }
});

test("YAML syntax errors keep the file:line form", async () => {
  const errs = await rejects("gateways: [\n");
  assert.match(errs[0]!, /^fleet\.yaml:\d+/);
});
