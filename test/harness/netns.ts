/**
 * Network-namespace topologies described in code.
 *
 *   const net = await createTopology({
 *     nodes: { gwa: { lo: ['10.1.0.1/32'], forward: true }, gwb: { lo: ['10.2.0.1/32'] } },
 *     links: [{ a: 'gwa', b: 'gwb', aAddr: '192.0.2.1/24', bAddr: '192.0.2.2/24' }],
 *     routes: [{ node: 'gwa', to: '10.9.0.0/16', via: '192.0.2.2' }],
 *   });
 *   await net.exec('gwa', ['ping', '-c1', '192.0.2.2']);
 *   const p = net.spawn('gwb', ['iperf3', '-s']);
 *   await net.destroy();
 *
 * Namespace names are `fs-<node>-<runid>` (short: node names should be <= 6
 * chars). Veth pairs are created directly between two namespaces, so no
 * interface ever exists in the host namespace and interface names only need
 * to be unique inside their namespace (default `v-<peer>`, max 15 chars).
 * Everything is removed by destroy(), and also at process exit / SIGINT /
 * SIGTERM if the test dies first.
 */
import { join } from 'node:path';
import { makeTempDir, newRunId, registerCleanup, run, runSync, spawnTracked, type Proc, type RunResult } from './util.js';

export interface NodeSpec {
  /** Addresses on lo (e.g. site addresses '10.1.0.1/32'). */
  lo?: string[];
  /** net.ipv4.ip_forward=1 (and ipv6 forwarding). */
  forward?: boolean;
  /** Extra sysctls, e.g. { 'net.ipv4.conf.all.rp_filter': '0' }. */
  sysctls?: Record<string, string>;
}

export interface LinkSpec {
  a: string;
  b: string;
  /** Interface names on each side (default `v-<peer>`, truncated to 15 chars). */
  aIf?: string;
  bIf?: string;
  /** CIDR addresses, e.g. '192.0.2.1/24'. */
  aAddr?: string | string[];
  bAddr?: string | string[];
  mtu?: number;
}

export interface RouteSpec {
  node: string;
  /** Destination prefix or 'default'. */
  to: string;
  via?: string;
  dev?: string;
  src?: string;
  table?: string | number;
}

export interface TopologySpec {
  nodes: Record<string, NodeSpec>;
  links?: LinkSpec[];
  routes?: RouteSpec[];
  /** Run id used in namespace names (default: random). */
  runId?: string;
}

export interface ExecOptions {
  env?: NodeJS.ProcessEnv;
  timeoutMs?: number;
  /** Resolve instead of rejecting on non-zero exit. */
  allowFail?: boolean;
  input?: string;
}

export interface Topology {
  readonly runId: string;
  /** Node name -> namespace name. */
  readonly ns: Readonly<Record<string, string>>;
  /** Scratch dir for this topology (logs of spawned processes). */
  readonly dir: string;
  /** Namespace name of a node (throws on unknown node). */
  nsOf(node: string): string;
  /** Interface name of a link end: ifName('gwa', 'gwb'). */
  ifName(node: string, peer: string): string;
  /** Run argv in the node's namespace to completion. */
  exec(node: string, argv: readonly string[], opts?: ExecOptions): Promise<RunResult>;
  /** Run `sh -c script` in the node's namespace. */
  sh(node: string, script: string, opts?: ExecOptions): Promise<RunResult>;
  /** Start a long-running process in the namespace; killed by destroy(). */
  spawn(node: string, argv: readonly string[], opts?: { env?: NodeJS.ProcessEnv; logFile?: string; cwd?: string }): Proc;
  /** Kill all spawned processes and delete all namespaces. Idempotent. */
  destroy(): Promise<void>;
}

/** Namespace names of this prefix; used by tests to check nothing is left over. */
export const NETNS_PREFIX = 'fs-';

/** List existing network namespaces (names). */
export async function listNetns(): Promise<string[]> {
  const r = await run(['ip', '-j', 'netns', 'list'], { allowFail: true });
  if (r.code !== 0 || r.stdout.trim() === '') return [];
  return (JSON.parse(r.stdout) as { name: string }[]).map((x) => x.name);
}

export function nsExecArgv(ns: string, argv: readonly string[]): string[] {
  return ['ip', 'netns', 'exec', ns, ...argv];
}

