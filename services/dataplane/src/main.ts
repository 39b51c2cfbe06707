/**
 * `fleetswan dataplane`: the per-host dataplane service.
 *
 *   fleetswan dataplane [--backend xfrm|userspace|fake] [--socket PATH] [--metrics-port N]
 *                       [--state-file PATH] [--natt-port N] [--drift-interval SECONDS]
 */
import { parseArgs } from "node:util";
import { join } from "node:path";
import { AGENT_STATE_DIR, DATAPLANE_SOCKET, METRICS_PORT, NATT_PORT, UsageError, createLogger, createRegistry, startMetricsServer, type CliCommand } from "@fleetswan/common";
import type { Backend, NattSocket } from "./backend.js";
import { FakeBackend } from "./fake/index.js";
import { Dataplane } from "./reconcile.js";
import { startDataplaneServer } from "./server/grpc.js";
import { DgramNattSocket } from "./server/relay.js";
import { registerDataplaneMetrics } from "./metrics.js";
import { NO_ESP_NOTE, XfrmBackend, readXfrmStat } from "./xfrm/xfrm-backend.js";

export const DEFAULT_STATE_FILE = join(AGENT_STATE_DIR, "dataplane-state.json");

export const usage = `usage: fleetswan dataplane [options]
  --backend xfrm|userspace|fake   what carries ESP (default xfrm)
  --socket PATH                   gRPC Unix socket, mode 0600 (default ${DATAPLANE_SOCKET})
  --metrics-port N                /metrics, /healthz, /readyz (default ${METRICS_PORT.dataplane}; 0 = any)
  --state-file PATH               desired state incl. SA keys, mode 0600 (default ${DEFAULT_STATE_FILE})
  --natt-port N                   own the NAT-T UDP socket and relay IKE to the agent (default off; ${NATT_PORT} in production)
  --drift-interval SECONDS        how often to diff the kernel against the desired state (default 10; 0 = off)`;

export interface RunOptions {
  backend: "xfrm" | "userspace" | "fake";
  socket: string;
  metricsPort: number;
  stateFile: string;
  nattPort?: number;
  driftIntervalSec: number;
}

export function parseDataplaneArgs(argv: string[]): RunOptions {
  let v;
  try {
    v = parseArgs({
      args: argv,
      options: {
        backend: { type: "string", default: "xfrm" },
        socket: { type: "string", default: DATAPLANE_SOCKET },
        "metrics-port": { type: "string", default: String(METRICS_PORT.dataplane) },
        "state-file": { type: "string", default: DEFAULT_STATE_FILE },
        "natt-port": { type: "string" },
        "drift-interval": { type: "string", default: "10" },
      },
      strict: true,
      allowPositionals: false,
    }).values;
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
  const backend = v.backend as string;
  if (backend !== "xfrm" && backend !== "userspace" && backend !== "fake") throw new UsageError(`--backend must be xfrm, userspace or fake (got "${backend}")`);
  const num = (name: string, s: string | undefined): number | undefined => {
    if (s === undefined) return undefined;
    const n = Number(s);
    if (!Number.isInteger(n) || n < 0 || n > 65535 * 1000) throw new UsageError(`--${name} must be a non-negative integer (got "${s}")`);
    return n;
  };
  return {
    backend,
    socket: v.socket as string,
    metricsPort: num("metrics-port", v["metrics-port"] as string)!,
    stateFile: v["state-file"] as string,
    nattPort: num("natt-port", v["natt-port"] as string | undefined),
    driftIntervalSec: num("drift-interval", v["drift-interval"] as string)!,
  };
}

async function makeBackend(o: RunOptions, logger: ReturnType<typeof createLogger>): Promise<Backend> {
  switch (o.backend) {
    case "fake":
      return new FakeBackend();
    case "xfrm":
      return new XfrmBackend({ logger });
    case "userspace": {
      const mod = await import("./userspace/userspace-backend.js");
      return new mod.UserspaceBackend({}) as Backend;
    }
  }
}

/** Run the service until SIGINT/SIGTERM. Resolves to the exit code. */
export async function runDataplane(o: RunOptions): Promise<number> {
  const logger = createLogger("dataplane");
  const backend = await makeBackend(o, logger);
  const caps = await backend.capabilities();
  logger.info({ backend: o.backend, encryption: caps.encryption, esn: caps.esn, udpEncap: caps.udpEncap, kernel: caps.kernel, notes: caps.notes }, "capabilities");
  if (o.backend === "xfrm" && caps.notes.includes(NO_ESP_NOTE)) {
    logger.error(NO_ESP_NOTE);
    process.stderr.write(`fleetswan dataplane: ${NO_ESP_NOTE}\n`);
    await backend.close();
    return 1;
  }
  const dp = new Dataplane({ backend, stateFile: o.stateFile, logger, driftIntervalMs: o.driftIntervalSec * 1000 });
  const r = await dp.start();
  logger.info(r, "reconciled at start");
  let natt: NattSocket | undefined;
  if (o.nattPort !== undefined) {
    natt = backend.nattSocket ? await backend.nattSocket({ port: o.nattPort }) : await DgramNattSocket.open({ port: o.nattPort });
  }
  const registry = createRegistry("dataplane");
  const metrics = registerDataplaneMetrics(registry, {
    dp,
    netlink: backend instanceof XfrmBackend ? () => backend.netlinkStats() : undefined,
    xfrmStat: backend instanceof XfrmBackend ? () => readXfrmStat() : undefined,
    userspaceDrops: "stats" in backend
      ? () => {
          const b = backend as unknown as { stats: { drops: Record<string, number> }; dropCounts?: () => Record<string, number> };
          return b.dropCounts ? b.dropCounts() : b.stats.drops;
        }
      : undefined,
  });
  const server = await startDataplaneServer({ dataplane: dp, socket: o.socket, logger, natt, onError: (c) => metrics.rpcError(c) });
  const metricsServer = await startMetricsServer({ registry, port: o.metricsPort });
  logger.info({ socket: o.socket, metricsPort: metricsServer.port, stateFile: o.stateFile }, "dataplane serving");
  await new Promise<void>((resolve) => {
    process.once("SIGINT", resolve);
    process.once("SIGTERM", resolve);
  });
  logger.info("stopping (installed SAs and policies stay)");
  await server.close();
  await metricsServer.close();
  await natt?.close();
  await dp.stop();
  await backend.close();
  return 0;
}

export const dataplaneCommand: CliCommand = {
  name: "dataplane",
  summary: "Run the dataplane service (kernel XFRM or userspace ESP) for the local ikeagent",
  usage,
  run: async (argv) => runDataplane(parseDataplaneArgs(argv)),
};
