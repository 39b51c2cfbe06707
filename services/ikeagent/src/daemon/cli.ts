/**
 * CLI: `fleetswan ikeagent` runs the agent; `fleetswan agent status|up|down|route|unroute|
 * reload|diag` talks to a local agent's control socket.
 */
import { parseArgs } from "node:util";
import { credentials, Metadata, type ServiceError } from "@grpc/grpc-js";
import { IKEAGENT_SOCKET, METRICS_PORT, DATAPLANE_SOCKET, AGENT_STATE_DIR, NATS_CLI_OPTIONS, NATS_CLI_USAGE, UsageError, createLogger, natsOptionsFromCli, type CliCommand, type Logger, type Registry } from "@fleetswan/common";
import type { Engine } from "../engine-api.js";
import { runFleetClient } from "../fleet/index.js";
import { ikeagent } from "@fleetswan/proto";
import { loadIpsecConf, loadYamlConfig } from "../standalone/config.js";
import { startAgent } from "./agent.js";

const AGENT_USAGE = `usage: fleetswan ikeagent --gateway NAME [--state-dir DIR] [NATS options] [options]      (fleet mode)
       fleetswan ikeagent (--config agent.yaml | --ipsec-conf FILE [--ipsec-secrets FILE]) [options]   (standalone)

Runs the IKEv2 agent of one gateway: in fleet mode from its view and sealed secrets over
NATS (enrolling on first start with the token in $FLEETSWAN_ENROLL_TOKEN or
STATE_DIR/enroll-token), or standalone from local files.

  --gateway NAME           fleet mode: this gateway's name in the fleet spec
  --state-dir DIR          fleet mode: key pair, last good view and secrets (default ${AGENT_STATE_DIR})
  --config FILE            agent YAML (docs/ikeagent.md)
  --ipsec-conf FILE        FreeS/WAN/Libreswan ipsec.conf instead of YAML
  --ipsec-secrets FILE     its ipsec.secrets
  --dataplane PATH|fake    dataplane socket (default ${DATAPLANE_SOCKET}); "fake" = in-process
                           fake (IKE only, no traffic; the agent then owns UDP 4500 itself)
  --control-socket PATH    local control socket (default ${IKEAGENT_SOCKET}; "" = none)
  --metrics-port N         metrics/health port (default ${METRICS_PORT.ikeagent}; -1 = off)
  --metrics-host ADDR      metrics bind address (default 0.0.0.0)
  --address ADDR           listen on this address (repeatable; default: all of the host's)
  --ike-port N             IKE port (default 500)
  --natt-port N            NAT-T port (default 4500)
  --retransmit-timeout MS  first retransmission timeout (default 4000; backoff 1.8)
  --retransmit-tries N     retransmissions before giving up (default 5)
  --keepalive-seconds N    NAT-T keepalive interval when behind a NAT (default 20)
  --fragment-size N        largest IKE message sent unfragmented to peers that support RFC 7383 (default 1232)
  --crypto-workers N       worker threads for the responder's IKE_SA_INIT key exchange (default: CPUs - 1, at most 4; 0 = on the event loop)
  --delete-on-exit         delete SAs (INFORMATIONAL delete) on SIGTERM; default keeps them
  --log-level LEVEL        debug, info, warn, error (default info, or $FLEETSWAN_LOG_LEVEL)

SIGHUP re-reads the configuration (standalone) and applies only what changed.

${NATS_CLI_USAGE}
`;

