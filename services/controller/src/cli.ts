import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";
import { stringify } from "yaml";
import { METRICS_PORT, UsageError, createLogger, createRegistry, startMetricsServer, type CliCommand } from "@fleetswan/common";
import { controller as api, fleet } from "@fleetswan/proto";
import { Controller } from "./controller.js";
import { connectNats, natsOptionsFromCli } from "@fleetswan/common";
import { ControllerClient, NATS_OPTIONS, NATS_USAGE, throwIf, type NatsArgs } from "./client.js";
import { DEFAULT_OPTIONS } from "./spec/compile.js";

function parse<T extends Record<string, { type: "string" | "boolean"; short?: string }>>(argv: string[], options: T) {
  try {
    return parseArgs({ args: argv, options: { ...NATS_OPTIONS, ...options }, allowPositionals: true, strict: true });
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
}

async function withClient<R>(a: NatsArgs, fn: (c: ControllerClient) => Promise<R>): Promise<R> {
  const nc = await connectNats(natsOptionsFromCli(a, "fleetswan-cli", { inboxPrefix: "_INBOX.operator" }));
  try {
    return await fn(new ControllerClient(nc));
  } finally {
    await nc.close();
  }
}

const out = (s: string): void => void process.stdout.write(s.endsWith("\n") ? s : s + "\n");
const err = (s: string): void => void process.stderr.write(s.endsWith("\n") ? s : s + "\n");

/** "gw-a: + a--b  ~ a--c  - old" lines. */
export function formatChanges(changes: api.GatewayChange[]): string {
  if (changes.length === 0) return "  no gateway changes\n";
  const w = Math.max(...changes.map((c) => c.gateway.length));
  return changes.map((c) => {
    const parts = [...c.added.map((n) => `+${n}`), ...c.changed.map((n) => `~${n}`), ...c.removed.map((n) => `-${n}`)];
    return `  ${c.gateway.padEnd(w)}  ${parts.join(" ")}`;
  }).join("\n") + "\n";
}

function printRejected(r: api.ApplySpecResponse, verb: string): number {
  const e = r.error!;
  err(`fleetswan ${verb}: ${e.code === "CONFIG_INVALID" ? "the spec is invalid; nothing was applied" : `error ${e.code}: ${e.message}`}`);
  for (const l of e.locations) err(`  ${l}`);
  return 1;
}

const applyCmd: CliCommand = {
  name: "apply",
  summary: "Validate and store a fleet spec; print what changed per gateway",
  usage: `usage: fleetswan apply FILE [--base-revision N | --force]

Validates FILE (docs/fleet-spec.md) and stores it as a new spec revision; the controller
renders every gateway's view. Without --base-revision the change is based on the
revision current when the command starts. --base-revision N refuses the change if the
spec is no longer at N (optimistic concurrency: scripts take N from \`fleetswan diff\`).
--force applies on top of whatever is current.
${NATS_USAGE}`,
  async run(argv) {
    const { values, positionals } = parse(argv, { "base-revision": { type: "string" }, force: { type: "boolean" } });
    if (positionals.length !== 1) throw new UsageError("expected one FILE");
    if (values.force && values["base-revision"]) throw new UsageError("--force and --base-revision exclude each other");
    const file = positionals[0]!;
    const text = readFileSync(file, "utf8");
    return withClient(values, async (c) => {
      let base: bigint;
      if (values["base-revision"] !== undefined) {
        if (!/^\d+$/.test(values["base-revision"])) throw new UsageError("--base-revision takes a number");
        base = BigInt(values["base-revision"]);
      } else base = values.force ? 0n : (await c.getSpec()).revision;
      const r = await c.apply({ specYaml: text, sourceName: file, baseRevision: base, force: !!values.force });
      if (r.error?.code) return printRejected(r, "apply");
      for (const w of r.warnings) err(`warning: ${w}`);
      out(`applied revision ${r.revision} (based on ${values.force ? "current, forced" : base})`);
      process.stdout.write(formatChanges(r.changes));
      return 0;
    });
  },
};

const diffCmd: CliCommand = {
  name: "diff",
  summary: "Show what applying a fleet spec would change per gateway",
  usage: `usage: fleetswan diff FILE

Validates FILE and prints, per gateway, the connections an apply would add (+), change (~)
and remove (-), and the current revision (use it with apply --base-revision).
Exit status: 0 no changes, 3 changes, 1 invalid.
${NATS_USAGE}`,
  async run(argv) {
    const { values, positionals } = parse(argv, {});
    if (positionals.length !== 1) throw new UsageError("expected one FILE");
    const file = positionals[0]!;
    const text = readFileSync(file, "utf8");
    return withClient(values, async (c) => {
      const r = await c.diff({ specYaml: text, sourceName: file });
      if (r.error?.code) return printRejected(r, "diff");
      for (const w of r.warnings) err(`warning: ${w}`);
      out(`current revision ${r.revision}`);
      process.stdout.write(formatChanges(r.changes));
      return r.changes.length ? 3 : 0;
    });
  },
};

const ago = (d: Date | undefined, now: number): string => {
  if (!d) return "-";
  const s = Math.max(0, Math.round((now - d.getTime()) / 1000));
  return s < 120 ? `${s}s ago` : s < 7200 ? `${Math.round(s / 60)}m ago` : `${Math.round(s / 3600)}h ago`;
};

function table(rows: string[][]): string {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  return rows.map((r) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]!))).join("  ").trimEnd()).join("\n") + "\n";
}

