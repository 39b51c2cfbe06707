/**
 * Shared pieces of the end-to-end suites: a lab instance of their own (the very code of
 * ./fleetswan-lab, from @fleetswan/lab), preconditions, transit captures, agent events from
 * NATS and a results table.
 */
import { connect, type NatsConnection, type Subscription } from 'nats';
import { fileURLToPath } from 'node:url';
import { mkdirSync, readFileSync, unlinkSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fleet } from '@fleetswan/proto';
import { Lab, makeLabConfig, mgmtBridge, natsUrl, nsTransit, stopLabPrometheus, TRANSIT_BRIDGE, type LabConfigOptions, type LabGateway } from '@fleetswan/lab';
import { freePort, needExecutable, needRoot, run, skipReason } from '../harness/util.js';
import { startCapture, countPackets, countEspInUdp, describePackets, type Capture } from '../harness/capture.js';

export const REPO = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');

/** Progress lines with the test's elapsed time (stderr, visible in the TAP output). */
export function logger(prefix: string): (m: string) => void {
  const t0 = Date.now();
  return (m) => process.stderr.write(`# [${prefix} ${((Date.now() - t0) / 1000).toFixed(1)}s] ${m}\n`);
}

/** Skip reason when the machine cannot run the lab (throws in CI instead: see skipReason). */
export function labPreconditions(): string | null {
  return skipReason(needRoot(), needExecutable('nats-server', '/usr/lib/ipsec/charon', 'swanctl', 'dumpcap', 'tshark', 'iperf3', 'ping'));
}

/**
 * The fleetswan commands the lab needs. A missing one is a failure that names it (the
 * service has not landed), never a skip.
 */
export async function assertServicesPresent(): Promise<void> {
  const r = await run([process.execPath, resolve(REPO, 'bin/fleetswan.js'), '--help'], { allowFail: true });
  const missing = ['controller', 'keymgr', 'apply', 'status', 'conn', 'gateway', 'secrets', 'dataplane', 'ikeagent'].filter(
    (c) => !new RegExp(`^\\s+${c}\\s`, 'm').test(r.stdout));
  if (missing.length) {
    throw new Error(`the fleetswan CLI lacks ${missing.map((m) => `\`fleetswan ${m}\``).join(', ')} (not registered in \`fleetswan --help\`): the e2e fleet cannot start`);
  }
}

/** Where an e2e run records that it owns a lab instance (in the instance's state dir, which `down` keeps). */
const OWNER_FILE = 'e2e-owner.json';
/** Instances per suite: `<base>`, then `<base>1`..`<base>9` while another run holds the first. */
const SLOTS = 10;

interface Owner { pid: number; start: string; suite: string; since: string }

/** A live process's start time (field 22 of /proc/PID/stat): with the pid, it tells a live owner from a reused pid. */
function procStart(pid: number): string | undefined {
  try {
    const f = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const [state, ...rest] = f.slice(f.lastIndexOf(')') + 2).split(' ');
    return state === 'Z' || state === 'X' ? undefined : rest[18]; // a zombie is gone too
  } catch {
    return undefined;
  }
}

const ownerAlive = (o: Owner): boolean => procStart(o.pid) === o.start;

/**
 * Claim `instance` for this process: the owner file is created exclusively; one whose
 * process is gone (an interrupted run, FLEETSWAN_KEEP_LAB) is taken over. Returns the live
 * owner when another run holds it.
 */
function claim(stateDir: string, suite: string): Owner | undefined {
  mkdirSync(stateDir, { recursive: true });
  const f = join(stateDir, OWNER_FILE);
  const me: Owner = { pid: process.pid, start: procStart(process.pid) ?? '', suite, since: new Date().toISOString() };
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      writeFileSync(f, JSON.stringify(me) + '\n', { flag: 'wx' });
      process.once('exit', () => {
        try {
          if ((JSON.parse(readFileSync(f, 'utf8')) as Owner).pid === process.pid) unlinkSync(f);
        } catch { /* gone */ }
      });
      return undefined;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
    }
    let cur: Owner | undefined;
    try { cur = JSON.parse(readFileSync(f, 'utf8')) as Owner; } catch { /* half-written or removed: stale */ }
    if (cur && ownerAlive(cur) && cur.pid !== process.pid) return cur;
    try { unlinkSync(f); } catch { /* another run removed it first */ }
  }
  throw new Error(`could not claim the e2e lab state dir ${stateDir} (${OWNER_FILE} keeps reappearing)`);
}

