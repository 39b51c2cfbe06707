/**
 * Test driver: one userspace ESP endpoint in the current network namespace.
 *   node esp-peer.js '<json {spec, side, tun?, nattPort?}>'
 * Prints "ready" when the SAs and policies are installed; answers stdin lines:
 *   "stats" -> one JSON line {stats, sas, events, tun (the addon's TUN offload counters)}; "quit" -> exits.
 */
import { createInterface } from "node:readline";
import { UserspaceBackend } from "../../src/userspace/userspace-backend.js";
import { loadAddon } from "../../src/userspace/native.js";
import { sideConfig, type TunnelSpec } from "./tunnel-config.js";

const arg = JSON.parse(process.argv[2] ?? "{}") as { spec: TunnelSpec; side: "a" | "b"; tun?: string; nattPort?: number };
const be = new UserspaceBackend({ tunName: arg.tun ?? "fsesp0", nattPort: arg.nattPort ?? 4500 });
const events: unknown[] = [];
be.onEvent((e) => events.push(e));
const cfg = sideConfig(arg.spec, arg.side);
await be.nattSocket({ port: arg.nattPort ?? 4500 });
for (const sa of cfg.sas) await be.addSa(sa);
for (const p of cfg.policies) await be.addPolicy(p);
process.stdout.write("ready\n");
const rl = createInterface({ input: process.stdin });
rl.on("line", (line) => {
  void (async () => {
    if (line.trim() === "stats") {
      const sas = (await be.listSas()).map((s) => ({ spi: s.sa!.id!.spi, dir: s.sa!.direction, ...s.counters }));
      process.stdout.write(JSON.stringify({ stats: be.stats, sas, events, tun: loadAddon().tunStats?.() }, (_k, v) => (typeof v === "bigint" ? Number(v) : v)) + "\n");
    } else if (line.trim() === "quit") {
      await be.close();
      process.exit(0);
    }
  })();
});
rl.on("close", () => void be.close().then(() => process.exit(0)));