export function formatStatus(s: api.FleetStatus, now = Date.now()): string {
  const gw = [["GATEWAY", "STATE", "LAST SEEN", "APPLIED", "LAG", "IKE SAS", "CHILD SAS", "ERROR"]];
  for (const g of s.gateways) gw.push([g.name, g.state, ago(g.lastSeen, now), String(g.appliedRevision), String(g.revisionLag), String(g.ikeSas), String(g.childSas), g.applyError]);
  const cn = [["CONNECTION", "GATEWAY", "PEER", "DESIRED", "STATE", "LAST ERROR"]];
  for (const c of s.connections) cn.push([c.name, c.gateway, c.peer, c.desired, c.state, c.lastErrorCode ? `${c.lastErrorCode}: ${c.lastError}` : ""]);
  const up = s.connections.filter((c) => c.state === "up").length;
  return `spec revision ${s.revision}: ${s.gateways.filter((g) => g.state === "up").length}/${s.gateways.length} gateways up, ${up}/${s.connections.length} connection ends established\n\n${table(gw)}\n${table(cn)}`;
}

const statusCmd: CliCommand = {
  name: "status",
  summary: "Show the fleet: gateways and connections as the agents report them",
  usage: `usage: fleetswan status [--json]
${NATS_USAGE}`,
  async run(argv) {
    const { values, positionals } = parse(argv, { json: { type: "boolean" } });
    if (positionals.length) throw new UsageError("unexpected arguments");
    return withClient(values, async (c) => {
      const s = await c.status();
      if (values.json) out(JSON.stringify(api.FleetStatus.toJSON(s), null, 2));
      else process.stdout.write(formatStatus(s));
      return 0;
    });
  },
};

function printCommandResults(r: api.ConnectionCommandResponse, verb: string, target: string): number {
  throwIf(r.error);
  let ok = true;
  for (const g of r.results) {
    ok &&= g.ok;
    out(`${g.gateway}: ${g.ok ? "ok" : `failed ${g.code}`}${g.message ? `: ${g.message}` : ""}`);
  }
  if (!r.results.length) err(`${verb} ${target}: no gateway to send to`);
  return ok && r.results.length ? 0 : 1;
}

