import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, writeFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ConfigError } from "@fleetswan/common";
import { fleet } from "@fleetswan/proto";
import { loadIpsecConf, loadYamlConfig } from "../../src/standalone/config.js";

const dir = mkdtempSync(join(tmpdir(), "fs-agent-cfg-"));
process.on("exit", () => rmSync(dir, { recursive: true, force: true }));
const write = (name: string, text: string): string => {
  const f = join(dir, name);
  writeFileSync(f, text);
  return f;
};

test("agent.yaml: ConnectionDef shape, short enums, documented defaults, secrets by ref", () => {
  const f = write("agent.yaml", `gateway: gw-b
secrets:
  psk-ab:
    psk: "0123456789abcdef0123456789abcdef"
connections:
  - name: net
    local: { addresses: [192.0.2.2], id: gwb.example.test, subnets: [10.2.0.0/16], auth: psk }
    remote: { addresses: [192.0.2.1], id: gwa.example.test, subnets: [10.1.0.0/16] }
    ike_proposals: aes256gcm16-prfsha384-curve25519
    start_action: route
    dpd_action: restart
    secret_ref: psk-ab
`);
  const c = loadYamlConfig(f);
  assert.equal(c.gateway, "gw-b");
  const d = c.config.connections[0]!;
  assert.equal(d.name, "net");
  assert.deepEqual(d.local?.subnets, ["10.2.0.0/16"]);
  assert.equal(d.local?.auth, fleet.AuthMethod.AUTH_METHOD_PSK);
  assert.deepEqual(d.ikeProposals, ["aes256gcm16-prfsha384-curve25519"]);
  assert.equal(d.startAction, fleet.StartAction.START_ACTION_ROUTE);
  assert.equal(d.dpdAction, fleet.DpdAction.DPD_ACTION_RESTART);
  assert.equal(d.keyingTries, 3);
  assert.equal(d.uniqueIds, true);
  assert.equal(d.dpdDelaySeconds, 30);
  assert.equal(d.childLifetimeSeconds, 3600);
  assert.equal(c.secrets("psk-ab")?.kind, "psk");
  assert.equal(String(c.secrets("psk-ab")?.current), "[REDACTED]");
});

test("agent.yaml errors name file:line:field", () => {
  const cases: Array<[string, RegExp]> = [
    ["connections:\n  - name: a\n    lokal: {}\n", /:3:connections\[0\]\.lokal: unknown key "lokal"/],
    ["connections:\n  - name: a\n    start_action: sometimes\n", /:3:connections\[0\]\.start_action: start_action must be one of add, start, route/],
    ["connections:\n  - name: a\n    secret_ref: nope\n", /:3:connections\[0\]\.secret_ref: no secret "nope"/],
    ["secrets:\n  s:\n    psk: short\n", /:3:secrets\.s\.psk: PSK shorter than 16 bytes/],
    ["connections:\n  - name: a\n  - name: a\n", /:3:connections\[1\]\.name: duplicate connection name "a"/],
    ["connections:\n  - name: a\n    local:\n      auth: rsa\n", /:4:connections\[0\]\.local\.auth: auth must be psk or pubkey/],
  ];
  for (const [text, re] of cases) {
    const f = write("bad.yaml", text);
    assert.throws(() => loadYamlConfig(f), (e: unknown) => e instanceof ConfigError && re.test(e.message), re.source);
  }
});

test("ipsec.conf + ipsec.secrets: oriented by --address, PSK by ref", () => {
  const conf = write("ipsec.conf", "conn net\n  left=192.0.2.1\n  leftsubnet=10.1.0.0/16\n  leftid=@gwa\n  right=192.0.2.2\n  rightsubnet=10.2.0.0/16\n  rightid=@gwb\n  authby=secret\n  auto=add\n");
  const secrets = write("ipsec.secrets", '@gwa @gwb : PSK "0123456789abcdef0123456789abcdef"\n');
  const c = loadIpsecConf(conf, secrets, ["192.0.2.2"]);
  const d = c.config.connections[0]!;
  assert.deepEqual(d.local?.addresses, ["192.0.2.2"]);
  assert.equal(d.local?.id, "gwb");
  assert.equal(c.secrets(d.secretRef)?.current.reveal().toString(), "0123456789abcdef0123456789abcdef");
});
