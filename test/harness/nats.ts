/**
 * Real NATS servers (Debian's `nats-server`) with JetStream for tests.
 *
 *   const nats = await startNats();                  // random ports, temp store
 *   const nc = await connect({ servers: nats.url });
 *   ...
 *   await nats.stop();
 *
 *   const cluster = await startNatsCluster(3);       // 3 routed JetStream nodes
 *   await cluster.nodes[0].kill(); await cluster.nodes[0].restart();
 *
 * Readiness is taken from the monitoring endpoint (/healthz with
 * js-enabled-only=true for a single node, plain /healthz - which needs a
 * JetStream meta leader - for a cluster), never from a sleep.
 * Extra configuration (accounts, users, permissions, authorization, ...) is
 * appended verbatim from `config`; `tls` adds a tls {} block.
 */
import { writeFileSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { freePort, makeTempDir, newRunId, spawnTracked, waitFor, type Proc } from './util.js';

export const NATS_SERVER = process.env.FLEETSWAN_NATS_SERVER ?? '/usr/sbin/nats-server';

export interface NatsTlsOptions {
  certFile: string;
  keyFile: string;
  caFile?: string;
  /** Require client certificates (verify = true). */
  verify?: boolean;
}

export interface NatsOptions {
  /** Extra config text appended verbatim (accounts {...}, authorization {...}). */
  config?: string;
  tls?: NatsTlsOptions;
  /** Enable JetStream (default true). */
  jetstream?: boolean;
  /** Server name (default fs-nats-<runid>). */
  name?: string;
  /** Host to listen on (default 127.0.0.1). */
  host?: string;
  /** Readiness timeout (default 15 s). */
  startTimeoutMs?: number;
  /** Enable debug/trace logging in the server log. */
  debug?: boolean;
}

export interface NatsServer {
  /** nats://host:port (tls:// when tls is set). */
  readonly url: string;
  readonly port: number;
  /** Monitoring port (http://host:monitorPort/varz). */
  readonly monitorPort: number;
  readonly name: string;
  /** Directory with the config, the JetStream store and the log. */
  readonly dir: string;
  readonly configFile: string;
  readonly logFile: string;
  readonly running: boolean;
  /** Graceful stop (SIGTERM, then SIGKILL); the store dir is kept for restart(). */
  stop(): Promise<void>;
  /** Hard kill (SIGKILL) as in a crash. */
  kill(): Promise<void>;
  /** Start again on the same ports and store (after stop/kill); waits until ready. */
  restart(): Promise<void>;
  /** Last lines of the server log (diagnostics). */
  logTail(lines?: number): string;
}

interface NodeSpec {
  name: string;
  host: string;
  port: number;
  monitorPort: number;
  clusterPort?: number;
  routes?: number[];
  clusterName?: string;
  dir: string;
  opts: NatsOptions;
  healthPath: string;
}

function renderConfig(s: NodeSpec): string {
  const o = s.opts;
  const lines = [
    `server_name: "${s.name}"`,
    `host: "${s.host}"`,
    `port: ${s.port}`,
    `http: "${s.host}:${s.monitorPort}"`,
    `pid_file: "${join(s.dir, 'nats.pid')}"`,
  ];
  if (o.debug) lines.push('debug: true', 'trace: true');
  if (o.jetstream !== false) {
    lines.push(`jetstream {`, `  store_dir: "${join(s.dir, 'jetstream')}"`, `  max_memory_store: 256MB`, `  max_file_store: 1GB`, `}`);
  }
  if (s.clusterPort !== undefined) {
    lines.push(
      `cluster {`,
      `  name: "${s.clusterName}"`,
      `  host: "${s.host}"`,
      `  port: ${s.clusterPort}`,
      `  routes: [`,
      ...(s.routes ?? []).map((p) => `    "nats-route://${s.host}:${p}"`),
      `  ]`,
      `}`,
    );
  }
  if (o.tls) {
    lines.push(`tls {`, `  cert_file: "${o.tls.certFile}"`, `  key_file: "${o.tls.keyFile}"`);
    if (o.tls.caFile) lines.push(`  ca_file: "${o.tls.caFile}"`);
    if (o.tls.verify) lines.push(`  verify: true`);
    lines.push(`}`);
  }
  if (o.config) lines.push(o.config);
  return lines.join('\n') + '\n';
}

class NatsNode implements NatsServer {
  readonly configFile: string;
  readonly logFile: string;
  private proc: Proc | undefined;

  constructor(private readonly spec: NodeSpec) {
    mkdirSync(spec.dir, { recursive: true });
    this.configFile = join(spec.dir, 'nats.conf');
    this.logFile = join(spec.dir, 'nats.log');
    writeFileSync(this.configFile, renderConfig(spec));
  }

  get url(): string {
    return `${this.spec.opts.tls ? 'tls' : 'nats'}://${this.spec.host}:${this.spec.port}`;
  }
  get port(): number { return this.spec.port; }
  get monitorPort(): number { return this.spec.monitorPort; }
  get name(): string { return this.spec.name; }
  get dir(): string { return this.spec.dir; }
  get running(): boolean { return this.proc?.running ?? false; }

  /** Start the process (no wait). */
  launch(): void {
    if (this.proc?.running) throw new Error(`${this.name} already running`);
    this.proc = spawnTracked([NATS_SERVER, '-c', this.configFile], this.logFile);
  }

  async waitReady(timeoutMs: number): Promise<void> {
    const url = `http://${this.spec.host}:${this.spec.monitorPort}${this.spec.healthPath}`;
    const proc = this.proc;
    await waitFor(`nats-server ${this.name} healthy (${url})`, async () => {
      if (proc && !proc.running) throw new Error(`nats-server exited: ${this.logTail(10)}`);
      const res = await fetch(url, { signal: AbortSignal.timeout(1000) });
      return res.status === 200;
    }, { timeoutMs, intervalMs: 100 }).catch((e: Error) => {
      throw new Error(`${e.message}\n--- ${this.logFile}:\n${this.logTail(20)}`);
    });
  }

  async stop(): Promise<void> { await this.proc?.stop(5000); }
  async kill(): Promise<void> { await this.proc?.kill(); }
  async restart(): Promise<void> {
    if (this.proc?.running) await this.stop();
    this.launch();
    await this.waitReady(this.spec.opts.startTimeoutMs ?? 20_000);
  }
  logTail(lines = 30): string {
    return (this.proc?.log() ?? '').trimEnd().split('\n').slice(-lines).join('\n');
  }
}

/** Start one nats-server (JetStream on by default) and wait until it is healthy. */
export async function startNats(opts: NatsOptions = {}): Promise<NatsServer> {
  const id = newRunId();
  const host = opts.host ?? '127.0.0.1';
  const node = new NatsNode({
    name: opts.name ?? `fs-nats-${id}`,
    host,
    port: await freePort(host),
    monitorPort: await freePort(host),
    dir: makeTempDir(`fs-nats-${id}`),
    opts,
    healthPath: opts.jetstream === false ? '/healthz' : '/healthz?js-enabled-only=true',
  });
  node.launch();
  try {
    await node.waitReady(opts.startTimeoutMs ?? 15_000);
  } catch (e) {
    await node.kill();
    throw e;
  }
  return node;
}

export interface NatsCluster {
  readonly nodes: NatsServer[];
  /** Comma-free list of client URLs, for connect({ servers }). */
  readonly servers: string[];
  readonly name: string;
  /** Stop every node. */
  stop(): Promise<void>;
}

/**
 * Start an n-node JetStream cluster (full mesh of routes) and wait until every
 * node reports healthy (JetStream meta group has a leader).
 */
export async function startNatsCluster(n = 3, opts: NatsOptions = {}): Promise<NatsCluster> {
  const id = newRunId();
  const host = opts.host ?? '127.0.0.1';
  const base = makeTempDir(`fs-natsc-${id}`);
  const ports: { port: number; monitorPort: number; clusterPort: number }[] = [];
  for (let i = 0; i < n; i++) {
    ports.push({ port: await freePort(host), monitorPort: await freePort(host), clusterPort: await freePort(host) });
  }
  const clusterName = `fs-c-${id}`;
  const nodes = ports.map((p, i) => new NatsNode({
    name: `${clusterName}-n${i}`,
    host,
    ...p,
    routes: ports.filter((_, j) => j !== i).map((q) => q.clusterPort),
    clusterName,
    dir: join(base, `n${i}`),
    opts,
    healthPath: '/healthz',
  }));
  for (const node of nodes) node.launch();
  try {
    await Promise.all(nodes.map((node) => node.waitReady(opts.startTimeoutMs ?? 30_000)));
  } catch (e) {
    await Promise.all(nodes.map((node) => node.kill()));
    throw e;
  }
  return {
    nodes,
    servers: nodes.map((x) => x.url),
    name: clusterName,
    async stop() { await Promise.all(nodes.map((node) => node.stop())); },
  };
}