const connCmd: CliCommand = {
  name: "conn",
  summary: "Bring a connection up or down, route or unroute it (through the agents)",
  usage: `usage: fleetswan conn up|down|route|unroute NAME [--timeout SECONDS]

up: the connection's first gateway initiates; down, route, unroute: both ends act.
${NATS_USAGE}`,
  async run(argv) {
    const { values, positionals } = parse(argv, { timeout: { type: "string" } });
    const [verb, name, ...rest] = positionals;
    if (!verb || !["up", "down", "route", "unroute"].includes(verb) || !name || rest.length) throw new UsageError("expected up|down|route|unroute NAME");
    const timeoutMs = values.timeout ? Number(values.timeout) * 1000 : 0;
    return withClient(values, async (c) => printCommandResults(await c.command(verb, name, timeoutMs), verb, name));
  },
};

const barfCmd: CliCommand = {
  name: "barf",
  summary: "Collect a redacted diagnostics bundle from a gateway's agent",
  usage: `usage: fleetswan barf GATEWAY [--timeout SECONDS]

Prints the bundle (view, SAs, policies, recent log lines, counters; secrets redacted) as JSON.
${NATS_USAGE}`,
  async run(argv) {
    const { values, positionals } = parse(argv, { timeout: { type: "string" } });
    if (positionals.length !== 1) throw new UsageError("expected GATEWAY");
    return withClient(values, async (c) => {
      const r = await c.command("barf", positionals[0]!, values.timeout ? Number(values.timeout) * 1000 : 30_000);
      throwIf(r.error);
      const g = r.results[0];
      if (!g?.ok) {
        err(`barf ${positionals[0]}: ${g ? `${g.code}: ${g.message}` : "no answer"}`);
        return 1;
      }
      out(g.bodyJson);
      return 0;
    });
  },
};

const gatewayCmd: CliCommand = {
  name: "gateway",
  summary: "Gateway administration: enroll NAME prints a one-time bootstrap token",
  usage: `usage: fleetswan gateway enroll NAME [--ttl SECONDS]

Creates a one-time token for the gateway NAME of the current spec (default lifetime 3600 s).
Give it to \`fleetswan agent --enroll-token\` on that host; it is shown only once.
${NATS_USAGE}`,
  async run(argv) {
    const { values, positionals } = parse(argv, { ttl: { type: "string" } });
    const [sub, name, ...rest] = positionals;
    if (sub !== "enroll" || !name || rest.length) throw new UsageError("expected enroll NAME");
    return withClient(values, async (c) => {
      const r = await c.enroll(name, values.ttl ? Number(values.ttl) : 0);
      throwIf(r.error);
      out(r.token);
      err(`token for ${name}, valid until ${r.expiresAt?.toISOString()}; it is shown only once`);
      return 0;
    });
  },
};

const DPD_NAMES: Record<number, string> = { [fleet.DpdAction.DPD_ACTION_CLEAR]: "clear", [fleet.DpdAction.DPD_ACTION_TRAP]: "trap", [fleet.DpdAction.DPD_ACTION_RESTART]: "restart" };
const START_NAMES: Record<number, string> = { [fleet.StartAction.START_ACTION_ADD]: "add", [fleet.StartAction.START_ACTION_START]: "start", [fleet.StartAction.START_ACTION_ROUTE]: "route" };

/**
 * ipsec.conf connections (oriented: local first) -> a fleet spec with one gateway and an
 * external peer per connection. `psk(ref)` gives the PSK text for a secret_ref.
 */
