/**
 * Real IKEv2 peers for interop tests: strongSwan charon (driven by swanctl over
 * its own VICI socket) and Libreswan pluto (driven by whack).
 *
 * strongSwan, per daemon: own dir with strongswan.conf (STRONGSWAN_CONF),
 * swanctl.conf, charon.log and a run/ dir bind-mounted over /run inside the
 * namespace (charon's pid file path is compiled in). Modes:
 *   - 'libipsec': userspace ESP over TUN (host kernel has no ESP); use encap.
 *   - 'kernel':   kernel-netlink/XFRM (inside UML, see kernel-lab.ts).
 *
 *   const gw = await startCharon({ ns: net.nsOf('gwa'), name: 'gwa', mode: 'libipsec', net });
 *   await gw.load(renderSwanctlConf([siteToSiteConn({...})], [pskSecret(...)]));
 *   await gw.initiate({ child: 'net' });
 *   const sas = await gw.listSas();      // parsed --list-sas --pretty
 *
 * Libreswan (kernel ESP only, so inside UML): the .deb is unpacked in
 * LIBRESWAN_ROOT; pluto runs with /usr/libexec/ipsec bind-mounted from there
 * and every path on its command line.
 *
 *   const pl = await startPluto({ ns, config: renderLibreswanConf({...}), secrets: '...' });
 *   await pl.addConn('s2s'); await pl.initiate('s2s'); await pl.trafficStatus();
 */
import { mkdirSync, writeFileSync, readFileSync, existsSync, chmodSync } from 'node:fs';
import { join } from 'node:path';
import { makeTempDir, newRunId, run, spawnTracked, waitFor, type Proc, type RunResult } from './util.js';
import { nsExecArgv, type Topology } from './netns.js';

export const CHARON = process.env.FLEETSWAN_CHARON ?? '/usr/lib/ipsec/charon';
export const SWANCTL = process.env.FLEETSWAN_SWANCTL ?? '/usr/sbin/swanctl';
export const LIBRESWAN_ROOT = process.env.FLEETSWAN_LIBRESWAN ?? '/opt/fleetswan-libreswan';

// ------------------------------------------------------------ rendering --

export type CharonMode = 'libipsec' | 'kernel';

export interface StrongswanConfOptions {
  dir: string;
  mode: CharonMode;
  /** charon log levels per subsystem (default: default=1, ike=2, esp=1, cfg=1). */
  logLevels?: Record<string, number>;
  /** Extra text inside charon { } (e.g. 'retransmit_tries = 2'). */
  charonExtra?: string;
}

/** strongswan.conf for one charon (and for its swanctl: minimal plugin list). */
export function renderStrongswanConf(o: StrongswanConfOptions): string {
  // kdf is required by 5.9.8 with an explicit load list; kernel-libipsec
  // must come before kernel-netlink (which still does routes/addresses).
  const kernel = o.mode === 'libipsec' ? 'kernel-libipsec kernel-netlink' : 'kernel-netlink';
  const levels = { default: 1, ike: 2, esp: 1, cfg: 1, ...(o.logLevels ?? {}) };
  return `charon {
  load = random nonce openssl pem pkcs1 pkcs8 x509 pubkey curve25519 kdf ${kernel} socket-default vici
  port = 500
  port_nat_t = 4500
  install_routes = yes
  plugins {
    vici {
      socket = unix://${o.dir}/charon.vici
    }
  }
  syslog {
    daemon {
      default = -1
    }
  }
  filelog {
    main {
      path = ${o.dir}/charon.log
      time_format = %T
${Object.entries(levels).map(([k, v]) => `      ${k} = ${v}`).join('\n')}
      flush_line = yes
    }
  }
${o.charonExtra ?? ''}
}
swanctl {
  load = random openssl pem pkcs1 pkcs8 x509 pubkey
}
`;
}

export type PeerAuth =
  | { psk: string }
  /** Certificate auth: file names relative to the swanctl dir (x509/, private/, x509ca/). */
  | { cert: string; key: string; ca: string };

