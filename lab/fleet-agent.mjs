#!/usr/bin/env node
// fleetswan-lab's stand-in for `fleetswan ikeagent` in FLEET mode, used only while the
// ikeagent CLI has no fleet mode (it has standalone --config/--ipsec-conf only). It wires
// the two pieces that exist, exactly as services/ikeagent/src/daemon/agent.ts describes:
//   startAgent({ fleet: (engine, ctx) => runFleetClient({...}) })
// The lab prefers the real command as soon as `fleetswan ikeagent --help` lists --gateway.
//
//   node lab/fleet-agent.mjs --gateway gw-a --nats URL --state-dir DIR --dataplane SOCK
//        [--control-socket PATH] [--metrics-port N] [--log-level L]
import { parseArgs } from "node:util";
import { createLogger } from "@fleetswan/common";
import { startAgent } from "@fleetswan/ikeagent/daemon/agent";
import { runFleetClient } from "@fleetswan/ikeagent/fleet/index";

const { values: v } = parseArgs({
  options: {
    gateway: { type: "string" },
    nats: { type: "string" },
    "state-dir": { type: "string" },
    dataplane: { type: "string" },
    "control-socket": { type: "string" },
    "metrics-port": { type: "string" },
    "log-level": { type: "string" },
  },
  strict: true,
});
for (const k of ["gateway", "nats", "state-dir", "dataplane"]) {
  if (!v[k]) {
    process.stderr.write(`fleet-agent: --${k} is required\n`);
    process.exit(2);
  }
}
const log = createLogger("ikeagent", v["log-level"] ? { level: v["log-level"] } : {});
const agent = await startAgent({
  dataplane: v.dataplane,
  controlSocket: v["control-socket"] ?? "",
  metricsPort: v["metrics-port"] !== undefined ? Number(v["metrics-port"]) : 9743,
  log,
  fleet: async (engine, ctx) => {
    const c = await runFleetClient({
      natsUrl: v.nats.split(","),
      gateway: v.gateway,
      stateDir: v["state-dir"],
      engine,
      log: ctx.log,
      registry: ctx.registry,
    });
    return () => c.stop();
  },
});
log.info({ gateway: v.gateway }, "ikeagent (fleet mode, lab shim) running");
const stop = (sig) => {
  log.info({ signal: sig }, "stopping");
  void agent.stop().then(() => process.exit(0));
};
process.once("SIGTERM", () => stop("SIGTERM"));
process.once("SIGINT", () => stop("SIGINT"));