async function runAgent(argv: string[]): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: {
      config: { type: "string" },
      "ipsec-conf": { type: "string" },
      "ipsec-secrets": { type: "string" },
      dataplane: { type: "string" },
      "control-socket": { type: "string" },
      "metrics-port": { type: "string" },
      "metrics-host": { type: "string" },
      address: { type: "string", multiple: true },
      "ike-port": { type: "string" },
      "natt-port": { type: "string" },
      "retransmit-timeout": { type: "string" },
      "retransmit-tries": { type: "string" },
      "delete-on-exit": { type: "boolean" },
      "keepalive-seconds": { type: "string" },
      "fragment-size": { type: "string" },
      "crypto-workers": { type: "string" },
      "log-level": { type: "string" },
      gateway: { type: "string" },
      "state-dir": { type: "string" },
      ...NATS_CLI_OPTIONS,
    },
    strict: true,
  });
  const sources = [values.gateway, values.config, values["ipsec-conf"]].filter((v) => v !== undefined).length;
  if (sources !== 1) throw new UsageError("give exactly one of --gateway (fleet mode), --config and --ipsec-conf");
  if (values["state-dir"] && !values.gateway) throw new UsageError("--state-dir goes with --gateway");
  if (values["ipsec-secrets"] && !values["ipsec-conf"]) throw new UsageError("--ipsec-secrets goes with --ipsec-conf");
  const int = (name: string, v: string | undefined): number | undefined => {
    if (v === undefined) return undefined;
    const n = Number(v);
    if (!Number.isInteger(n)) throw new UsageError(`--${name} must be an integer`);
    return n;
  };
  const log = createLogger("ikeagent", values["log-level"] ? { level: values["log-level"] } : {});
  const addresses = values.address;
  const load = values.gateway
    ? undefined
    : values.config
      ? () => loadYamlConfig(values.config!)
      : () => loadIpsecConf(values["ipsec-conf"]!, values["ipsec-secrets"], addresses);
  const gateway = values.gateway;
  const fleetMode = gateway
    ? async (engine: Engine, ctx: { log: Logger; registry: Registry }) => {
        const nats = natsOptionsFromCli(values, `ikeagent-${gateway}`);
        const client = await runFleetClient({
          natsUrl: nats.servers,
          gateway,
          stateDir: values["state-dir"] ?? AGENT_STATE_DIR,
          credentials: nats,
          engine,
          log: ctx.log,
          registry: ctx.registry,
        });
        return () => client.stop();
      }
    : undefined;
  const rt = int("retransmit-timeout", values["retransmit-timeout"]);
  const tries = int("retransmit-tries", values["retransmit-tries"]);
  const agent = await startAgent({
    ...(load ? { load } : {}),
    ...(fleetMode ? { fleet: fleetMode } : {}),
    dataplane: values.dataplane ?? DATAPLANE_SOCKET,
    ...(values["control-socket"] !== undefined ? { controlSocket: values["control-socket"] } : {}),
    ...(int("metrics-port", values["metrics-port"]) !== undefined ? { metricsPort: int("metrics-port", values["metrics-port"])! } : {}),
    ...(values["metrics-host"] ? { metricsHost: values["metrics-host"] } : {}),
    ...(addresses ? { addresses } : {}),
    ...(int("ike-port", values["ike-port"]) !== undefined ? { ikePort: int("ike-port", values["ike-port"])! } : {}),
    ...(int("natt-port", values["natt-port"]) !== undefined ? { nattPort: int("natt-port", values["natt-port"])! } : {}),
    ...(rt !== undefined || tries !== undefined ? { retransmit: { timeoutMs: rt ?? 4000, base: 1.8, tries: tries ?? 5 } } : {}),
    deleteOnStop: !!values["delete-on-exit"],
    ...(int("keepalive-seconds", values["keepalive-seconds"]) !== undefined ? { keepaliveSeconds: int("keepalive-seconds", values["keepalive-seconds"])! } : {}),
    ...(int("fragment-size", values["fragment-size"]) !== undefined ? { fragmentSize: int("fragment-size", values["fragment-size"])! } : {}),
    ...(int("crypto-workers", values["crypto-workers"]) !== undefined ? { cryptoWorkers: int("crypto-workers", values["crypto-workers"])! } : {}),
    log,
  });
  log.info("ikeagent running");
  return new Promise<number>((resolve) => {
    const stop = (sig: string) => {
      log.info({ signal: sig }, "stopping");
      void agent.stop().then(() => resolve(0));
    };
    process.once("SIGTERM", () => stop("SIGTERM"));
    process.once("SIGINT", () => stop("SIGINT"));
    process.on("SIGHUP", () => {
      agent.reload().catch((err: Error) => log.error({ err: err.message }, "reload failed; the previous configuration stays in force"));
    });
  });
}

// ------------------------------------------------------------------ client --

const CLIENT_USAGE = `usage: fleetswan agent COMMAND [NAME] [--socket PATH] [--wait] [--timeout MS] [--json]

Talks to the local ikeagent's control socket (default ${IKEAGENT_SOCKET}).

  status [NAME]     IKE and CHILD SAs (like swanctl --list-sas)
  conns             connections and their state (like swanctl --list-conns)
  up NAME           initiate (waits for the result with --wait)
  down NAME         delete the IKE SA and its CHILD SAs
  route NAME        install trap policies: traffic starts negotiation
  unroute NAME      remove trap policies
  reload            re-read the configuration file
  diag              redacted diagnostics bundle (JSON)
`;

function call<Req, Res>(client: ikeagent.IkeAgentClient, method: string, req: Req, timeoutMs: number): Promise<Res> {
  return new Promise((resolve, reject) => {
    (client as unknown as Record<string, (r: Req, m: Metadata, o: { deadline: Date }, cb: (e: ServiceError | null, res: Res) => void) => void>)[method]!.call(client, req, new Metadata(), { deadline: new Date(Date.now() + timeoutMs) }, (err, res) => (err ? reject(err) : resolve(res)));
  });
}

const ago = (d: Date | undefined): string => (d ? `${Math.max(0, Math.round((Date.now() - d.getTime()) / 1000))}s ago` : "-");