export interface SiteToSiteOptions {
  /** Connection name (default 's2s'). */
  name?: string;
  /** Child SA name (default 'net'). */
  child?: string;
  localAddr: string;
  remoteAddr: string;
  localId: string;
  remoteId: string;
  localTs: string | string[];
  remoteTs: string | string[];
  auth: PeerAuth;
  /** IKE proposals (default aes256gcm16-prfsha256-curve25519). */
  proposals?: string;
  /** ESP proposals (default aes256gcm16). */
  espProposals?: string;
  /** Force UDP encapsulation (needed with kernel-libipsec). */
  encap?: boolean;
  /** IKE rekey time (default 0 = never), e.g. '1h' or 30. */
  rekeyTime?: string | number;
  reauthTime?: string | number;
  overTime?: string | number;
  /** CHILD rekey/life times (default rekey 0). */
  childRekeyTime?: string | number;
  childLifeTime?: string | number;
  /** DPD interval (e.g. '5s') and action for the child. */
  dpdDelay?: string | number;
  dpdAction?: 'clear' | 'trap' | 'restart' | 'none';
  startAction?: 'none' | 'trap' | 'start';
  closeAction?: 'none' | 'trap' | 'start';
  mobike?: boolean;
  mode?: 'tunnel' | 'transport';
  /** Extra lines inside the connection / child section. */
  connExtra?: string;
  childExtra?: string;
}

const list = (x: string | string[]): string => (Array.isArray(x) ? x.join(',') : x);

/** The usual site-to-site connection as a swanctl.conf `connections` entry. */
export function siteToSiteConn(o: SiteToSiteOptions): string {
  const auth = (side: 'local' | 'remote', id: string): string => {
    if ('psk' in o.auth) return `    ${side} {\n      auth = psk\n      id = ${id}\n    }`;
    return side === 'local'
      ? `    local {\n      auth = pubkey\n      id = ${id}\n      certs = ${o.auth.cert}\n    }`
      : `    remote {\n      auth = pubkey\n      id = ${id}\n      cacerts = ${o.auth.ca}\n    }`;
  };
  const opt = (k: string, v: unknown, indent: string): string => (v === undefined ? '' : `${indent}${k} = ${String(v)}\n`);
  return `  ${o.name ?? 's2s'} {
    version = 2
    local_addrs = ${o.localAddr}
    remote_addrs = ${o.remoteAddr}
    proposals = ${o.proposals ?? 'aes256gcm16-prfsha256-curve25519'}
    rekey_time = ${o.rekeyTime ?? 0}
${opt('encap', o.encap === undefined ? undefined : o.encap ? 'yes' : 'no', '    ')}${opt('mobike', o.mobike === undefined ? undefined : o.mobike ? 'yes' : 'no', '    ')}${opt('reauth_time', o.reauthTime, '    ')}${opt('over_time', o.overTime, '    ')}${opt('dpd_delay', o.dpdDelay, '    ')}${o.connExtra ?? ''}
${auth('local', o.localId)}
${auth('remote', o.remoteId)}
    children {
      ${o.child ?? 'net'} {
        local_ts = ${list(o.localTs)}
        remote_ts = ${list(o.remoteTs)}
        mode = ${o.mode ?? 'tunnel'}
        esp_proposals = ${o.espProposals ?? 'aes256gcm16'}
        rekey_time = ${o.childRekeyTime ?? 0}
        start_action = ${o.startAction ?? 'none'}
${opt('life_time', o.childLifeTime, '        ')}${opt('dpd_action', o.dpdAction, '        ')}${opt('close_action', o.closeAction, '        ')}${o.childExtra ?? ''}
      }
    }
  }
`;
}

/** A PSK `secrets` entry for two identities. */
export function pskSecret(name: string, ids: string[], secret: string): string {
  return `  ike-${name} {\n${ids.map((id, i) => `    id-${i} = ${id}`).join('\n')}\n    secret = "${secret}"\n  }\n`;
}

