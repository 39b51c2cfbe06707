/**
 * The lab: a LabConfig brought to life. `up()` creates the namespaces, starts NATS, the
 * controller, keymgr, the strongSwan peer and every gateway's dataplane + ikeagent,
 * applies the fleet spec, enrolls the gateways, waits until every tunnel is up and pings
 * through each one. Daemons are detached, with pid files and logs under the state dir, so
 * the lab outlives the command; `down()` removes every process and namespace.
 *
 * The e2e tests (test/e2e) drive the same class: start/stop/kill/restart one daemon,
 * apply spec variants, read `fleetswan status --json`, run traffic.
 */
import { execFileSync } from "node:child_process";
import { chmodSync, existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import {
  DATAPLANE_METRICS_PORT, IKEAGENT_METRICS_PORT, fleetGateways, gatewayByName, gatewayDir, logFile, logsDir, mgmtHostAddr,
  natsUrl, nsGateway, nsHost, nsTransit, peerGateways, pidFile, type LabConfig, type LabGateway,
} from "./model.js";
import { labTunnels, renderLabSpec, type LabTunnel, type SpecOptions, type Topology } from "./spec.js";
import { CHARON, SWANCTL, charonPaths, renderStrongswanConf, renderSwanctlConf, type PeerConnOptions } from "./strongswan.js";
import { createTopology, destroyTopology, pidsInNamespaces, topologyState } from "./topology.js";
import { ping, type PingResult } from "./traffic.js";
import { inNs, isAlive, killPid, readPid, rmrf, run, spawnDaemon, stopPid, tail, waitFor, type RunResult } from "./util.js";

export const NATS_SERVER = process.env.FLEETSWAN_NATS_SERVER ?? "/usr/sbin/nats-server";

/** What `fleetswan status --json` prints (controller.v1.FleetStatus as JSON). */
export interface FleetStatusJson {
  revision?: string;
  gateways?: { name: string; state: string; appliedRevision?: string; revisionLag?: string; ikeSas?: number; childSas?: number; applyError?: string }[];
  connections?: { name: string; gateway: string; peer: string; desired: string; state: string; lastErrorCode?: string; lastError?: string }[];
}

export interface InstalledSa {
  connection: string;
  spi: string;
  dst: string;
  direction: string;
  encryption: string;
}

/** One daemon of the lab, as stored in state.json (so any process can restart it). */
export interface DaemonDef {
  name: string;
  argv: string[];
  /** Extra environment. */
  env?: Record<string, string>;
  /** Kind, for readiness checks. */
  kind: "nats" | "controller" | "keymgr" | "dataplane" | "ikeagent" | "charon";
  gateway?: string;
}

export interface LabState {
  config: LabConfig;
  topology: Topology;
  daemons: DaemonDef[];
  createdAt: string;
}

export interface UpOptions {
  /** Fleet spec file to apply (default: rendered from the config; lab/fleet.yaml for the default lab). */
  specFile?: string;
  specOptions?: SpecOptions;
  peerOptions?: PeerConnOptions;
  topology?: Topology;
  /** Wait for all tunnels and ping through them (default true). */
  verify?: boolean;
  /** Timeout for all tunnels up (default 90 s). */
  tunnelTimeoutMs?: number;
  /** Progress lines. */
  step?: (msg: string) => void;
}

/** Timeouts grow inside User-Mode Linux (every syscall is traced; node starts slowly). */
const SLOW = process.env.FLEETSWAN_IN_UML === "1" ? 6 : 1;

const FLEETSWAN_BIN = (c: LabConfig): string => join(c.repoDir, "bin", "fleetswan.js");

export class Lab {
  readonly c: LabConfig;
  topology: Topology;
  daemons: DaemonDef[];

  constructor(c: LabConfig, topology: Topology = "mesh") {
    this.c = c;
    this.topology = topology;
    this.daemons = [];
  }

  static stateFile(stateDir: string): string {
    return join(stateDir, "state.json");
  }

  /** The lab recorded in `stateDir`, if any. */
  static load(stateDir: string): Lab | undefined {
    const f = Lab.stateFile(stateDir);
    if (!existsSync(f)) return undefined;
    const s = JSON.parse(readFileSync(f, "utf8")) as LabState;
    const lab = new Lab(s.config, s.topology);
    lab.daemons = s.daemons;
    return lab;
  }

  save(): void {
    mkdirSync(this.c.stateDir, { recursive: true });
    const s: LabState = { config: this.c, topology: this.topology, daemons: this.daemons, createdAt: new Date().toISOString() };
    writeFileSync(Lab.stateFile(this.c.stateDir), JSON.stringify(s, null, 2) + "\n");
  }

  get tunnels(): LabTunnel[] {
    return labTunnels(this.c, this.topology);
  }

  gw(name: string): LabGateway {
    return gatewayByName(this.c, name);
  }

  /** Namespace of "gw-a", "a" (the gateway), "host-a" (its site host) or "transit". */
  ns(node: string): string {
    if (node === "transit") return nsTransit(this.c);
    const m = node.match(/^host-(.+)$/);
    if (m) return nsHost(this.c, this.gw(m[1]!));
    return nsGateway(this.c, this.gw(node));
  }

  exec(node: string, argv: readonly string[], opts: { allowFail?: boolean; timeoutMs?: number } = {}): Promise<RunResult> {
    return run(inNs(this.ns(node), argv), opts);
  }

  /** Environment for the fleetswan CLI against this lab's NATS. */
  get env(): NodeJS.ProcessEnv {
    return { ...process.env, FLEETSWAN_NATS_URL: natsUrl(this.c) };
  }

  /** Run `fleetswan ARGS...` (the CLI of this checkout) against the lab. */
  fleetswan(args: readonly string[], opts: { allowFail?: boolean; timeoutMs?: number; input?: string } = {}): Promise<RunResult> {
    return run([process.execPath, FLEETSWAN_BIN(this.c), ...args], { env: this.env, timeoutMs: (opts.timeoutMs ?? 60_000) * SLOW, allowFail: opts.allowFail, input: opts.input });
  }

  async fleetStatus(): Promise<FleetStatusJson> {
    const r = await this.fleetswan(["status", "--json"], { timeoutMs: 20_000 });
    return JSON.parse(r.stdout) as FleetStatusJson;
  }

  /** Write a spec and `fleetswan apply` it; returns the CLI output. */
  async apply(specText: string, name = "applied.yaml"): Promise<RunResult> {
    const f = join(this.c.stateDir, name);
    writeFileSync(f, specText);
    const r = await this.fleetswan(["apply", f], { allowFail: true });
    if (r.code !== 0) throw new Error(`fleetswan apply ${f} failed (exit ${r.code}):\n${r.stdout}${r.stderr}`);
    return r;
  }

  renderSpec(o: SpecOptions = {}): string {
    return renderLabSpec(this.c, { topology: this.topology, ...o });
  }

  /**
   * The SAs a fleet gateway's dataplane holds (from its persisted desired state; key
   * material is not returned): connection, SPI (hex), direction, encryption.
   */
  installedSas(gateway: string): InstalledSa[] {
    const f = join(gatewayDir(this.c, this.gw(gateway)), "dataplane-state.json");
    if (!existsSync(f)) return [];
    const st = JSON.parse(readFileSync(f, "utf8")) as { sas?: Record<string, any>[] };
    return (st.sas ?? []).map((s) => ({
      connection: String(s.connection ?? ""),
      spi: Number(s.id?.spi ?? 0).toString(16).padStart(8, "0"),
      dst: String(s.id?.dst ?? ""),
      direction: String(s.direction ?? ""),
      encryption: String(s.encryption ?? ""),
    }));
  }

  /** SPIs per connection on a fleet gateway (sorted), to compare before/after a change. */
  spisByConnection(gateway: string): Map<string, string[]> {
    const m = new Map<string, string[]>();
    for (const sa of this.installedSas(gateway)) {
      const k = sa.connection.split("/")[0]!;
      m.set(k, [...(m.get(k) ?? []), sa.spi].sort());
    }
    return m;
  }

  // ------------------------------------------------------------ daemons --

  daemon(name: string): DaemonDef {
    const d = this.daemons.find((x) => x.name === name);
    if (!d) throw new Error(`no daemon "${name}" in the lab (have ${this.daemons.map((x) => x.name).join(", ")})`);
    return d;
  }

  pid(name: string): number | undefined {
    return readPid(pidFile(this.c, name));
  }

  running(name: string): boolean {
    return isAlive(this.pid(name));
  }

  logOf(name: string): string {
    return logFile(this.c, name);
  }

  logTail(name: string, lines = 30): string {
    return tail(this.logOf(name), lines);
  }

  private define(d: DaemonDef): DaemonDef {
    const i = this.daemons.findIndex((x) => x.name === d.name);
    if (i >= 0) this.daemons[i] = d;
    else this.daemons.push(d);
    return d;
  }

  /** Start a defined daemon (no-op if it runs) and wait until it is ready. */
  async start(name: string, timeoutMs = 30_000): Promise<void> {
    timeoutMs *= SLOW;
    const d = this.daemon(name);
    if (!this.running(name)) {
      spawnDaemon({ argv: d.argv, env: { ...this.env, ...(d.env ?? {}) }, logFile: this.logOf(name), pidFile: pidFile(this.c, name), cwd: this.c.repoDir });
    }
    await this.waitReady(d, timeoutMs);
  }

  /** Graceful stop (SIGTERM, then SIGKILL after graceMs). */
  async stop(name: string, graceMs = 5000): Promise<void> {
    await stopPid(this.pid(name), graceMs);
  }

  /** kill -9. */
  async kill(name: string): Promise<void> {
    await killPid(this.pid(name));
  }

  async restart(name: string, timeoutMs = 30_000): Promise<void> {
    await this.stop(name);
    await this.start(name, timeoutMs);
  }

  private async httpOk(url: string): Promise<boolean> {
    const r = await fetch(url, { signal: AbortSignal.timeout(2000) });
    return r.status === 200;
  }

  private async waitReady(d: DaemonDef, timeoutMs: number): Promise<void> {
    const c = this.c;
    const alive = (): void => {
      if (!this.running(d.name)) throw new DaemonDied(d.name, this.logOf(d.name));
    };
    const probe = async (): Promise<boolean> => {
      alive();
      switch (d.kind) {
        case "nats":
          return this.httpOk(`http://127.0.0.1:${c.natsMonitorPort}/healthz?js-enabled-only=true`);
        case "controller":
          return this.httpOk(`http://127.0.0.1:${c.controllerMetricsPort}/readyz`);
        case "keymgr":
          return this.httpOk(`http://127.0.0.1:${c.keymgrMetricsPort}/readyz`);
        case "dataplane":
          return this.httpOk(`http://${this.gw(d.gateway!).mgmtAddr}:${DATAPLANE_METRICS_PORT}/healthz`);
        case "ikeagent":
          return this.httpOk(`http://${this.gw(d.gateway!).mgmtAddr}:${IKEAGENT_METRICS_PORT}/healthz`);
        case "charon": {
          const g = this.gw(d.gateway!);
          return (await this.swanctl(g, ["--stats"], { allowFail: true, timeoutMs: 5000 })).code === 0;
        }
      }
    };
    try {
      await waitFor(`${d.name} ready`, async () => {
        try {
          return await probe();
        } catch (e) {
          if (e instanceof DaemonDied) throw e;
          return false;
        }
      }, { timeoutMs, intervalMs: 150 });
    } catch (e) {
      if (e instanceof DaemonDied) throw e;
      throw new Error(`${(e as Error).message}\n--- ${this.logOf(d.name)}:\n${this.logTail(d.name)}`);
    }
  }

  /** swanctl against the charon of a strongSwan gateway. */
  swanctl(g: LabGateway, args: string[], opts: { allowFail?: boolean; timeoutMs?: number } = {}): Promise<RunResult> {
    const p = charonPaths(gatewayDir(this.c, g));
    return run([SWANCTL, ...args, "--uri", p.vici], { env: { ...process.env, STRONGSWAN_CONF: p.conf }, allowFail: opts.allowFail, timeoutMs: opts.timeoutMs ?? 30_000 });
  }

  /** (Re)write gw-c's swanctl.conf and load it. */
  async loadPeerConfig(g: LabGateway, o: PeerConnOptions = {}): Promise<void> {
    const p = charonPaths(gatewayDir(this.c, g));
    writeFileSync(p.swanctlConf, renderSwanctlConf(g, this.tunnels, { encap: this.c.backend !== "xfrm", ...o }));
    chmodSync(p.swanctlConf, 0o600);
    const r = await this.swanctl(g, ["--load-all", "--clear", "--file", p.swanctlConf], { allowFail: true });
    if (r.code !== 0) throw new Error(`swanctl --load-all on ${g.name} failed:\n${r.stdout}${r.stderr}`);
  }

  private defineAll(): void {
    const c = this.c;
    const bin = FLEETSWAN_BIN(c);
    const node = process.execPath;
    const natsConf = join(c.stateDir, "nats", "nats.conf");
    const fleetMode = ikeagentHasFleetMode(c);
    this.define({ name: "nats", kind: "nats", argv: [NATS_SERVER, "-c", natsConf] });
    this.define({ name: "controller", kind: "controller", argv: [node, bin, "controller", "--nats", natsUrl(c), "--metrics-port", String(c.controllerMetricsPort)] });
    this.define({
      name: "keymgr",
      kind: "keymgr",
      argv: [node, bin, "keymgr", "--nats", natsUrl(c), "--master-key-file", join(c.stateDir, "keymgr", "master.key"), "--metrics-port", String(c.keymgrMetricsPort)],
    });
    for (const g of peerGateways(c)) {
      const p = charonPaths(gatewayDir(c, g));
      // charon's pid file path is compiled in (/run/charon.pid): a private /run per daemon
      this.define({
        name: `${g.name}.charon`,
        kind: "charon",
        gateway: g.name,
        env: { STRONGSWAN_CONF: p.conf },
        argv: inNs(nsGateway(c, g), ["sh", "-c", `mount --bind '${p.run}' /run && exec '${CHARON}'`]),
      });
    }
    for (const g of fleetGateways(c)) {
      const dir = gatewayDir(c, g);
      const backend = c.backend;
      this.define({
        name: `${g.name}.dataplane`,
        kind: "dataplane",
        gateway: g.name,
        argv: inNs(nsGateway(c, g), [node, bin, "dataplane", "--backend", backend, "--socket", join(dir, "dataplane.sock"),
          "--state-file", join(dir, "dataplane-state.json"), "--metrics-port", String(DATAPLANE_METRICS_PORT), "--natt-port", "4500"]),
      });
      this.define({
        name: `${g.name}.ikeagent`,
        kind: "ikeagent",
        gateway: g.name,
        argv: inNs(nsGateway(c, g), ikeagentArgv(c, g, dir, fleetMode)),
      });
    }
  }

  // ------------------------------------------------------------ up/down --

  /** Bring the lab up (or, when it runs, start whatever died and verify). */
  async up(o: UpOptions = {}): Promise<void> {
    const step = o.step ?? (() => undefined);
    const c = this.c;
    if (o.topology) this.topology = o.topology;
    const topo = await topologyState(c);
    const existing = existsSync(Lab.stateFile(c.stateDir));
    if (existing && topo.missing.length === 0 && topo.bridge) {
      step(`lab "${c.instance}" is already up (${c.stateDir}): checking its daemons`);
      const saved = Lab.load(c.stateDir)!;
      this.daemons = saved.daemons;
      this.topology = saved.topology;
      for (const d of this.daemons) {
        if (!this.running(d.name)) {
          step(`${d.name} is not running: starting it`);
          await this.start(d.name);
          if (d.kind === "charon") await this.loadPeerConfig(this.gw(d.gateway!), o.peerOptions);
        }
      }
    } else {
      if (topo.present.length || topo.bridge || existing) {
        step(`removing the remains of an earlier lab "${c.instance}"`);
        await this.down();
      }
      await this.fresh(o, step);
    }
    if (o.verify !== false) {
      await this.waitAllUp((o.tunnelTimeoutMs ?? 90_000) * SLOW, step);
      await this.pingAll(step);
    }
  }

  private async fresh(o: UpOptions, step: (m: string) => void): Promise<void> {
    const c = this.c;
    // keep the previous run's logs for a post-mortem
    if (existsSync(logsDir(c))) {
      rmrf(`${logsDir(c)}.prev`);
      renameSync(logsDir(c), `${logsDir(c)}.prev`);
    }
    for (const d of ["run", "logs", "nats", "keymgr"]) mkdirSync(join(c.stateDir, d), { recursive: true });
    this.defineAll();
    this.save();

    step(`network: ${c.gateways.length} gateways, transit ${nsTransit(c)}, management bridge ${mgmtHostAddr(c)}/24`);
    await createTopology(c);

    step(`nats-server (JetStream) on ${natsUrl(c)}`);
    writeFileSync(join(c.stateDir, "nats", "nats.conf"), renderNatsConf(c));
    await this.start("nats");

    step("controller and keymgr");
    const mk = join(c.stateDir, "keymgr", "master.key");
    if (!existsSync(mk)) {
      const r = await this.fleetswan(["keymgr", "--generate-master-key"]);
      writeFileSync(mk, r.stdout.trim() + "\n", { mode: 0o600 });
    }
    await Promise.all([this.start("controller"), this.start("keymgr")]);

    const specFile = join(c.stateDir, "fleet.yaml");
    writeFileSync(specFile, o.specFile ? readFileSync(o.specFile, "utf8") : this.renderSpec(o.specOptions));
    step(`fleetswan apply ${specFile}`);
    const ar = await this.fleetswan(["apply", specFile], { allowFail: true });
    if (ar.code !== 0) throw new Error(`fleetswan apply failed (exit ${ar.code}):\n${ar.stdout}${ar.stderr}`);

    for (const g of peerGateways(c)) {
      step(`${g.name}: strongSwan charon (${c.backend === "xfrm" ? "kernel-netlink, kernel ESP" : "kernel-libipsec, encap"})`);
      const dir = gatewayDir(c, g);
      const p = charonPaths(dir);
      mkdirSync(p.run, { recursive: true });
      writeFileSync(p.conf, renderStrongswanConf(dir, c.backend === "xfrm"));
      await this.start(`${g.name}.charon`);
      await this.loadPeerConfig(g, o.peerOptions);
    }

    const fl = fleetGateways(c);
    step(`enrolling ${fl.map((g) => g.name).join(", ")}`);
    await pool(fl, 6, (g) => this.enroll(g));

    step(`starting dataplane (--backend ${c.backend}) and ikeagent on ${fl.map((g) => g.name).join(", ")}`);
    await pool(fl, 8, async (g) => {
      await this.start(`${g.name}.dataplane`, 60_000);
      await this.start(`${g.name}.ikeagent`, 60_000);
    });
  }

  /** A one-time token from `fleetswan gateway enroll`, handed to the agent in its state dir. */
  async enroll(g: LabGateway): Promise<void> {
    const dir = join(gatewayDir(this.c, g), "agent");
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    const r = await this.fleetswan(["gateway", "enroll", g.name], { allowFail: true });
    if (r.code !== 0) throw new Error(`fleetswan gateway enroll ${g.name} failed (exit ${r.code}):\n${r.stdout}${r.stderr}`);
    const token = r.stdout.trim().split("\n").pop()!.trim();
    writeFileSync(join(dir, "enroll-token"), token + "\n", { mode: 0o600 });
  }

  /** Connection ends not "up" in `fleetswan status` (empty: all up). */
  async notUp(): Promise<string[]> {
    const s = await this.fleetStatus();
    const conns = s.connections ?? [];
    const bad: string[] = [];
    for (const t of this.tunnels) {
      const ends = conns.filter((x) => x.name === t.name);
      const want = t.kind === "fleet" ? [t.a.name, t.b.name] : [t.a.name];
      for (const gw of want) {
        const e = ends.find((x) => x.gateway === gw);
        if (!e || e.state !== "up") bad.push(`${t.name}@${gw}: ${e ? e.state : "not reported"}${e?.lastErrorCode ? ` (${e.lastErrorCode}: ${e.lastError})` : ""}`);
      }
    }
    return bad;
  }

  /** Wait until every tunnel is up at every fleet end (fleetswan status). */
  async waitAllUp(timeoutMs = 90_000, step: (m: string) => void = () => undefined): Promise<number> {
    const t0 = Date.now();
    step(`waiting for ${this.tunnels.length} tunnels (fleetswan status)`);
    let last: string[] = [];
    try {
      await waitFor("every tunnel up in `fleetswan status`", async () => {
        for (const d of this.daemons) if (!this.running(d.name)) throw new DaemonDied(d.name, this.logOf(d.name));
        last = await this.notUp();
        return last.length === 0;
      }, { timeoutMs, intervalMs: 500 });
    } catch (e) {
      if (e instanceof DaemonDied) throw e;
      throw new Error(`${(e as Error).message}\nnot up: ${last.join("; ")}`);
    }
    const s = (Date.now() - t0) / 1000;
    step(`all ${this.tunnels.length} tunnels up after ${s.toFixed(1)} s`);
    return s;
  }

  /** Ping site host to site host through every tunnel (both directions); throws on loss. */
  async pingAll(step: (m: string) => void = () => undefined, count = 3): Promise<PingResult[]> {
    if (!this.c.siteHosts) return [];
    const out: PingResult[] = [];
    const bad: string[] = [];
    for (const t of this.tunnels) {
      for (const [x, y] of [[t.a, t.b], [t.b, t.a]] as const) {
        const r = await ping(nsHost(this.c, x), y.hostAddr!, { count });
        out.push(r);
        const line = `ping host-${x.label} (${x.hostAddr}) -> host-${y.label} (${y.hostAddr}) through ${t.name}: ${r.received}/${r.sent} replies${r.rttAvgMs !== undefined ? `, rtt avg ${r.rttAvgMs} ms` : ""}`;
        step(line);
        if (r.received === 0) bad.push(`${line}\n${r.output}`);
      }
    }
    if (bad.length) throw new Error(`no traffic through some tunnels:\n${bad.join("\n")}`);
    return out;
  }

  /** Remove every process and namespace of the lab; keep the logs. Idempotent. */
  async down(step: (m: string) => void = () => undefined): Promise<void> {
    const c = this.c;
    const saved = Lab.load(c.stateDir);
    const daemons = saved?.daemons ?? this.daemons;
    // agents first (they tell their peers), then the rest
    const order = (d: DaemonDef): number => ({ ikeagent: 0, charon: 1, dataplane: 2, controller: 3, keymgr: 3, nats: 4 })[d.kind];
    for (const rank of [0, 1, 2, 3, 4]) {
      await Promise.all(daemons.filter((d) => order(d) === rank).map(async (d) => {
        const pid = readPid(pidFile(c, d.name));
        if (isAlive(pid)) step(`stopping ${d.name} (pid ${pid})`);
        await stopPid(pid, 3000);
      }));
    }
    const stray = await pidsInNamespaces(c);
    if (stray.length) step(`killing ${stray.length} leftover process(es) in the lab's namespaces`);
    step("removing namespaces and the management bridge");
    await destroyTopology(c);
    for (const d of ["run", "nats", "keymgr", "state.json", "applied.yaml", "fleet.yaml", ...c.gateways.map((g) => g.name)]) rmrf(join(c.stateDir, d));
  }

  /** Lines describing the daemons (pid, running) and where the logs are. */
  describe(): string {
    const rows = this.daemons.map((d) => {
      const pid = this.pid(d.name);
      return `  ${d.name.padEnd(18)} ${isAlive(pid) ? `running  pid ${pid}` : "NOT RUNNING"}  ${this.logOf(d.name)}`;
    });
    return rows.join("\n");
  }

  /** Prometheus endpoints reachable from the host. */
  metricsUrls(): { name: string; url: string }[] {
    const c = this.c;
    const out = [
      { name: "controller", url: `http://127.0.0.1:${c.controllerMetricsPort}/metrics` },
      { name: "keymgr", url: `http://127.0.0.1:${c.keymgrMetricsPort}/metrics` },
      { name: "nats (monitoring)", url: `http://127.0.0.1:${c.natsMonitorPort}/varz` },
    ];
    for (const g of fleetGateways(c)) {
      out.push({ name: `${g.name} ikeagent`, url: `http://${g.mgmtAddr}:${IKEAGENT_METRICS_PORT}/metrics` });
      out.push({ name: `${g.name} dataplane`, url: `http://${g.mgmtAddr}:${DATAPLANE_METRICS_PORT}/metrics` });
    }
    return out;
  }
}

export class DaemonDied extends Error {
  readonly code = "LAB_DAEMON_DIED";
  readonly fatal = true;
  constructor(readonly daemon: string, readonly log: string) {
    super(`${daemon} is not running (exited?); last lines of ${log}:\n${tail(log, 40)}`);
  }
}

/**
 * The ikeagent's command line in fleet mode. `fleetswan ikeagent --gateway ...` when the
 * CLI has a fleet mode (deploy/systemd's flags); until then lab/fleet-agent.mjs, which
 * wires startAgent() to runFleetClient() the same way (see docs/lab.md, "Gaps").
 */
export function ikeagentArgv(c: LabConfig, g: LabGateway, dir: string, fleetMode: boolean): string[] {
  const common = [
    "--gateway", g.name,
    "--nats", natsUrl(c),
    "--state-dir", join(dir, "agent"),
    "--metrics-port", String(IKEAGENT_METRICS_PORT),
    "--control-socket", join(dir, "ikeagent.sock"),
  ];
  if (fleetMode) return [process.execPath, FLEETSWAN_BIN(c), "ikeagent", ...common, "--dataplane", join(dir, "dataplane.sock")];
  return [process.execPath, join(c.repoDir, "lab", "fleet-agent.mjs"), ...common, "--dataplane", join(dir, "dataplane.sock")];
}

/** Whether `fleetswan ikeagent` has a fleet mode (--gateway) in this checkout. */
export function ikeagentHasFleetMode(c: LabConfig): boolean {
  try {
    const out = execFileSync(process.execPath, [FLEETSWAN_BIN(c), "ikeagent", "--help"], { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"], timeout: 30_000 });
    return /--gateway\b/.test(out);
  } catch (e) {
    return /--gateway\b/.test(String((e as { stdout?: string }).stdout ?? ""));
  }
}

export function renderNatsConf(c: LabConfig): string {
  const d = join(c.stateDir, "nats");
  return `# fleetswan-lab: the embedded single NATS server (JetStream)
server_name: "${c.instance}-nats"
host: "${mgmtHostAddr(c)}"
port: ${c.natsPort}
http: "127.0.0.1:${c.natsMonitorPort}"
pid_file: "${join(d, "nats.pid")}"
jetstream {
  store_dir: "${join(d, "jetstream")}"
  max_memory_store: 256MB
  max_file_store: 1GB
}
`;
}

async function pool<T>(items: T[], limit: number, fn: (x: T) => Promise<void>): Promise<void> {
  let i = 0;
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, async () => {
    while (i < items.length) await fn(items[i++]!);
  }));
}
