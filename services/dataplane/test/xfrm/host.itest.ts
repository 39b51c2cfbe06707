/**
 * Host kernel (XFRM netlink but no ESP), each test in a fresh netns (fs-dph-<pid>):
 * policies, bypass, trap, drop installed and listed by `ip xfrm policy`; an ACQUIRE when
 * traffic hits the trap; the capability probe reports the missing ESP; the service
 * refuses to start in xfrm mode with the hint to use --backend userspace.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { fileURLToPath } from "node:url";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const root = process.getuid?.() === 0;
const scenario = fileURLToPath(new URL("../lab/host-scenario.js", import.meta.url));
const cli = fileURLToPath(new URL("../../../../../bin/fleetswan.js", import.meta.url));

function withNetns<T>(fn: (ns: string) => T): T {
  const ns = `fs-dph-${process.pid}-${Math.floor(Math.random() * 1e6)}`;
  execFileSync("ip", ["netns", "add", ns]);
  try {
    return fn(ns);
  } finally {
    spawnSync("ip", ["netns", "del", ns]);
  }
}

test("host netns (fresh): bypass, trap and drop policies; ACQUIRE on a trap hit; ESP missing reported", { skip: root ? false : "needs root (netns, XFRM netlink)" }, () => {
  const out = withNetns((ns) => {
    const r = spawnSync("ip", ["netns", "exec", ns, process.execPath, scenario], { encoding: "utf8", timeout: 60_000 });
    assert.equal(r.status, 0, r.stderr);
    return JSON.parse(r.stdout.trim().split("\n").at(-1)!);
  });
  const text: string = out.policyText;
  // IKE bypass: UDP 500/4500 in and out, IPv4 and IPv6, at priority 1000, no template.
  for (const port of [500, 4500]) {
    assert.match(text, new RegExp(`src 0\\.0\\.0\\.0/0 dst 0\\.0\\.0\\.0/0 proto udp sport ${port}\\s+dir out priority 1000`), `bypass out ${port}`);
    assert.match(text, new RegExp(`src 0\\.0\\.0\\.0/0 dst 0\\.0\\.0\\.0/0 proto udp dport ${port}\\s+dir in priority 1000`), `bypass in ${port}`);
    assert.match(text, new RegExp(`src ::/0 dst ::/0 proto udp sport ${port}\\s+dir out priority 1000`), `bypass v6 out ${port}`);
  }
  assert.match(text, new RegExp(`src 10\\.1\\.0\\.0/16 dst 10\\.2\\.0\\.0/16 \\n\\s+dir out priority ${out.trapPrio}[^\\n]*\\n\\s+tmpl src 192\\.0\\.2\\.1 dst 192\\.0\\.2\\.2\\n\\s+proto esp reqid 11 mode tunnel`), "trap policy with its template");
  assert.match(text, new RegExp(`src 10\\.1\\.0\\.0/16 dst 10\\.9\\.0\\.0/16 \\n\\s+dir out action block priority ${out.dropPrio}`), "drop policy");
  assert.equal(out.listed, 10, "8 bypass + trap + drop listed through the API");
  const acq = out.events.find((e: { acquire?: unknown }) => e.acquire)?.acquire;
  assert.ok(acq, `an ACQUIRE event arrived (events: ${JSON.stringify(out.events)})`);
  assert.equal(acq.reqid, 11);
  assert.equal(acq.dst, "192.0.2.2");
  assert.deepEqual(acq.packet.dst, { address: "10.2.0.1", length: 32 });
  assert.deepEqual(acq.policySelector.dst, { address: "10.2.0.0", length: 16 });
  assert.match(out.blocked, /Operation not permitted|100% packet loss/, "the drop policy blocks");
  assert.match(out.routes, /10\.2\.0\.0\/16 dev d0 .*src 10\.1\.0\.1/, "route for the remote subnet in table 220 with the inner source");
  assert.deepEqual(out.repeat, { repaired: 0, pruned: 0, unchanged: 10 }, "a second reconcile changes nothing");
  assert.deepEqual(out.prune, { repaired: 0, pruned: 1, unchanged: 10 }, "an owned-range policy installed behind our back is pruned");
  assert.doesNotMatch(out.afterPrune, /dst 10\.4\.0\.0\/16/, "reqid 4242 (owned range, not desired) pruned");
  assert.match(out.afterPrune, /dst 10\.5\.0\.0\/16/, "reqid 0 (a stranger's) kept");
  assert.match(out.afterPrune, /dst 10\.6\.0\.0\/16/, "reqid 0x80000001 (a stranger's) kept");
  assert.deepEqual(out.caps.encryption ?? [], [], "no ESP algorithm installs on this host");
  assert.ok(out.caps.notes.includes("kernel lacks ESP (CONFIG_INET_ESP); use --backend userspace"), JSON.stringify(out.caps));
});

test("fleetswan dataplane --backend xfrm refuses to start without ESP, naming the fix", { skip: root ? false : "needs root" }, () => {
  const dir = mkdtempSync(join(tmpdir(), "fs-dph-"));
  const r = withNetns((ns) =>
    spawnSync("ip", ["netns", "exec", ns, process.execPath, cli, "dataplane", "--backend", "xfrm", "--socket", join(dir, "dp.sock"), "--metrics-port", "0", "--state-file", join(dir, "state.json")], { encoding: "utf8", timeout: 60_000 }),
  );
  if (r.status === 0) assert.fail("dataplane started although the kernel has no ESP");
  assert.equal(r.status, 1);
  assert.match(r.stderr, /kernel lacks ESP \(CONFIG_INET_ESP\); use --backend userspace/);
});
