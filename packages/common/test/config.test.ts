import { test } from "node:test";
import assert from "node:assert/strict";
import { YamlSource, ConfigError } from "../src/index.js";

test("YamlSource.where names file, line and field", () => {
  const src = new YamlSource("fleet.yaml", "gateways:\n  - name: gw-a\n    address: 192.0.2.1\n  - name: gw-b\n    address: nope\n");
  assert.equal(src.where(["gateways", 1, "address"]), "fleet.yaml:5:gateways[1].address");
  assert.equal(src.where(["gateways", 1, "missing"]), "fleet.yaml:4:gateways[1].missing");
  const err = src.error(["gateways", 1, "address"], 'not an IP address: "nope"');
  assert.ok(err instanceof ConfigError);
  assert.equal(err.code, "CONFIG_INVALID");
  assert.equal(err.message, 'fleet.yaml:5:gateways[1].address: not an IP address: "nope"');
});

test("YAML syntax errors carry the line", () => {
  assert.throws(() => new YamlSource("bad.yaml", "a: 1\nb: [1, 2\n"), (e: ConfigError) => e.code === "CONFIG_INVALID" && /^bad\.yaml:\d+/.test(e.message));
  assert.throws(() => new YamlSource("dup.yaml", "a: 1\na: 2\n"), /dup\.yaml:\d+/);
});

test("a missing file is a ConfigError naming the file", () => {
  assert.throws(() => YamlSource.fromFile("/nonexistent/fleet.yaml"), /\/nonexistent\/fleet\.yaml: cannot read file \(ENOENT\)/);
});