/** swanctl --list-sas style text. */
export function formatSas(res: ikeagent.ListSasResponse): string {
  const out: string[] = [];
  for (const sa of res.ikeSas) {
    out.push(`${sa.name}: #${sa.uniqueId}, ${ikeagent.ikeSaStateToJSON(sa.state).replace("IKE_SA_STATE_", "")}, IKEv2, ${sa.initiatorSpi}_i${sa.initiator ? "*" : ""} ${sa.responderSpi}_r${sa.initiator ? "" : "*"}`);
    out.push(`  local  '${sa.localId}' @ ${sa.localAddress}[${sa.localPort}]${sa.natLocal ? " [NAT]" : ""}`);
    out.push(`  remote '${sa.remoteId}' @ ${sa.remoteAddress}[${sa.remotePort}]${sa.natRemote ? " [NAT]" : ""}`);
    if (sa.algorithms) out.push(`  ${sa.algorithms}`);
    out.push(`  established ${ago(sa.establishedAt)}${sa.rekeyInSeconds ? `, rekeying in ${sa.rekeyInSeconds}s` : ""}`);
    for (const c of sa.children) {
      out.push(`  ${c.name}: #${c.uniqueId}, ${ikeagent.childSaStateToJSON(c.state).replace("CHILD_SA_STATE_", "")}, ${c.mode}${c.udpEncap ? "-in-UDP" : ""}, ESP:${c.algorithms}`);
      out.push(`    installed ${ago(c.installedAt)}${c.rekeyInSeconds ? `, rekeying in ${c.rekeyInSeconds}s` : ""}${c.expiresInSeconds ? `, expires in ${c.expiresInSeconds}s` : ""}`);
      out.push(`    in  ${c.spiIn.toString(16).padStart(8, "0")}, ${c.bytesIn} bytes, ${c.packetsIn} packets`);
      out.push(`    out ${c.spiOut.toString(16).padStart(8, "0")}, ${c.bytesOut} bytes, ${c.packetsOut} packets`);
      out.push(`    local  ${c.localTs.join(" ")}`);
      out.push(`    remote ${c.remoteTs.join(" ")}`);
    }
  }
  return out.join("\n");
}

async function runClient(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    options: { socket: { type: "string" }, wait: { type: "boolean" }, timeout: { type: "string" }, json: { type: "boolean" } },
    allowPositionals: true,
    strict: true,
  });
  const [verb, name] = positionals;
  if (!verb) throw new UsageError("missing COMMAND");
  const socket = values.socket ?? IKEAGENT_SOCKET;
  const timeout = values.timeout ? Number(values.timeout) : 30000;
  const client = new ikeagent.IkeAgentClient(`unix://${socket}`, credentials.createInsecure());
  const print = (o: unknown): void => void process.stdout.write(JSON.stringify(o, (_k, v) => (typeof v === "bigint" ? v.toString() : v), 2) + "\n");
  try {
    switch (verb) {
      case "status": {
        const res = await call<ikeagent.ListSasRequest, ikeagent.ListSasResponse>(client, "listSas", { connection: name ?? "" }, timeout);
        if (values.json) print(ikeagent.ListSasResponse.toJSON(res));
        else process.stdout.write((formatSas(res) || "no IKE SAs") + "\n");
        return 0;
      }
      case "conns": {
        const res = await call<ikeagent.ListConnectionsRequest, ikeagent.ListConnectionsResponse>(client, "listConnections", {}, timeout);
        if (values.json) print(ikeagent.ListConnectionsResponse.toJSON(res));
        else for (const c of res.connections) process.stdout.write(`${c.name}: ${c.startAction}${c.routed ? ", routed" : ""}, ${c.established} IKE SA(s)${c.lastErrorCode ? `, last error ${c.lastErrorCode}: ${c.lastError}` : ""}\n`);
        return 0;
      }
      case "up":
      case "down":
      case "route":
      case "unroute": {
        if (!name) throw new UsageError(`${verb} needs a connection NAME`);
        const method = { up: "initiate", down: "terminate", route: "route", unroute: "unroute" }[verb];
        const res = await call<ikeagent.ConnectionCommand, ikeagent.CommandResult>(client, method, { connection: name, wait: !!values.wait, timeoutMs: timeout }, timeout + 2000);
        if (values.json) print(res);
        else process.stdout.write(`${res.ok ? "ok" : `failed ${res.code}`}: ${res.message}\n`);
        return res.ok ? 0 : 1;
      }
      case "reload": {
        const res = await call<ikeagent.ReloadConfigRequest, ikeagent.ReloadConfigResponse>(client, "reloadConfig", {}, timeout);
        print(ikeagent.ReloadConfigResponse.toJSON(res));
        return 0;
      }
      case "diag": {
        const res = await call<ikeagent.GetDiagnosticsRequest, ikeagent.Diagnostics>(client, "getDiagnostics", { logLines: 200 }, timeout);
        print(ikeagent.Diagnostics.toJSON(res));
        return 0;
      }
      default:
        throw new UsageError(`unknown agent command "${verb}"`);
    }
  } catch (err) {
    if (err instanceof UsageError) throw err;
    const e = err as ServiceError;
    process.stderr.write(`fleetswan agent ${verb}: ${e.details || e.message} (socket ${socket})\n`);
    return 1;
  } finally {
    client.close();
  }
}

export const agentCommands: CliCommand[] = [
  { name: "ikeagent", summary: "Run the IKEv2 agent (fleet mode over NATS, or standalone from agent.yaml or ipsec.conf)", usage: AGENT_USAGE, run: runAgent },
  { name: "agent", summary: "Talk to the local ikeagent: status, up, down, route, unroute, reload, diag", usage: CLIENT_USAGE, run: runClient },
];