export function importToSpec(defs: fleet.ConnectionDef[], gateway: string, psk: (ref: string) => string | undefined): Record<string, unknown> {
  const addresses = [...new Set(defs.flatMap((d) => d.local?.addresses ?? []).filter((a) => a && a !== "%any" && !a.startsWith("%")))];
  const subnetCount = new Map<string, number>();
  for (const d of defs) for (const s of d.local?.subnets ?? []) subnetCount.set(s, (subnetCount.get(s) ?? 0) + 1);
  const ids = [...new Set(defs.map((d) => d.local?.id ?? "").filter(Boolean))];
  const gwSubnets = defs.length ? (defs[0]!.local?.subnets ?? []) : [];
  const gw: Record<string, unknown> = { name: gateway, addresses: addresses.length ? addresses : ["192.0.2.1"] };
  if (ids.length === 1 && ids[0] !== addresses[0]) gw.id = ids[0];
  if (gwSubnets.length) gw.subnets = gwSubnets;
  const peers = defs.map((d) => {
    const p: Record<string, unknown> = { name: d.name, gateway, address: d.remote?.addresses[0] ?? "%any" };
    if (d.remote?.id && d.remote.id !== p.address) p.id = d.remote.id;
    const auth = d.remote?.auth === fleet.AuthMethod.AUTH_METHOD_PUBKEY ? "pubkey" : "psk";
    if (auth !== DEFAULT_OPTIONS.auth) p.auth = auth;
    if (auth === "psk" && d.secretRef) {
      const v = psk(d.secretRef);
      if (v !== undefined) p.psk = v;
    }
    if (d.remote?.caPem) p.ca = d.remote.caPem;
    if (d.remote?.port && d.remote.port !== 500) p.port = d.remote.port;
    if (d.remote?.subnets.length) p.subnets = d.remote.subnets;
    if (JSON.stringify(d.local?.subnets ?? []) !== JSON.stringify(gwSubnets)) p.local_subnets = d.local?.subnets ?? [];
    if (d.ikeProposals.length) p.ike_proposals = d.ikeProposals;
    if (d.espProposals.length) p.esp_proposals = d.espProposals;
    const num = (key: string, v: number, def: number): void => { if (v && v !== def) p[key] = v; };
    num("ike_lifetime", d.ikeLifetimeSeconds, DEFAULT_OPTIONS.ikeLifetime);
    num("child_lifetime", d.childLifetimeSeconds, DEFAULT_OPTIONS.childLifetime);
    num("rekey_margin", d.rekeyMarginSeconds, DEFAULT_OPTIONS.rekeyMargin);
    if (d.rekeyFuzzPercent !== DEFAULT_OPTIONS.rekeyFuzz) p.rekey_fuzz = d.rekeyFuzzPercent;
    if (d.keyingTries !== DEFAULT_OPTIONS.keyingTries) p.keying_tries = d.keyingTries;
    const dpd: Record<string, unknown> = {};
    if (d.dpdDelaySeconds !== DEFAULT_OPTIONS.dpdDelay) dpd.delay = d.dpdDelaySeconds;
    if (d.dpdTimeoutSeconds && d.dpdTimeoutSeconds !== DEFAULT_OPTIONS.dpdTimeout) dpd.timeout = d.dpdTimeoutSeconds;
    const act = DPD_NAMES[d.dpdAction];
    if (act && act !== DEFAULT_OPTIONS.dpdAction) dpd.action = act;
    if (Object.keys(dpd).length) p.dpd = dpd;
    const start = START_NAMES[d.startAction];
    if (start && start !== DEFAULT_OPTIONS.start) p.start = start;
    if (d.mode && d.mode !== "tunnel") p.mode = d.mode;
    if (d.forceEncap) p.encapsulation = "force";
    if (!d.uniqueIds) p.unique_ids = false;
    if (d.replayWindow && d.replayWindow !== DEFAULT_OPTIONS.replayWindow) p.replay_window = d.replayWindow;
    if (d.mark) p.mark = d.mark;
    return p;
  });
  return { version: 1, gateways: [gw], peers };
}