/** Create the namespaces, links, addresses, routes and sysctls of `spec`. */
export async function createTopology(spec: TopologySpec): Promise<Topology> {
  const runId = spec.runId ?? newRunId();
  const ns: Record<string, string> = {};
  for (const node of Object.keys(spec.nodes)) ns[node] = `fs-${node}-${runId}`;
  const dir = makeTempDir(`fs-net-${runId}`);
  const procs = new Set<Proc>();
  const created: string[] = [];
  let destroyed = false;

  const destroySync = (): void => {
    for (const p of procs) { try { process.kill(-p.pid, 'SIGKILL'); } catch { /* gone */ } }
    for (const n of created) runSync(['ip', 'netns', 'del', n]);
  };
  const unregister = registerCleanup(destroySync);

  const nsOf = (node: string): string => {
    const n = ns[node];
    if (n === undefined) throw new Error(`unknown node ${node}`);
    return n;
  };
  const ifNames = new Map<string, string>();
  const ifName = (node: string, peer: string): string => {
    const n = ifNames.get(`${node}>${peer}`);
    if (n === undefined) throw new Error(`no link ${node} -> ${peer}`);
    return n;
  };

  const topo: Topology = {
    runId,
    ns,
    dir,
    nsOf,
    ifName,
    exec: (node, argv, opts = {}) => run(nsExecArgv(nsOf(node), argv), opts),
    sh: (node, script, opts = {}) => run(nsExecArgv(nsOf(node), ['sh', '-c', script]), opts),
    spawn(node, argv, opts = {}) {
      const base = (argv[0] ?? 'proc').split('/').pop();
      const logFile = opts.logFile ?? join(dir, `${node}-${base}-${procs.size}.log`);
      const p = spawnTracked(nsExecArgv(nsOf(node), argv), logFile, { env: opts.env ?? process.env, cwd: opts.cwd });
      procs.add(p);
      return p;
    },
    async destroy() {
      if (destroyed) return;
      destroyed = true;
      await Promise.all([...procs].map((p) => p.stop(2000)));
      for (const n of created) await run(['ip', 'netns', 'del', n], { allowFail: true });
      unregister();
    },
  };

  try {
    for (const [node, n] of Object.entries(ns)) {
      await run(['ip', 'netns', 'add', n]);
      created.push(n);
      await run(['ip', '-n', n, 'link', 'set', 'lo', 'up']);
      const s = spec.nodes[node]!;
      for (const a of s.lo ?? []) await run(['ip', '-n', n, 'addr', 'add', a, 'dev', 'lo']);
      const sysctls: Record<string, string> = { ...(s.sysctls ?? {}) };
      if (s.forward) {
        sysctls['net.ipv4.ip_forward'] = '1';
        sysctls['net.ipv6.conf.all.forwarding'] = '1';
      }
      for (const [k, v] of Object.entries(sysctls)) {
        await run(nsExecArgv(n, ['sysctl', '-q', '-w', `${k}=${v}`]));
      }
    }
    for (const l of spec.links ?? []) {
      const aIf = (l.aIf ?? `v-${l.b}`).slice(0, 15);
      const bIf = (l.bIf ?? `v-${l.a}`).slice(0, 15);
      ifNames.set(`${l.a}>${l.b}`, aIf);
      ifNames.set(`${l.b}>${l.a}`, bIf);
      const nA = nsOf(l.a), nB = nsOf(l.b);
      await run(['ip', '-n', nA, 'link', 'add', aIf, 'type', 'veth', 'peer', 'name', bIf, 'netns', nB]);
      for (const [n, ifn, addrs] of [[nA, aIf, l.aAddr], [nB, bIf, l.bAddr]] as const) {
        for (const a of addrs === undefined ? [] : Array.isArray(addrs) ? addrs : [addrs]) {
          await run(['ip', '-n', n, 'addr', 'add', a, 'dev', ifn]);
        }
        if (l.mtu) await run(['ip', '-n', n, 'link', 'set', ifn, 'mtu', String(l.mtu)]);
        await run(['ip', '-n', n, 'link', 'set', ifn, 'up']);
      }
    }
    for (const r of spec.routes ?? []) {
      const argv = ['ip', '-n', nsOf(r.node), 'route', 'add', r.to];
      if (r.via) argv.push('via', r.via);
      if (r.dev) argv.push('dev', r.dev);
      if (r.src) argv.push('src', r.src);
      if (r.table !== undefined) argv.push('table', String(r.table));
      await run(argv);
    }
  } catch (e) {
    await topo.destroy();
    throw e;
  }
  return topo;
}

/**
 * The standard two-gateway site-to-site topology used by the peer tests:
 *   gwa: lo 10.1.0.1/32, veth 192.0.2.1/24  <->  gwb: veth 192.0.2.2/24, lo 10.2.0.1/32
 * Interface names are `veth0` on both sides.
 */
export function siteToSiteTopology(runId?: string): Promise<Topology> {
  return createTopology({
    runId,
    nodes: { gwa: { lo: ['10.1.0.1/32'] }, gwb: { lo: ['10.2.0.1/32'] } },
    links: [{ a: 'gwa', b: 'gwb', aIf: 'veth0', bIf: 'veth0', aAddr: '192.0.2.1/24', bAddr: '192.0.2.2/24' }],
  });
}
