/**
 * Shared pieces of the end-to-end suites: a lab instance of their own (the very code of
 * ./fleetswan-lab, from @fleetswan/lab), preconditions, transit captures, agent events from
 * NATS and a results table.
 */
import { connect, type NatsConnection, type Subscription } from 'nats';
import { fileURLToPath } from 'node:url';
import { dirname, resolve } from 'node:path';
import { fleet } from '@fleetswan/proto';
import { Lab, makeLabConfig, natsUrl, nsTransit, TRANSIT_BRIDGE, type LabConfigOptions, type LabGateway } from '@fleetswan/lab';
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

/** A lab of its own for a suite: own namespaces (instance), state dir, management /24 and ports. */
export async function e2eLab(instance: string, mgmtNet: string, o: Partial<LabConfigOptions> = {}): Promise<Lab> {
  const c = makeLabConfig({
    instance,
    stateDir: `/var/tmp/fleetswan-lab-${instance}`,
    repoDir: REPO,
    mgmtNet,
    natsPort: await freePort(),
    natsMonitorPort: await freePort(),
    controllerMetricsPort: await freePort(),
    keymgrMetricsPort: await freePort(),
    ...o,
  });
  const lab = new Lab(c);
  // leftovers of an interrupted run of the same suite
  await lab.down();
  return lab;
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