/** The management /24 is held by another interface on the host (another lab, another run). */
async function mgmtNetInUse(mgmtNet: string, ownBridge: string): Promise<string | undefined> {
  const r = await run(['ip', '-4', '-o', 'addr', 'show'], { allowFail: true });
  const line = r.stdout.split('\n').find((l) => l.includes(` inet ${mgmtNet}.`) && l.split(/\s+/)[1] !== ownBridge);
  return line?.split(/\s+/)[1];
}

export type E2eLabOptions = Partial<Omit<LabConfigOptions, 'gateways'>> & {
  /** The gateways, for the management /24 the run gets (default: the lab's three). */
  gateways?: (mgmtNet: string) => LabGateway[];
};

/**
 * A lab of its own for a suite run: own namespaces (instance), state dir, management /24
 * and ports. Concurrent runs do not collide: the first free instance of `<base>`,
 * `<base>1`..`<base>9` is claimed (owner file with pid and start time); slot i uses the
 * management /24 198.18.(m + 16 i) for `mgmtNet` 198.18.m. A slot whose owner is gone is
 * taken over and the remains of its lab removed (FLEETSWAN_KEEP_LAB labs too). When every
 * slot is held, it fails and names the runs holding them.
 */
export async function e2eLab(base: string, mgmtNet: string, o: E2eLabOptions = {}): Promise<Lab> {
  const m = mgmtNet.match(/^(\d+\.\d+)\.(\d+)$/);
  if (!m) throw new Error(`e2eLab: management net "${mgmtNet}" is not the first three octets of a /24`);
  const held: string[] = [];
  for (let slot = 0; slot < SLOTS; slot++) {
    const instance = slot === 0 ? base : `${base}${slot}`;
    const net = `${m[1]}.${Number(m[2]) + 16 * slot}`;
    if (Number(m[2]) + 16 * slot > 254) break;
    const stateDir = `/var/tmp/fleetswan-lab-${instance}`;
    const { gateways, ...rest } = o;
    const c = makeLabConfig({
      instance,
      stateDir,
      repoDir: REPO,
      mgmtNet: net,
      natsPort: await freePort(),
      natsMonitorPort: await freePort(),
      controllerMetricsPort: await freePort(),
      keymgrMetricsPort: await freePort(),
      ...rest,
      ...(gateways ? { gateways: gateways(net) } : {}),
    });
    const inUse = await mgmtNetInUse(net, mgmtBridge(c));
    if (inUse) {
      held.push(`${instance}: ${net}.0/24 is on ${inUse}`);
      continue;
    }
    const owner = claim(stateDir, base);
    if (owner) {
      held.push(`${instance}: run pid ${owner.pid} (${owner.suite}, since ${owner.since})`);
      continue;
    }
    if (slot > 0) process.stderr.write(`# e2e lab: ${held.join('; ')}; this run uses instance ${instance} (${stateDir}, ${net}.0/24)\n`);
    const lab = new Lab(c);
    // leftovers of an interrupted run of this instance (and a Prometheus it left)
    await stopLabPrometheus(c);
    await lab.down();
    return lab;
  }
  throw new Error(`no free e2e lab instance for "${base}" (another run of the suite holds each one):\n  ${held.join('\n  ')}\n` +
    'wait for those runs, or stop a stale lab with ./fleetswan-lab down --instance NAME --state-dir /var/tmp/fleetswan-lab-NAME');
}