/** A private key `secrets` entry (file in private/). */
export function keySecret(name: string, file: string, type: 'ecdsa' | 'rsa' | 'private' = 'private'): string {
  return `  ${type}-${name} {\n    file = ${file}\n  }\n`;
}

/** Full swanctl.conf from connection blocks and secret blocks. */
export function renderSwanctlConf(conns: string[], secrets: string[] = []): string {
  return `connections {\n${conns.join('')}}\nsecrets {\n${secrets.join('')}}\n`;
}

/**
 * A small test PKI with openssl (ECDSA P-256): a CA and one leaf per identity
 * (subjectAltName DNS = id), written into a swanctl dir layout:
 * x509ca/ca.crt, x509/<id>.crt, private/<id>.key. Returns the dir.
 */
export async function makeTestPki(swanctlDir: string, ids: string[]): Promise<string> {
  for (const d of ['x509ca', 'x509', 'private']) mkdirSync(join(swanctlDir, d), { recursive: true });
  const ca = join(swanctlDir, 'x509ca', 'ca.crt'), caKey = join(swanctlDir, 'ca.key');
  await run(['openssl', 'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes',
    '-keyout', caKey, '-out', ca, '-days', '2', '-subj', '/O=fleetswan test/CN=fleetswan test CA',
    '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign']);
  for (const id of ids) {
    const key = join(swanctlDir, 'private', `${id}.key`), csr = join(swanctlDir, `${id}.csr`);
    const ext = join(swanctlDir, `${id}.ext`);
    writeFileSync(ext, `subjectAltName=DNS:${id}\nextendedKeyUsage=serverAuth,clientAuth\n`);
    await run(['openssl', 'req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes',
      '-keyout', key, '-out', csr, '-subj', `/O=fleetswan test/CN=${id}`]);
    await run(['openssl', 'x509', '-req', '-in', csr, '-CA', ca, '-CAkey', caKey, '-CAcreateserial',
      '-out', join(swanctlDir, 'x509', `${id}.crt`), '-days', '2', '-extfile', ext]);
  }
  return swanctlDir;
}

// ------------------------------------------------------------ list-sas --

/** A VICI message in --pretty form as nested objects: sections are objects, lists arrays. */
export type ViciValue = string | string[] | ViciSection;
export interface ViciSection { [key: string]: ViciValue }

/**
 * Parse swanctl `--pretty` output (one or more messages like
 * `list-sa event {\n  s2s {\n    state = ESTABLISHED ...`). Returns the
 * messages' bodies in order.
 */
