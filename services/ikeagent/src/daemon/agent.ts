/**
 * startAgent(): the ikeagent process minus argument parsing. Wires the engine to the
 * dataplane (gRPC over its Unix socket, or the in-process fake), the UDP 500 sockets and the
 * UDP 4500 relay, the local control socket and the metrics server, then feeds it
 * configuration from one of:
 *   - a standalone source (agent.yaml, or ipsec.conf + ipsec.secrets), re-read on reload;
 *   - the fleet: `fleet(engine, ctx)` is called once everything runs; it applies views
 *     with engine.apply() whenever they change (src/fleet's runFleetClient does exactly
 *     that) and returns a stop function. Example:
 *
 *       await startAgent({ fleet: async (engine, { log, registry }) => {
 *         const c = await runFleetClient({ natsUrl, gateway, stateDir, engine, log, registry });
 *         return () => c.stop();
 *       } });
 */
import { METRICS_PORT, DATAPLANE_SOCKET, IKEAGENT_SOCKET, IKE_PORT, NATT_PORT, createLogger, createRegistry, startMetricsServer, type Logger, type MetricsServer, type Registry } from "@fleetswan/common";
import type { ikeagent } from "@fleetswan/proto";
import { FakeDataplane } from "../ike/engine/dataplane-fake.js";
import type { DataplaneApi } from "../ike/engine/dataplane.js";
import { IkeEngine } from "../ike/engine/engine.js";
import { defaultCryptoWorkers } from "../ike/crypto/ke-offload.js";
import { createEngineMetrics } from "../ike/engine/metrics.js";
import type { RetransmitConfig } from "../ike/engine/task-manager.js";
import type { Engine } from "../engine-api.js";
import { hostAddresses, type LoadedConfig } from "../standalone/config.js";
import { startControlServer, type ControlServer } from "./control.js";
import { GrpcDataplane } from "./dataplane-grpc.js";
import { UdpTransport } from "./udp.js";

export interface AgentOptions {
  /** Standalone: loads (and on reload re-loads) the configuration. */
  load?: () => LoadedConfig;
  /** Fleet mode hook (see the file comment); returns a stop function. */
  fleet?: (engine: Engine, ctx: { log: Logger; registry: Registry }) => Promise<() => Promise<void>>;
  /** Dataplane socket path, or "fake" for the in-process fake (IKE-only tests). */
  dataplane?: string;
  /** Control socket path ("" = none). */
  controlSocket?: string;
  /** Metrics port (0 = an ephemeral port; negative = no metrics server). */
  metricsPort?: number;
  metricsHost?: string;
  ikePort?: number;
  nattPort?: number;
  /** Addresses to listen on (default: all of this host's). */
  addresses?: string[];
  retransmit?: RetransmitConfig;
  log?: Logger;
  /** NAT-T keepalive interval in seconds (default 20). */
  keepaliveSeconds?: number;
  /** RFC 7383: largest IKE message sent unfragmented (default 1232). */
  fragmentSize?: number;
  /** Worker threads for the responder's IKE_SA_INIT key work (default defaultCryptoWorkers(); 0 = the event loop). */
  cryptoWorkers?: number;
  /** Delete SAs on stop (default: keep them so a restart drops no traffic). */
  deleteOnStop?: boolean;
  version?: string;
}

export interface Agent {
  engine: IkeEngine;
  metrics?: MetricsServer;
  dataplane: DataplaneApi;
  reload(): Promise<ikeagent.ReloadConfigResponse>;
  stop(): Promise<void>;
}

export async function startAgent(opts: AgentOptions): Promise<Agent> {
  const log = opts.log ?? createLogger("ikeagent");
  const registry = createRegistry("ikeagent");
  const metrics = createEngineMetrics(registry);
  const dp: DataplaneApi = opts.dataplane === "fake" ? new FakeDataplane() : new GrpcDataplane(opts.dataplane ?? DATAPLANE_SOCKET, log);
  if (!(dp instanceof FakeDataplane)) {
    try {
      const caps = await dp.getCapabilities();
      log.info({ backend: caps.backend, udpEncap: caps.udpEncap, notes: caps.notes }, "dataplane connected");
    } catch (err) {
      log.warn({ err: (err as Error).message }, "dataplane not reachable yet; SAs will fail to install until it is");
    }
  }
  const relay = dp instanceof FakeDataplane ? undefined : dp.openRelay();
  const transport = new UdpTransport(log, { ikePort: opts.ikePort ?? IKE_PORT, nattPort: opts.nattPort ?? NATT_PORT, ...(relay ? { relay } : {}) });
  const addresses = () => opts.addresses ?? hostAddresses().filter((a) => a !== "127.0.0.1" && a !== "::1");
  const engine = new IkeEngine({
    dataplane: dp,
    transport,
    log,
    metrics,
    ...(opts.retransmit ? { retransmit: opts.retransmit } : {}),
    localAddresses: addresses,
    ...(opts.keepaliveSeconds !== undefined ? { keepaliveSeconds: opts.keepaliveSeconds } : {}),
    ...(opts.fragmentSize !== undefined ? { fragmentSize: opts.fragmentSize } : {}),
    cryptoWorkers: opts.cryptoWorkers ?? defaultCryptoWorkers(),
    version: opts.version ?? "",
  });
  transport.onReceive((l, r, d) => engine.receive(l, r, d));
  log.info({ cryptoWorkers: engine.keyExchange.threads }, engine.keyExchange.threads ? `IKE_SA_INIT key exchange in ${engine.keyExchange.threads} crypto worker thread(s)` : "IKE_SA_INIT key exchange on the event loop");
  await transport.bind(addresses());

  let loaded: LoadedConfig | undefined;
  const reload = async (): Promise<ikeagent.ReloadConfigResponse> => {
    if (!opts.load) throw Object.assign(new Error("no configuration file to reload"), { code: "UNSUPPORTED" });
    const next = opts.load();
    const res = await engine.apply(next.config, next.secrets);
    loaded = next;
    await transport.bind([...addresses(), ...next.config.connections.flatMap((c) => c.local?.addresses ?? [])]);
    log.info({ source: next.source, added: res.added, changed: res.changed, removed: res.removed }, "configuration applied");
    return res;
  };
  if (opts.load) await reload();

  let control: ControlServer | undefined;
  if (opts.controlSocket !== "") control = await startControlServer(opts.controlSocket ?? IKEAGENT_SOCKET, engine, log, opts.load ? reload : undefined);
  let metricsServer: MetricsServer | undefined;
  const port = opts.metricsPort ?? METRICS_PORT.ikeagent;
  if (port >= 0) {
    metricsServer = await startMetricsServer({ registry, port, host: opts.metricsHost ?? "0.0.0.0" });
    log.info({ port: metricsServer.port }, "metrics server listening");
  }
  const counters = setInterval(() => void engine.refreshCounters(), 10_000);
  counters.unref();
  let stopFleet: (() => Promise<void>) | undefined;
  if (opts.fleet) stopFleet = await opts.fleet(engine, { log, registry });
  void loaded;

  return {
    engine,
    dataplane: dp,
    ...(metricsServer ? { metrics: metricsServer } : {}),
    reload,
    stop: async () => {
      clearInterval(counters);
      await stopFleet?.();
      await engine.stop({ keepSas: !opts.deleteOnStop });
      await control?.close();
      await metricsServer?.close();
      transport.close();
      dp.close();
    },
  };
}