/** The command lines that inspect and remove a lab a suite left (FLEETSWAN_KEEP_LAB=1). */
export function keptLabHint(lab: Lab): string {
  const a = `--instance ${lab.c.instance} --state-dir ${lab.c.stateDir}`;
  return `lab kept: ./fleetswan-lab status ${a}; ./fleetswan-lab down ${a}`;
}

/** A capture of everything on the transit bridge (all gateways' IKE/ESP). */
export function captureTransit(lab: Lab): Promise<Capture> {
  return startCapture(nsTransit(lab.c), TRANSIT_BRIDGE, { filter: 'ip' });
}

/** Display filter: any packet whose (outer) addresses are site addresses = cleartext between sites. */
export const CLEARTEXT_BETWEEN_SITES = 'ip.src == 10.0.0.0/8 || ip.dst == 10.0.0.0/8';
/** Display filter: anything that is neither IKE (500) nor NAT-T/ESP-in-UDP (4500). */
export const NOT_IKE_OR_ESP = 'ip && !(udp.port == 500 || udp.port == 4500)';

/** Counts for a transit capture: cleartext between sites, non-IKE/ESP, ESP-in-UDP. */
export async function transitVerdict(file: string): Promise<{ cleartext: number; other: number; esp: number; detail: string }> {
  const cleartext = await countPackets(file, CLEARTEXT_BETWEEN_SITES);
  const other = await countPackets(file, NOT_IKE_OR_ESP);
  const esp = await countEspInUdp(file);
  let detail = '';
  if (cleartext) detail += `cleartext between sites:\n${await describePackets(file, CLEARTEXT_BETWEEN_SITES)}\n`;
  if (other) detail += `neither IKE nor ESP:\n${await describePackets(file, NOT_IKE_OR_ESP)}\n`;
  return { cleartext, other, esp, detail };
}

/** AgentEvents of every gateway (fleet.v1.gw.*.events), collected until stop(). */
export class EventLog {
  readonly events: fleet.AgentEvent[] = [];
  private constructor(private readonly nc: NatsConnection, private readonly sub: Subscription) {}

  static async open(lab: Lab): Promise<EventLog> {
    const nc = await connect({ servers: natsUrl(lab.c), name: 'e2e-events' });
    const sub = nc.subscribe('fleet.v1.gw.*.events');
    const log = new EventLog(nc, sub);
    void (async () => {
      for await (const m of sub) {
        try { log.events.push(fleet.AgentEvent.decode(m.data)); } catch { /* not ours */ }
      }
    })();
    return log;
  }

  count(kind: string, connection?: string): number {
    return this.events.filter((e) => e.kind === kind && (!connection || e.connection === connection)).length;
  }

  summary(): string {
    const m = new Map<string, number>();
    for (const e of this.events) m.set(`${e.gateway}/${e.connection || '-'}/${e.kind}`, (m.get(`${e.gateway}/${e.connection || '-'}/${e.kind}`) ?? 0) + 1);
    return [...m.entries()].map(([k, v]) => `${k}=${v}`).join(' ') || '(no events)';
  }

  async stop(): Promise<void> {
    this.sub.unsubscribe();
    await this.nc.close().catch(() => undefined);
  }
}

/** A plain-text table (first row = header). */
export function table(rows: (string | number)[][]): string {
  const s = rows.map((r) => r.map(String));
  const w = s[0]!.map((_, i) => Math.max(...s.map((r) => (r[i] ?? '').length)));
  return s.map((r) => r.map((c, i) => c.padEnd(w[i]!)).join('  ').trimEnd()).join('\n');
}

/** The strongSwan gateway's SAs by connection name (parsed `swanctl --list-sas`). */
export async function peerSas(lab: Lab, g: LabGateway): Promise<import('../harness/peers.js').IkeSa[]> {
  const { parseViciPretty, toIkeSas } = await import('../harness/peers.js');
  const r = await lab.swanctl(g, ['--list-sas', '--pretty', '--noblock']);
  return toIkeSas(parseViciPretty(r.stdout));
}
