/**
 * Interop fixture: fleetswan's ikeagent (our daemon, `fleetswan ikeagent`) in gwb against
 * Debian's strongSwan charon in gwa, on the host in two fresh network namespaces
 * (test/harness siteToSiteTopology):
 *
 *   gwa (charon, kernel-libipsec)  192.0.2.1 ==veth== 192.0.2.2  gwb (fleetswan ikeagent)
 *   10.1.0.1/32 on lo                                            10.2.0.1/32 on lo
 *
 * The agent runs with the real dataplane (`fleetswan dataplane --backend userspace`), so
 * the traffic tests prove packets through the tunnel; FLEETSWAN_INTEROP_DATAPLANE=fake runs
 * the IKE-only checks against the in-process fake (faster while working on the engine; the
 * traffic tests then skip, saying so).
 */
import { mkdirSync, writeFileSync, existsSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import {
  makeTempDir,
  newRunId,
  pskSecret,
  renderSwanctlConf,
  run,
  siteToSiteConn,
  siteToSiteTopology,
  startCharon,
  waitFor,
  type Charon,
  type SiteToSiteOptions,
  type Topology,
  type Proc,
} from '../harness/index.js';

export const ROOT = resolve(new URL('.', import.meta.url).pathname, '../../..');
export const FLEETSWAN = join(ROOT, 'bin', 'fleetswan.js');
export const PSK = 'interop test pre-shared key, 32+ bytes long';
export const A = { addr: '192.0.2.1', id: 'gwa.example.test', net: '10.1.0.0/16' };
export const B = { addr: '192.0.2.2', id: 'gwb.example.test', net: '10.2.0.0/16' };

/** Our side's connection, as agent.yaml. */
export interface OurConn {
  /** Our address (default B.addr). */
  localAddr?: string;
  ike?: string[];
  esp?: string[];
  startAction?: 'add' | 'start' | 'route';
  forceEncap?: boolean;
  dpdDelay?: number;
  dpdTimeout?: number;
  dpdAction?: 'clear' | 'trap' | 'restart';
  ikeLifetime?: number;
  childLifetime?: number;
  rekeyMargin?: number;
  rekeyFuzz?: number;
  auth?: 'psk' | 'pubkey';
  extraSecrets?: string;
  localCertFile?: string;
  remoteCaFile?: string;
  secretRef?: string;
}

export function agentYaml(c: OurConn = {}): string {
  const list = (xs: string[]) => `[${xs.map((x) => JSON.stringify(x)).join(', ')}]`;
  return `gateway: gwb
secrets:
  psk-ab:
    psk: ${JSON.stringify(PSK)}
${c.extraSecrets ?? ''}connections:
  - name: net
    local:
      addresses: [${c.localAddr ?? B.addr}]
      id: ${B.id}
      subnets: [${B.net}]
      auth: ${c.auth ?? 'psk'}
${c.localCertFile ? `      certificate_file: ${c.localCertFile}\n` : ''}    remote:
      addresses: [${A.addr}]
      id: ${A.id}
      subnets: [${A.net}]
      auth: ${c.auth ?? 'psk'}
${c.remoteCaFile ? `      ca_file: ${c.remoteCaFile}\n` : ''}    ike_proposals: ${list(c.ike ?? ['aes256gcm16-prfsha256-curve25519'])}
    esp_proposals: ${list(c.esp ?? ['aes256gcm16'])}
    start_action: ${c.startAction ?? 'add'}
    force_encap: ${c.forceEncap ?? true}
    dpd_delay_seconds: ${c.dpdDelay ?? 0}
    dpd_timeout_seconds: ${c.dpdTimeout ?? 30}
    dpd_action: ${c.dpdAction ?? 'clear'}
    ike_lifetime_seconds: ${c.ikeLifetime ?? 10800}
    child_lifetime_seconds: ${c.childLifetime ?? 3600}
    rekey_margin_seconds: ${c.rekeyMargin ?? 540}
    rekey_fuzz_percent: ${c.rekeyFuzz ?? 100}
    keying_tries: 1
    secret_ref: ${c.secretRef ?? 'psk-ab'}
`;
}

/** strongSwan's side (gwa). */
export function charonConf(o: Partial<SiteToSiteOptions> = {}): string {
  return renderSwanctlConf(
    [
      siteToSiteConn({
        localAddr: A.addr,
        remoteAddr: B.addr,
        localId: A.id,
        remoteId: B.id,
        localTs: A.net,
        remoteTs: B.net,
        auth: { psk: PSK },
        encap: true,
        ...o,
      }),
    ],
    'auth' in o && o.auth && !('psk' in o.auth) ? [] : [pskSecret('ab', [A.id, B.id], PSK)],
  );
}

export interface Agent {
  proc: Proc;
  dir: string;
  socket: string;
  metricsPort: number;
  /** `fleetswan agent ARGS --socket ...` in gwb. */
  ctl(args: string[], allowFail?: boolean): Promise<{ code: number; stdout: string; stderr: string }>;
  status(): Promise<AgentSa[]>;
  log(): string;
  reload(yaml: string): Promise<void>;
}

export interface AgentSa {
  name: string;
  state: string;
  initiatorSpi: string;
  responderSpi: string;
  initiator: boolean;
  algorithms: string;
  natLocal?: boolean;
  natRemote?: boolean;
  children?: { state: string; spiIn: number; spiOut: number; algorithms: string; udpEncap?: boolean; localTs: string[]; remoteTs: string[] }[];
}

export interface Env {
  net: Topology;
  charon: Charon;
  agent: Agent;
  destroy(): Promise<void>;
}

/** Starts the topology, charon in gwa (with `charon` config) and our agent in gwb (with `yaml`). */
export type AgentConfig = string | { ipsecConf: string; ipsecSecrets: string };

/** Which dataplane the agent gets: "userspace" (default) or "fake" (FLEETSWAN_INTEROP_DATAPLANE=fake). */
export function interopDataplane(): 'userspace' | 'fake' {
  const v = process.env.FLEETSWAN_INTEROP_DATAPLANE ?? 'userspace';
  if (v !== 'userspace' && v !== 'fake') throw new Error(`FLEETSWAN_INTEROP_DATAPLANE=${v}: expected userspace or fake`);
  return v;
}

export async function startEnv(yaml: AgentConfig, charonSwanctl: string, opts: { charonExtra?: string; before?: (charonDir: string) => Promise<void>; topology?: () => Promise<Topology>; agentAddr?: string; agentArgs?: string[] } = {}): Promise<Env> {
  const net = await (opts.topology ?? (() => siteToSiteTopology(newRunId())))();
  let charon: Charon | undefined;
  try {
    charon = await startCharon({ ns: net.nsOf('gwa'), name: 'gwa', mode: 'libipsec', net, charonExtra: opts.charonExtra ?? 'retransmit_timeout = 1\n  retransmit_tries = 2' });
    await opts.before?.(charon.dir);
    await charon.load(charonSwanctl);
    const agent = await startAgent(net, yaml, opts.agentAddr, opts.agentArgs);
    return {
      net,
      charon,
      agent,
      async destroy() {
        await agent.proc.stop(3000);
        await charon!.stop();
        await net.destroy();
      },
    };
  } catch (err) {
    await charon?.stop();
    await net.destroy();
    throw err;
  }
}

export async function startAgent(net: Topology, yaml: AgentConfig, address = B.addr, extraArgs: string[] = []): Promise<Agent> {
  const dir = makeTempDir(`fs-agent-${net.runId}`);
  mkdirSync(dir, { recursive: true });
  const cfg = join(dir, 'agent.yaml');
  let source: string[];
  if (typeof yaml === 'string') {
    writeFileSync(cfg, yaml);
    source = ['--config', cfg];
  } else {
    writeFileSync(join(dir, 'ipsec.conf'), yaml.ipsecConf);
    writeFileSync(join(dir, 'ipsec.secrets'), yaml.ipsecSecrets, { mode: 0o600 });
    source = ['--ipsec-conf', join(dir, 'ipsec.conf'), '--ipsec-secrets', join(dir, 'ipsec.secrets')];
  }
  const socket = join(dir, 'ikeagent.sock');
  const metricsPort = 19743;
  const dataplane = interopDataplane() === 'userspace' ? join(dir, 'dataplane.sock') : 'fake';
  if (dataplane !== 'fake') {
    net.spawn('gwb', ['node', FLEETSWAN, 'dataplane', '--backend', 'userspace', '--socket', dataplane, '--metrics-port', '0', '--natt-port', '4500', '--state-file', join(dir, 'dataplane-state.json')], { logFile: join(dir, 'dataplane.log') });
    await waitFor('dataplane socket', async () => existsSync(dataplane), { timeoutMs: 15000, intervalMs: 100 });
  }
  const proc = net.spawn('gwb', ['node', FLEETSWAN, 'ikeagent', ...source, '--dataplane', dataplane, '--control-socket', socket, '--metrics-port', String(metricsPort), '--metrics-host', '127.0.0.1', '--address', address, ...extraArgs, '--retransmit-timeout', '1000', '--retransmit-tries', '2', '--delete-on-exit', '--log-level', 'debug'], {
    logFile: join(dir, 'ikeagent.log'),
  });
  const ctl = async (args: string[], allowFail = true) => {
    const r = await net.exec('gwb', ['node', FLEETSWAN, 'agent', ...args, '--socket', socket], { allowFail, timeoutMs: 60000 });
    return { code: r.code ?? 0, stdout: r.stdout, stderr: r.stderr };
  };
  const agent: Agent = {
    proc,
    dir,
    socket,
    metricsPort,
    ctl,
    async status() {
      const r = await ctl(['status', '--json'], false);
      return ((JSON.parse(r.stdout) as { ikeSas?: AgentSa[] }).ikeSas ?? []);
    },
    log: () => (existsSync(join(dir, 'ikeagent.log')) ? readFileSync(join(dir, 'ikeagent.log'), 'utf8') : ''),
    async reload(y: string) {
      writeFileSync(cfg, y);
      await ctl(['reload'], false);
    },
  };
  await waitFor('ikeagent control socket', async () => {
    if (!proc.running) throw new Error(`ikeagent exited:\n${agent.log()}`);
    return existsSync(socket) && (await ctl(['conns'])).code === 0;
  }, { timeoutMs: 20000, intervalMs: 200 });
  return agent;
}

export type KeyKind = 'ecdsa-p256' | 'ed25519' | 'rsa-3072';

/**
 * A test CA and leaf certificates for gwa and gwb (SAN DNS = their ids) made with the
 * openssl CLI, of one key type. Writes the swanctl layout for charon (x509ca/, x509/,
 * private/ under `charonDir`) and returns the files for our side.
 */
export async function makePki(dir: string, kind: KeyKind, charonDir: string): Promise<{ ca: string; gwbKey: string; gwbCert: string }> {
  mkdirSync(dir, { recursive: true });
  const alg = kind === 'ecdsa-p256' ? ['-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256'] : kind === 'ed25519' ? ['-algorithm', 'ED25519'] : ['-algorithm', 'RSA', '-pkeyopt', 'rsa_keygen_bits:3072'];
  const key = async (f: string) => run(['openssl', 'genpkey', ...alg, '-out', f]);
  const ca = join(dir, 'ca.crt');
  await key(join(dir, 'ca.key'));
  await run(['openssl', 'req', '-x509', '-new', '-key', join(dir, 'ca.key'), '-out', ca, '-days', '2', '-subj', `/O=fleetswan test/CN=fleetswan ${kind} CA`,
    '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign']);
  for (const [gw, id] of [['gwa', A.id], ['gwb', B.id]] as const) {
    await key(join(dir, `${gw}.key`));
    await run(['openssl', 'req', '-new', '-key', join(dir, `${gw}.key`), '-out', join(dir, `${gw}.csr`), '-subj', `/O=fleetswan test/CN=${id}`]);
    writeFileSync(join(dir, `${gw}.ext`), `subjectAltName=DNS:${id}\nextendedKeyUsage=serverAuth,clientAuth\n`);
    await run(['openssl', 'x509', '-req', '-in', join(dir, `${gw}.csr`), '-CA', ca, '-CAkey', join(dir, 'ca.key'), '-CAcreateserial', '-out', join(dir, `${gw}.crt`), '-days', '2', '-extfile', join(dir, `${gw}.ext`)]);
  }
  for (const d of ['x509ca', 'x509', 'private']) mkdirSync(join(charonDir, d), { recursive: true });
  writeFileSync(join(charonDir, 'x509ca', 'ca.crt'), readFileSync(ca));
  writeFileSync(join(charonDir, 'x509', 'gwa.crt'), readFileSync(join(dir, 'gwa.crt')));
  writeFileSync(join(charonDir, 'private', 'gwa.key'), readFileSync(join(dir, 'gwa.key')));
  return { ca, gwbKey: join(dir, 'gwb.key'), gwbCert: join(dir, 'gwb.crt') };
}

/** Lines of our log with a message (JSON lines: msg field). */
export function logMessages(agent: Agent): string[] {
  return agent.log().split('\n').filter(Boolean).map((l) => {
    try {
      const j = JSON.parse(l) as { msg?: string; code?: string };
      return `${j.code ? `[${j.code}] ` : ''}${j.msg ?? ''}`;
    } catch {
      return l;
    }
  });
}

export async function curlMetrics(net: Topology, port: number): Promise<string> {
  const r = await net.exec('gwb', ['node', '-e', `fetch('http://127.0.0.1:${port}/metrics').then(r=>r.text()).then(t=>process.stdout.write(t))`], { allowFail: true });
  return r.stdout;
}

export { run };
