import { test } from "node:test";
import assert from "node:assert/strict";
import { ConfigError } from "@fleetswan/common";
import { fleet } from "@fleetswan/proto";
import { parseIpsecConf, parseIpsecSecrets, type FileReader } from "../src/index.js";

// The FreeS/WAN FAQ's net-to-net example ("Can I use policy groups along with explicitly
// configured connections?"), completed so that it can run: the admin at 192.0.2.2.
const NET_TO_NET = `# /etc/ipsec.conf
version 2

config setup
    uniqueids=yes

conn %default
    keyexchange=ikev2
    authby=secret
    ike=aes256gcm16-prfsha384-curve25519
    esp=aes256gcm16
    dpddelay=30s
    dpdtimeout=120s
    dpdaction=restart

conn net-to-net
    left=192.0.2.2           # you are here
    leftsubnet=10.0.1.0/24
    leftid=@gw-a.example.test
    right=192.0.2.8
    rightsubnet=192.0.2.96/27
    rightid=@gw-b.example.test
    auto=start
`;

const SECRETS = `# /etc/ipsec.secrets
@gw-a.example.test @gw-b.example.test : PSK "a long and secret shared key"
192.0.2.2 192.0.2.99 : PSK 0x00112233445566778899aabbccddeeff
`;

test("FAQ net-to-net: left is here", () => {
  const secrets = parseIpsecSecrets(SECRETS, "ipsec.secrets");
  const cfg = parseIpsecConf({ confText: NET_TO_NET, confFile: "ipsec.conf", secrets, localAddresses: ["192.0.2.2"] });
  assert.equal(cfg.connections.length, 1);
  const c = cfg.connections[0]!;
  assert.equal(c.name, "net-to-net");
  assert.deepEqual(c.local?.addresses, ["192.0.2.2"]);
  assert.deepEqual(c.local?.subnets, ["10.0.1.0/24"]);
  assert.equal(c.local?.id, "gw-a.example.test");
  assert.deepEqual(c.remote?.addresses, ["192.0.2.8"]);
  assert.deepEqual(c.remote?.subnets, ["192.0.2.96/27"]);
  assert.equal(c.remote?.id, "gw-b.example.test");
  assert.equal(c.local?.auth, fleet.AuthMethod.AUTH_METHOD_PSK);
  assert.deepEqual(c.ikeProposals, ["aes256gcm16-prfsha384-curve25519"]);
  assert.deepEqual(c.espProposals, ["aes256gcm16"]);
  assert.equal(c.startAction, fleet.StartAction.START_ACTION_START);
  assert.equal(c.dpdDelaySeconds, 30);
  assert.equal(c.dpdTimeoutSeconds, 120);
  assert.equal(c.dpdAction, fleet.DpdAction.DPD_ACTION_RESTART);
  assert.equal(c.ikeLifetimeSeconds, 10800);
  assert.equal(c.childLifetimeSeconds, 3600);
  assert.equal(c.rekeyMarginSeconds, 540);
  assert.equal(c.mode, "tunnel");
  assert.equal(c.uniqueIds, true);
  assert.equal(c.secretRef, "ipsec.secrets:2");
  assert.equal(cfg.secrets.get("ipsec.secrets:2")?.value.reveal().toString(), "a long and secret shared key");
  assert.equal(cfg.where.get("net-to-net"), "ipsec.conf:16");
});

test("FAQ net-to-net: the same file on the other gateway is oriented right-is-here", () => {
  const secrets = parseIpsecSecrets(SECRETS, "ipsec.secrets");
  const cfg = parseIpsecConf({ confText: NET_TO_NET, confFile: "ipsec.conf", secrets, localAddresses: ["192.0.2.8", "10.9.9.9"] });
  const c = cfg.connections[0]!;
  assert.deepEqual(c.local?.addresses, ["192.0.2.8"]);
  assert.deepEqual(c.local?.subnets, ["192.0.2.96/27"]);
  assert.equal(c.local?.id, "gw-b.example.test");
  assert.deepEqual(c.remote?.subnets, ["10.0.1.0/24"]);
  assert.equal(c.secretRef, "ipsec.secrets:2");
});

test("neither end is local: error names the conn's line", () => {
  assert.throws(
    () => parseIpsecConf({ confText: NET_TO_NET, confFile: "ipsec.conf", localAddresses: ["198.51.100.1"] }),
    (e: unknown) => e instanceof ConfigError && e.where === "ipsec.conf:16" && /neither left=192.0.2.2 nor right=192.0.2.8/.test(e.message),
  );
});