export function parseViciPretty(text: string): ViciSection[] {
  const out: ViciSection[] = [];
  const stack: ViciSection[] = [];
  let listKey: string | null = null;
  let listVals: string[] = [];
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (line === '') continue;
    if (listKey !== null) {
      if (line === ']') { stack[stack.length - 1]![listKey] = listVals; listKey = null; }
      else listVals.push(line);
      continue;
    }
    let m: RegExpMatchArray | null;
    if (line === '}') {
      const done = stack.pop();
      if (stack.length === 0 && done) out.push(done);
    } else if ((m = line.match(/^(.*\S)\s*\{$/))) {
      const sec: ViciSection = {};
      if (stack.length > 0) stack[stack.length - 1]![m[1]!] = sec;
      stack.push(sec);
    } else if ((m = line.match(/^(\S+)\s*(?:=\s*)?\[$/))) {
      listKey = m[1]!; listVals = [];
    } else if ((m = line.match(/^(\S+)\s*=\s?(.*)$/))) {
      if (stack.length > 0) stack[stack.length - 1]![m[1]!] = m[2]!;
    }
    // anything else (e.g. swanctl progress output) is ignored
  }
  return out;
}

export interface ChildSa {
  /** Child config name ('net'). */
  name: string;
  uniqueId: number;
  reqid: number;
  state: string;
  mode: string;
  protocol: string;
  encap: boolean;
  spiIn: string;
  spiOut: string;
  encrAlg?: string;
  encrKeysize?: number;
  integAlg?: string;
  dhGroup?: string;
  bytesIn: number;
  packetsIn: number;
  bytesOut: number;
  packetsOut: number;
  localTs: string[];
  remoteTs: string[];
  raw: ViciSection;
}

export interface IkeSa {
  /** Connection name ('s2s'). */
  name: string;
  uniqueId: number;
  version: number;
  state: string;
  localHost: string;
  localPort: number;
  localId: string;
  remoteHost: string;
  remotePort: number;
  remoteId: string;
  initiator: boolean;
  spiInitiator: string;
  spiResponder: string;
  natLocal: boolean;
  natRemote: boolean;
  natAny: boolean;
  encrAlg?: string;
  encrKeysize?: number;
  integAlg?: string;
  prfAlg?: string;
  dhGroup?: string;
  children: ChildSa[];
  raw: ViciSection;
}

const str = (s: ViciSection, k: string): string => (typeof s[k] === 'string' ? (s[k] as string) : '');
const num = (s: ViciSection, k: string): number => Number(str(s, k) || 0);
const optStr = (s: ViciSection, k: string): string | undefined => (typeof s[k] === 'string' ? (s[k] as string) : undefined);
const optNum = (s: ViciSection, k: string): number | undefined => (typeof s[k] === 'string' ? Number(s[k]) : undefined);
const arr = (s: ViciSection, k: string): string[] => (Array.isArray(s[k]) ? (s[k] as string[]) : []);

/** Convert parsed `list-sa` events into typed IKE/CHILD SA objects. */
export function toIkeSas(events: ViciSection[]): IkeSa[] {
  const sas: IkeSa[] = [];
  for (const ev of events) {
    for (const [name, v] of Object.entries(ev)) {
      if (typeof v !== 'object' || Array.isArray(v)) continue;
      const children: ChildSa[] = [];
      const cs = v['child-sas'];
      if (cs && typeof cs === 'object' && !Array.isArray(cs)) {
        for (const c of Object.values(cs)) {
          if (typeof c !== 'object' || Array.isArray(c)) continue;
          children.push({
            name: str(c, 'name'),
            uniqueId: num(c, 'uniqueid'),
            reqid: num(c, 'reqid'),
            state: str(c, 'state'),
            mode: str(c, 'mode'),
            protocol: str(c, 'protocol'),
            encap: str(c, 'encap') === 'yes',
            spiIn: str(c, 'spi-in'),
            spiOut: str(c, 'spi-out'),
            encrAlg: optStr(c, 'encr-alg'),
            encrKeysize: optNum(c, 'encr-keysize'),
            integAlg: optStr(c, 'integ-alg'),
            dhGroup: optStr(c, 'dh-group'),
            bytesIn: num(c, 'bytes-in'),
            packetsIn: num(c, 'packets-in'),
            bytesOut: num(c, 'bytes-out'),
            packetsOut: num(c, 'packets-out'),
            localTs: arr(c, 'local-ts'),
            remoteTs: arr(c, 'remote-ts'),
            raw: c,
          });
        }
      }
      sas.push({
        name,
        uniqueId: num(v, 'uniqueid'),
        version: num(v, 'version'),
        state: str(v, 'state'),
        localHost: str(v, 'local-host'),
        localPort: num(v, 'local-port'),
        localId: str(v, 'local-id'),
        remoteHost: str(v, 'remote-host'),
        remotePort: num(v, 'remote-port'),
        remoteId: str(v, 'remote-id'),
        initiator: str(v, 'initiator') === 'yes',
        spiInitiator: str(v, 'initiator-spi'),
        spiResponder: str(v, 'responder-spi'),
        natLocal: str(v, 'nat-local') === 'yes',
        natRemote: str(v, 'nat-remote') === 'yes',
        natAny: str(v, 'nat-any') === 'yes',
        encrAlg: optStr(v, 'encr-alg'),
        encrKeysize: optNum(v, 'encr-keysize'),
        integAlg: optStr(v, 'integ-alg'),
        prfAlg: optStr(v, 'prf-alg'),
        dhGroup: optStr(v, 'dh-group'),
        children,
        raw: v,
      });
    }
  }
  return sas;
}

// ------------------------------------------------------------ charon --

export interface CharonOptions {
  /** Namespace to run in. */
  ns: string;
  /** Label used in file names. */
  name: string;
  mode: CharonMode;
  /** If given, the daemon is spawned through the topology (killed by net.destroy()). */
  net?: Topology;
  /** Work dir (default: fresh temp dir). */
  dir?: string;
  logLevels?: Record<string, number>;
  charonExtra?: string;
  /** Wait for VICI at most this long (default 20 s; UML is slower). */
  startTimeoutMs?: number;
}

export interface Charon {
  readonly name: string;
  readonly ns: string;
  /** Daemon dir: strongswan.conf, swanctl.conf, charon.log, run/. */
  readonly dir: string;
  readonly viciUri: string;
  readonly logFile: string;
  readonly proc: Proc;
  /** Run swanctl against this daemon (adds --uri and STRONGSWAN_CONF). */
  swanctl(args: string[], opts?: { allowFail?: boolean; timeoutMs?: number }): Promise<RunResult>;
  /** Write swanctl.conf into dir and `--load-all --file` it. */
  load(swanctlConf: string): Promise<void>;
  /** `--initiate --child NAME` (blocks until the CHILD_SA is up or fails). */
  initiate(o: { child: string; ike?: string; timeoutS?: number }): Promise<RunResult>;
  /** `--terminate --ike NAME` or `--child NAME`. */
  terminate(o: { ike?: string; child?: string; timeoutS?: number }): Promise<RunResult>;
  /** Parsed `--list-sas --pretty`. */
  listSas(): Promise<IkeSa[]>;
  /** Wait until an IKE_SA `ike` is ESTABLISHED with an INSTALLED child `child`. */
  waitEstablished(o?: { ike?: string; child?: string; timeoutMs?: number }): Promise<IkeSa>;
  /** Last lines of charon.log. */
  logTail(lines?: number): string;
  stop(): Promise<void>;
}

/** Start one charon in a namespace and wait until its VICI socket answers. */
export async function startCharon(o: CharonOptions): Promise<Charon> {
  const dir = o.dir ?? makeTempDir(`fs-charon-${o.name}-${newRunId()}`);
  mkdirSync(join(dir, 'run'), { recursive: true });
  const confFile = join(dir, 'strongswan.conf');
  writeFileSync(confFile, renderStrongswanConf({ dir, mode: o.mode, logLevels: o.logLevels, charonExtra: o.charonExtra }));
  const env = { ...process.env, STRONGSWAN_CONF: confFile };
  const viciUri = `unix://${dir}/charon.vici`;
  const logFile = join(dir, 'charon.log');
  // private /run for the compiled-in pid file (ip netns exec = private mount ns)
  const argv = ['sh', '-c', `mount --bind '${dir}/run' /run && exec '${CHARON}'`];
  const stdoutLog = join(dir, 'charon.stdout');
  const proc = o.net
    ? o.net.spawn(Object.keys(o.net.ns).find((k) => o.net!.ns[k] === o.ns) ?? o.ns, argv, { env, logFile: stdoutLog })
    : spawnTracked(nsExecArgv(o.ns, argv), stdoutLog, { env });

  const swanctl = (args: string[], ro: { allowFail?: boolean; timeoutMs?: number } = {}): Promise<RunResult> =>
    run([SWANCTL, ...args, '--uri', viciUri], { env, allowFail: ro.allowFail, timeoutMs: ro.timeoutMs ?? 60_000 });
  const logTail = (lines = 40): string =>
    (existsSync(logFile) ? readFileSync(logFile, 'utf8') : proc.log()).trimEnd().split('\n').slice(-lines).join('\n');

  const charon: Charon = {
    name: o.name,
    ns: o.ns,
    dir,
    viciUri,
    logFile,
    proc,
    swanctl,
    async load(conf) {
      const f = join(dir, 'swanctl.conf');
      writeFileSync(f, conf);
      const r = await swanctl(['--load-all', '--file', f], { allowFail: true });
      // missing x509/ private/ ... subdirs are reported but harmless
      if (r.code !== 0) throw new Error(`swanctl --load-all failed for ${o.name}:\n${r.stdout}${r.stderr}`);
    },
    async initiate({ child, ike, timeoutS = 30 }) {
      const args = ['--initiate', '--child', child, '--timeout', String(timeoutS)];
      if (ike) args.push('--ike', ike);
      const r = await swanctl(args, { allowFail: true, timeoutMs: (timeoutS + 10) * 1000 });
      if (r.code !== 0) throw new Error(`initiate ${child} failed on ${o.name}:\n${r.stdout}${r.stderr}\n--- charon.log:\n${logTail()}`);
      return r;
    },
    async terminate({ ike, child, timeoutS = 10 }) {
      const args = ['--terminate', '--timeout', String(timeoutS)];
      if (ike) args.push('--ike', ike);
      if (child) args.push('--child', child);
      return swanctl(args, { allowFail: true, timeoutMs: (timeoutS + 10) * 1000 });
    },
    async listSas() {
      const r = await swanctl(['--list-sas', '--pretty', '--noblock']);
      return toIkeSas(parseViciPretty(r.stdout));
    },
    async waitEstablished({ ike, child, timeoutMs = 20_000 } = {}) {
      return waitFor(`${o.name}: IKE_SA ${ike ?? '*'} ESTABLISHED with child ${child ?? '*'} INSTALLED`, async () => {
        const sas = await charon.listSas();
        return sas.find((s) => (!ike || s.name === ike) && s.state === 'ESTABLISHED' &&
          s.children.some((c) => (!child || c.name === child) && c.state === 'INSTALLED'));
      }, { timeoutMs, intervalMs: 200 });
    },
    logTail,
    async stop() { await proc.stop(3000); },
  };

  try {
    await waitFor(`charon ${o.name} VICI`, async () => {
      if (!proc.running) throw new Error(`charon exited: ${proc.log()}`);
      return (await swanctl(['--stats'], { allowFail: true, timeoutMs: 10_000 })).code === 0;
    }, { timeoutMs: o.startTimeoutMs ?? 20_000, intervalMs: 100 });
  } catch (e) {
    await proc.stop(1000);
    throw new Error(`${(e as Error).message}\n--- ${logFile}:\n${logTail()}`);
  }
  return charon;
}

// ------------------------------------------------------------ libreswan --

export interface LibreswanConnOptions {
  name?: string;
  left: string;
  leftId: string;
  leftSubnet: string;
  /** Source IP for the route to the remote subnet (needed without default route). */
  leftSourceIp?: string;
  right: string;
  rightId: string;
  rightSubnet: string;
  /** Default aes_gcm256-sha2_256-dh31. */
  ike?: string;
  /** Default aes_gcm256. */
  esp?: string;
  encapsulation?: 'yes' | 'no' | 'auto';
  auto?: 'add' | 'start' | 'ondemand' | 'ignore';
  dpdDelay?: string;
  dpdTimeout?: string;
  ikeLifetime?: string;
  saLifetime?: string;
  extra?: string;
}

/** ipsec.conf with `config setup` (log to `logFile`) and one PSK site-to-site conn. */
export function renderLibreswanConf(logFile: string, conns: LibreswanConnOptions[], debug = false): string {
  const body = conns.map((c) => `conn ${c.name ?? 's2s'}
    ikev2=yes
    authby=secret
    left=${c.left}
    leftid=${c.leftId}
    leftsubnet=${c.leftSubnet}
${c.leftSourceIp ? `    leftsourceip=${c.leftSourceIp}\n` : ''}    leftupdown=/usr/libexec/ipsec/_updown.xfrm
    right=${c.right}
    rightid=${c.rightId}
    rightsubnet=${c.rightSubnet}
    ike=${c.ike ?? 'aes_gcm256-sha2_256-dh31'}
    esp=${c.esp ?? 'aes_gcm256'}
    encapsulation=${c.encapsulation ?? 'no'}
${c.dpdDelay ? `    dpddelay=${c.dpdDelay}\n    dpdtimeout=${c.dpdTimeout ?? '30s'}\n` : ''}${c.ikeLifetime ? `    ikelifetime=${c.ikeLifetime}\n` : ''}${c.saLifetime ? `    salifetime=${c.saLifetime}\n` : ''}${c.extra ?? ''}    auto=${c.auto ?? 'add'}
`).join('\n');
  return `config setup
    logfile=${logFile}
    logtime=yes
    plutodebug=${debug ? 'all' : 'none'}
    dnssec-enable=no

${body}`;
}

export interface TrafficStatus {
  serial: number;
  conn: string;
  type: string;
  inBytes: number;
  outBytes: number;
  id: string;
  raw: Record<string, string>;
}

/** Parse `ipsec whack --trafficstatus` lines (`006 #2: "s2s", type=ESP, inBytes=...`). */
export function parseTrafficStatus(text: string): TrafficStatus[] {
  const out: TrafficStatus[] = [];
  for (const line of text.split('\n')) {
    const m = line.match(/#(\d+):\s+"([^"]+)"(?:\[[^\]]*\])?[^,]*,\s*(.*)$/);
    if (!m) continue;
    const raw: Record<string, string> = {};
    for (const kv of m[3]!.split(/,\s*/)) {
      const i = kv.indexOf('=');
      if (i > 0) raw[kv.slice(0, i).trim()] = kv.slice(i + 1).trim().replace(/^'(.*)'$/, '$1');
    }
    out.push({
      serial: Number(m[1]), conn: m[2]!, type: raw.type ?? '',
      inBytes: Number(raw.inBytes ?? 0), outBytes: Number(raw.outBytes ?? 0), id: raw.id ?? '', raw,
    });
  }
  return out;
}

export interface PlutoOptions {
  ns: string;
  /** ipsec.conf text; its logfile should point into `dir` (see renderLibreswanConf). */
  config: string | ((dir: string) => string);
  /** ipsec.secrets text, e.g. `@a @b : PSK "secret"`. */
  secrets: string;
  dir?: string;
  net?: Topology;
  libreswanRoot?: string;
  startTimeoutMs?: number;
}

export interface Pluto {
  readonly ns: string;
  readonly dir: string;
  readonly logFile: string;
  readonly proc: Proc;
  /** Run whack with --rundir (in the namespace). */
  whack(args: string[], opts?: { allowFail?: boolean; timeoutMs?: number }): Promise<RunResult>;
  /** addconn + --listen + --rereadsecrets for connection `name`. */
  addConn(name: string): Promise<void>;
  initiate(name: string, timeoutMs?: number): Promise<RunResult>;
  terminate(name: string): Promise<RunResult>;
  trafficStatus(): Promise<TrafficStatus[]>;
  logTail(lines?: number): string;
  stop(): Promise<void>;
}

/** Reason string when Libreswan is not unpacked (see scripts/install-deps.sh), else null. */
export function libreswanMissing(root = LIBRESWAN_ROOT): string | null {
  return existsSync(join(root, 'usr/libexec/ipsec/pluto')) ? null : `Libreswan not unpacked in ${root} (run scripts/install-deps.sh)`;
}

/**
 * Start pluto in `ns` (needs kernel XFRM+ESP: inside UML). Its helpers are
 * bind-mounted on /usr/libexec/ipsec in pluto's private mount namespace.
 */
export async function startPluto(o: PlutoOptions): Promise<Pluto> {
  const root = o.libreswanRoot ?? LIBRESWAN_ROOT;
  const lsx = join(root, 'usr/libexec/ipsec');
  const dir = o.dir ?? makeTempDir(`fs-pluto-${newRunId()}`);
  const rundir = join(dir, 'run'), nss = join(dir, 'nss'), ipsecd = join(dir, 'ipsec.d');
  for (const d of [rundir, nss, ipsecd]) mkdirSync(d, { recursive: true });
  const confFile = join(dir, 'ipsec.conf'), secretsFile = join(dir, 'ipsec.secrets');
  writeFileSync(confFile, typeof o.config === 'function' ? o.config(dir) : o.config);
  writeFileSync(secretsFile, o.secrets);
  chmodSync(secretsFile, 0o600);
  await run(['certutil', '-N', '-d', `sql:${nss}`, '--empty-password']);
  const logFile = (readFileSync(confFile, 'utf8').match(/logfile=(\S+)/)?.[1]) ?? join(dir, 'pluto.stdout');
  const script = `mount -t tmpfs tmpfs /usr/libexec && mkdir /usr/libexec/ipsec && mount --bind '${lsx}' /usr/libexec/ipsec && ` +
    `exec /usr/libexec/ipsec/pluto --nofork --config '${confFile}' --rundir '${rundir}' --nssdir '${nss}' ` +
    `--ipsecdir '${ipsecd}' --secretsfile '${secretsFile}' --dumpdir '${rundir}'`;
  const stdoutLog = join(dir, 'pluto.stdout');
  const proc = o.net
    ? o.net.spawn(Object.keys(o.net.ns).find((k) => o.net!.ns[k] === o.ns) ?? o.ns, ['sh', '-c', script], { logFile: stdoutLog })
    : spawnTracked(nsExecArgv(o.ns, ['sh', '-c', script]), stdoutLog);
  const ctl = join(rundir, 'pluto.ctl');
  const whack = (args: string[], ro: { allowFail?: boolean; timeoutMs?: number } = {}): Promise<RunResult> =>
    run(nsExecArgv(o.ns, [join(lsx, 'whack'), '--rundir', rundir, ...args]), { allowFail: ro.allowFail, timeoutMs: ro.timeoutMs ?? 60_000 });
  const logTail = (lines = 40): string =>
    (existsSync(logFile) ? readFileSync(logFile, 'utf8') : proc.log()).trimEnd().split('\n').slice(-lines).join('\n');
  try {
    await waitFor('pluto control socket', () => {
      if (!proc.running) throw new Error(`pluto exited: ${proc.log()}`);
      return existsSync(ctl);
    }, { timeoutMs: o.startTimeoutMs ?? 30_000 });
  } catch (e) {
    await proc.stop(1000);
    throw e;
  }
  return {
    ns: o.ns,
    dir,
    logFile,
    proc,
    whack,
    async addConn(name) {
      await run(nsExecArgv(o.ns, [join(lsx, 'addconn'), '--ctlsocket', ctl, '--config', confFile, name]));
      await whack(['--listen']);
      await whack(['--rereadsecrets']);
    },
    async initiate(name, timeoutMs = 60_000) {
      const r = await whack(['--name', name, '--initiate'], { allowFail: true, timeoutMs });
      if (r.code !== 0) throw new Error(`pluto initiate ${name} failed (${r.code}):\n${r.stdout}${r.stderr}\n--- pluto log:\n${logTail()}`);
      return r;
    },
    terminate: (name) => whack(['--name', name, '--terminate'], { allowFail: true }),
    async trafficStatus() {
      return parseTrafficStatus((await whack(['--trafficstatus'], { allowFail: true })).stdout);
    },
    logTail,
    async stop() {
      if (proc.running) await whack(['--shutdown'], { allowFail: true, timeoutMs: 10_000 }).catch(() => undefined);
      await proc.stop(3000);
    },
  };
}

