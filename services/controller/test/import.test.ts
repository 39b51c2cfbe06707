import { test } from "node:test";
import assert from "node:assert/strict";
import { stringify } from "yaml";
import { parseIpsecConf, parseIpsecSecrets } from "@fleetswan/ipsecconf";
import { importToSpec } from "../src/cli.js";
import { compileSpec } from "../src/spec/compile.js";

test("import: the FAQ's net-to-net example becomes a valid spec with keyingtries/keylife kept", async () => {
  const conf = `conn %default\n    keyingtries=0\n    ikelifetime=8h\nconn net-to-net\n    left=192.0.2.2\n    leftsubnet=10.1.0.0/16\n    right=192.0.2.8\n    rightsubnet=192.0.2.96/27\n    authby=secret\n    auto=start\n`;
  const secrets = parseIpsecSecrets('192.0.2.2 192.0.2.8 : PSK "q8Vt3nZpR7wLk2XcYb9JmF4sHd6Ga1Ue"\n', "ipsec.secrets");
  const cfg = parseIpsecConf({ confText: conf, confFile: "ipsec.conf", secrets });
  const spec = importToSpec(cfg.connections, "west", (ref) => cfg.secrets.get(ref)?.value.reveal().toString("utf8"));
  const peer = (spec.peers as Record<string, unknown>[])[0]!;
  assert.equal(peer.name, "net-to-net");
  assert.equal(peer.address, "192.0.2.8");
  assert.deepEqual(peer.subnets, ["192.0.2.96/27"]);
  assert.equal(peer.keying_tries, 0);
  assert.equal(peer.ike_lifetime, 28800);
  assert.equal(peer.psk, "q8Vt3nZpR7wLk2XcYb9JmF4sHd6Ga1Ue");
  const f = await compileSpec(stringify(spec), "imported.yaml", async () => []);
  assert.deepEqual(f.gateways.get("west")!.subnets, ["10.1.0.0/16"]);
});