test("%default applies to every conn, also= includes, own values win, empty value unsets", () => {
  const text = `conn %default
    ikelifetime=8h
    keylife=20m
    rekeymargin=3m
    rekeyfuzz=50%
    keyingtries=%forever
    leftsubnet=10.1.0.0/16

conn base
    left=192.0.2.1
    right=192.0.2.2
    esp=aes128gcm16,aes256-sha256
    type=transport

conn derived
    also=base
    type=tunnel
    leftsubnet=
    leftsubnets={10.1.1.0/24 10.1.2.0/24}
    rightsubnet=10.2.0.0/16[tcp/443]
    forceencaps=yes
    auto=route
`;
  const cfg = parseIpsecConf({ confText: text, confFile: "t.conf" });
  assert.deepEqual(cfg.ignored, ["base"]);
  const c = cfg.connections[0]!;
  assert.equal(c.name, "derived");
  assert.equal(c.ikeLifetimeSeconds, 8 * 3600);
  assert.equal(c.childLifetimeSeconds, 1200);
  assert.equal(c.rekeyMarginSeconds, 180);
  assert.equal(c.rekeyFuzzPercent, 50);
  assert.equal(c.keyingTries, 0);
  assert.equal(c.mode, "tunnel");
  assert.deepEqual(c.espProposals, ["aes128gcm16", "aes256-sha256"]);
  assert.deepEqual(c.local?.subnets, ["10.1.1.0/24", "10.1.2.0/24"]);
  assert.deepEqual(c.remote?.subnets, ["10.2.0.0/16[tcp/443]"]);
  assert.equal(c.forceEncap, true);
  assert.equal(c.startAction, fleet.StartAction.START_ACTION_ROUTE);
  assert.equal(c.dpdDelaySeconds, 0, "no dpdaction/dpddelay: DPD off as in ipsec.conf");
  assert.equal(c.secretRef, "", "no secrets given");
});

test("Libreswan algorithm spellings are translated", () => {
  const text = `conn l
    left=192.0.2.1
    right=%any
    ike=aes_gcm256-sha2_256-dh31;aes256-sha2_512-dh16
    esp=aes_gcm256
    ikev2=insist
    auto=add
`;
  const c = parseIpsecConf({ confText: text, confFile: "l.conf" }).connections[0]!;
  assert.deepEqual(c.ikeProposals, ["aes256gcm16-prfsha256-curve25519", "aes256-sha512-modp4096"]);
  assert.deepEqual(c.espProposals, ["aes256gcm16"]);
  assert.deepEqual(c.remote?.addresses, ["%any"]);
});

test("the FAQ's double-NAT example fails on its first unsupported keyword, with the line", () => {
  const text = `conn double-nat
        left=198.51.100.9
        leftsubnet=10.0.1.0/24
        leftnexthop=198.51.100.10
        leftfirewall=yes
        leftid=@firewall.netone.nl
        right=203.0.113.4
        rightsubnet=10.0.0.0/24
        auto=add
`;
  assert.throws(
    () => parseIpsecConf({ confText: text, confFile: "/etc/ipsec.conf" }),
    (e: unknown) => e instanceof ConfigError && e.where === "/etc/ipsec.conf:4" && /unsupported keyword "leftnexthop"/.test(e.message),
  );
});

