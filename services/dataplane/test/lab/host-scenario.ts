/**
 * Runs inside a fresh network namespace (started by host.itest.ts with `ip netns exec`):
 * the xfrm backend on the host kernel (no ESP): capability probe, bypass/trap/drop
 * policies, and an ACQUIRE when traffic hits the trap policy. Prints one JSON line.
 */
import { execFileSync } from "node:child_process";
import { dataplane } from "@fleetswan/proto";
import { XfrmBackend } from "../../src/xfrm/xfrm-backend.js";
import { Dataplane } from "../../src/reconcile.js";

const sel = (s: string, sl: number, d: string, dl: number): dataplane.Selector => ({ src: { address: s, length: sl }, dst: { address: d, length: dl }, protocol: 0, srcPort: 0, dstPort: 0 });
const sh = (cmd: string[]): string => execFileSync(cmd[0], cmd.slice(1), { encoding: "utf8" });

async function main(): Promise<void> {
  sh(["ip", "link", "set", "lo", "up"]);
  sh(["ip", "link", "add", "d0", "type", "veth", "peer", "name", "d1"]);
  sh(["ip", "link", "set", "d0", "up"]);
  sh(["ip", "link", "set", "d1", "up"]);
  sh(["ip", "addr", "add", "192.0.2.1/24", "dev", "d0"]);
  sh(["ip", "addr", "add", "10.1.0.1/32", "dev", "lo"]);
  sh(["ip", "route", "add", "10.9.0.0/16", "dev", "d0"]);
  const backend = new XfrmBackend({});
  const caps = await backend.capabilities();
  const dp = new Dataplane({ backend, driftIntervalMs: 0 });
  await dp.start();
  const events: dataplane.Event[] = [];
  dp.watch((e) => events.push(e));
  const trapPrio = await dp.addPolicy({
    selector: sel("10.1.0.0", 16, "10.2.0.0", 16),
    direction: dataplane.Direction.DIRECTION_OUT,
    action: dataplane.PolicyAction.POLICY_ACTION_TRAP,
    priority: 0,
    template: { src: "192.0.2.1", dst: "192.0.2.2", mode: dataplane.Mode.MODE_TUNNEL, reqid: 11, protocol: 50 },
    mark: 0,
    ifId: 0,
    connection: "trap-conn",
  });
  const dropPrio = await dp.addPolicy({
    selector: sel("10.1.0.0", 16, "10.9.0.0", 16),
    direction: dataplane.Direction.DIRECTION_OUT,
    action: dataplane.PolicyAction.POLICY_ACTION_DROP,
    priority: 0,
    template: undefined,
    mark: 0,
    ifId: 0,
    connection: "group-block",
  });
  // Traffic into the trap: the kernel holds it and raises ACQUIRE.
  try {
    sh(["ping", "-c", "1", "-W", "1", "-I", "10.1.0.1", "10.2.0.1"]);
  } catch {
    /* no reply expected */
  }
  let blocked = "";
  try {
    sh(["ping", "-c", "1", "-W", "1", "-I", "10.1.0.1", "10.9.0.1"]);
  } catch (e) {
    const x = e as { stdout?: string; stderr?: string };
    blocked = `${x.stdout ?? ""}${x.stderr ?? ""}`;
  }
  await new Promise((r) => setTimeout(r, 500));
  const policyText = sh(["ip", "xfrm", "policy"]);
  const listed = await dp.listPolicies();
  const routes = sh(["ip", "route", "show", "table", "220"]);
  const repeat = await dp.reconcile();
  // Ownership by reqid range: policies installed behind our back with an owned reqid are pruned,
  // a stranger's (reqid 0, reqid above 0x7fffffff) stay.
  const tmpl = (reqid: string) => ["tmpl", "src", "192.0.2.1", "dst", "192.0.2.2", "proto", "esp", "reqid", reqid, "mode", "tunnel"];
  sh(["ip", "xfrm", "policy", "add", "src", "10.1.0.0/16", "dst", "10.4.0.0/16", "dir", "out", "priority", "5000", ...tmpl("4242")]);
  sh(["ip", "xfrm", "policy", "add", "src", "10.1.0.0/16", "dst", "10.5.0.0/16", "dir", "out", "priority", "5000", ...tmpl("0")]);
  sh(["ip", "xfrm", "policy", "add", "src", "10.1.0.0/16", "dst", "10.6.0.0/16", "dir", "out", "priority", "5000", ...tmpl(String(0x80000001))]);
  const prune = await dp.reconcile();
  const afterPrune = sh(["ip", "xfrm", "policy"]);
  await dp.stop();
  await backend.close();
  process.stdout.write(JSON.stringify({ caps: dataplane.Capabilities.toJSON(caps), trapPrio, dropPrio, policyText, listed: listed.length, events: events.map((e) => dataplane.Event.toJSON(e)), blocked, routes, repeat, prune, afterPrune }) + "\n");
}

main().catch((e) => {
  process.stderr.write(`${(e as Error).stack}\n`);
  process.exit(1);
});