const importCmd: CliCommand = {
  name: "import",
  summary: "Turn an ipsec.conf (and ipsec.secrets) into a fleet spec (YAML on stdout)",
  usage: `usage: fleetswan import IPSEC.CONF [IPSEC.SECRETS] [--gateway NAME] [--local ADDR,...]

Reads a FreeS/WAN / Libreswan ipsec.conf (left = this host unless --local names this
host's addresses) and prints a fleet spec with one gateway (NAME, default "gw") and one
external peer per conn. PSKs from IPSEC.SECRETS are copied into the output: keep it safe,
\`fleetswan apply\` moves them into keymgr. The output is checked as \`fleetswan apply\`
would check it; problems go to stderr (exit 1).`,
  async run(argv) {
    const { values, positionals } = parse(argv, { gateway: { type: "string" }, local: { type: "string" } });
    if (positionals.length < 1 || positionals.length > 2) throw new UsageError("expected IPSEC.CONF [IPSEC.SECRETS]");
    const { loadIpsecConfig } = await import("@fleetswan/ipsecconf");
    const cfg = loadIpsecConfig(positionals[0]!, positionals[1], values.local?.split(","));
    const spec = importToSpec(cfg.connections, values.gateway ?? "gw", (ref) => cfg.secrets.get(ref)?.value.reveal().toString("utf8"));
    const text = `# fleetswan fleet spec imported from ${positionals[0]}${positionals[1] ? ` and ${positionals[1]}` : ""}\n` + stringify(spec, { lineWidth: 0 });
    out(text);
    for (const n of cfg.ignored) err(`note: conn ${n} has auto=ignore (or no auto=) and was not imported`);
    const { compileSpec, SpecInvalidError } = await import("./spec/compile.js");
    try {
      const f = await compileSpec(text, "(imported spec)", async () => { throw new Error("not resolved during import"); });
      for (const w of f.warnings) err(`warning: ${w}`);
      return 0;
    } catch (e) {
      if (!(e instanceof SpecInvalidError)) throw e;
      err("the imported spec needs changes before `fleetswan apply` accepts it:");
      for (const l of e.errors) err(`  ${l}`);
      return 1;
    }
  },
};

const controllerCmd: CliCommand = {
  name: "controller",
  summary: "Run the controller service (spec revisions, views, fleet status, commands)",
  usage: `usage: fleetswan controller [--metrics-port N] [--replicas N] [--orphan-grace-seconds N]

Stateless: run as many replicas as you like against one NATS (cluster).
--metrics-port N   /metrics, /healthz, /readyz (default ${METRICS_PORT.controller})
--replicas N       KV replicas of the buckets it creates (default 1; 3 in a NATS cluster)
--orphan-grace-seconds N
                   delete a secret the spec no longer uses from keymgr this long after it
                   became unused (default 86400; a revision that uses it again cancels)
${NATS_USAGE}`,
  async run(argv) {
    const { values, positionals } = parse(argv, { "metrics-port": { type: "string" }, replicas: { type: "string" }, "orphan-grace-seconds": { type: "string" } });
    if (positionals.length) throw new UsageError("unexpected arguments");
    const grace = values["orphan-grace-seconds"];
    if (grace !== undefined && !/^\d+$/.test(grace)) throw new UsageError(`--orphan-grace-seconds: "${grace}" is not a number of seconds`);
    const log = createLogger("controller");
    const registry = createRegistry("controller");
    const nc = await connectNats(natsOptionsFromCli(values, "fleetswan-controller", { retryForever: true }));
    const ctl = new Controller({ nc, log, registry, replicas: values.replicas ? Number(values.replicas) : 1, ...(grace !== undefined ? { orphanGraceMs: Number(grace) * 1000 } : {}) });
    await ctl.start();
    const metrics = await startMetricsServer({
      registry,
      port: values["metrics-port"] ? Number(values["metrics-port"]) : METRICS_PORT.controller,
      ready: () => (ctl.ready ? { ok: true } : { ok: false, reason: "not connected to NATS" }),
    });
    log.info({ metricsPort: metrics.port }, "controller running");
    await new Promise<void>((resolve) => {
      for (const sig of ["SIGINT", "SIGTERM"] as const) process.once(sig, () => resolve());
      void nc.closed().then(() => resolve());
    });
    await ctl.stop();
    await metrics.close();
    if (!nc.isClosed()) await nc.drain();
    return 0;
  },
};

export const commands: CliCommand[] = [controllerCmd, applyCmd, diffCmd, statusCmd, connCmd, barfCmd, gatewayCmd, importCmd];