/** Each bad input and the "file:line" its error must name. */
const BAD: Array<[string, string, RegExp]> = [
  ["conn a\n    left=192.0.2.1\n    right=192.0.2.2\n    auto=sometimes\n", "x:4", /auto=sometimes/],
  ["conn a\n  left=192.0.2.1\n  left=192.0.2.3\n", "x:3", /duplicate keyword "left"/],
  ["conn a\n  left=gw.example.com\n  right=192.0.2.2\n  auto=add\n", "x:2", /not an IP address/],
  ["conn a\n  left=%defaultroute\n  right=192.0.2.2\n  auto=add\n", "x:2", /%defaultroute is not supported/],
  ["config setup\n  interfaces=%defaultroute\n", "x:2", /unsupported keyword "interfaces"/],
  ["conn a\n  also=nothere\n  auto=add\n", "x:2", /no conn "nothere"/],
  ["conn a\n  also=b\nconn b\n  also=a\n", "x:4", /loop/],
  ["conn a\n  left=192.0.2.1\n  right=192.0.2.2\n  keyexchange=ikev1\n  auto=add\n", "x:4", /only IKEv2/],
  ["conn a\n  left=192.0.2.1\n  right=192.0.2.2\n  ikelifetime=3 hours\n", "x:4", /contains spaces/],
  ["conn a\n  left=192.0.2.1\n  right=192.0.2.2\n  ikelifetime=3y\n  auto=add\n", "x:4", /not a time/],
  ["conn a\n  left=192.0.2.1\n  right=192.0.2.2\n  leftsubnet=10.0.0.0/33\n  auto=add\n", "x:4", /too long/],
  ["conn a\n  left=192.0.2.1\n  right=192.0.2.2\n  type=passthrough\n  auto=add\n", "x:4", /type=passthrough/],
  ["conn a\nleft=192.0.2.1\n", "x:2", /unexpected "left=192.0.2.1"/],
  ["  left=192.0.2.1\n", "x:1", /outside of a config\/conn\/ca section/],
  ["conn a\n  leftid=\"unterminated\n", "x:2", /unterminated/],
  ["conn a\nconn a\n", "x:2", /defined twice/],
  ["include /etc/ipsec.d/*.conf\n", "x:1", /include/],
  ["conn a\n  left=192.0.2.1\n  right=192.0.2.2\n  authby=never\n  auto=add\n", "x:4", /authby=never/],
];

for (const [text, where, re] of BAD) {
  test(`rejected at ${where}: ${re.source}`, () => {
    assert.throws(
      () => parseIpsecConf({ confText: text, confFile: "x" }),
      (e: unknown) => e instanceof ConfigError && e.where === where && re.test(e.message),
    );
  });
}

test("missing PSK for a conn is an error naming the conn", () => {
  const secrets = parseIpsecSecrets("198.51.100.1 198.51.100.2 : PSK \"other\"\n", "s");
  assert.throws(
    () => parseIpsecConf({ confText: NET_TO_NET, confFile: "c", secrets, localAddresses: ["192.0.2.2"] }),
    (e: unknown) => e instanceof ConfigError && e.where === "c:16" && /no PSK in ipsec.secrets/.test(e.message),
  );
});

test("secrets: formats, continuation lines, include, key files, errors", () => {
  const files: Record<string, string> = {
    "/etc/more.secrets": ": PSK 0sYWJjZGVm\n",
    "/etc/key.pem": "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIA==\n-----END PRIVATE KEY-----\n",
  };
  const read: FileReader = (p) => {
    const full = p.startsWith("/") ? p : `/etc/${p}`;
    const text = files[full];
    if (text === undefined) throw Object.assign(new Error("no"), { code: "ENOENT" });
    return { path: full, text };
  };
  const s = parseIpsecSecrets(
    `# comment
@a @b :
    PSK "with # hash"
2001:db8::1 2001:db8::2 : PSK 0xdead_beef
include more.secrets
@gw : ECDSA key.pem
`,
    "/etc/ipsec.secrets",
    read,
  );
  assert.equal(s.length, 4);
  assert.deepEqual(s[0]!.ids, ["a", "b"]);
  assert.equal(s[0]!.value.reveal().toString(), "with # hash");
  assert.equal(s[0]!.where, "/etc/ipsec.secrets:2");
  assert.deepEqual(s[1]!.ids, ["2001:db8::1", "2001:db8::2"]);
  assert.equal(s[1]!.value.reveal().toString("hex"), "deadbeef");
  assert.deepEqual(s[2]!.ids, []);
  assert.equal(s[2]!.value.reveal().toString(), "abcdef");
  assert.equal(s[2]!.where, "/etc/more.secrets:1");
  assert.equal(s[3]!.kind, "private-key");
  assert.equal(String(s[3]!.value), "[REDACTED]");

  assert.throws(() => parseIpsecSecrets("@a : XAUTH \"x\"\n", "s"), (e: unknown) => e instanceof ConfigError && e.where === "s:1");
  assert.throws(() => parseIpsecSecrets("\n@a : RSA {\n  Modulus: 0x00\n  }\n", "s", read), (e: unknown) => e instanceof ConfigError && e.where === "s:2");
  assert.throws(() => parseIpsecSecrets("@a @b PSK \"x\"\n", "s"), (e: unknown) => e instanceof ConfigError && /missing ":"/.test(e.message));
  assert.throws(() => parseIpsecSecrets("@a : PSK plain\n", "s"), (e: unknown) => e instanceof ConfigError && /quoted/.test(e.message));
});
