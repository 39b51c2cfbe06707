/**
 * Packet captures in a network namespace (dumpcap, the capture engine behind
 * tshark) and pcap analysis with `tshark -r`.
 *
 *   const cap = await startCapture(net.nsOf('gwa'), 'veth0', { filter: 'udp or ip proto 50' });
 *   ... traffic ...
 *   await cap.stop();                                  // flushes and closes the file
 *   await countIke(cap.file);  await countEspInUdp(cap.file);  await countRawEsp(cap.file);
 *   await assertNoPackets(cap.file, 'ip.src==10.1.0.0/16 && ip.dst==10.2.0.0/16');
 *
 * dumpcap is used for capturing because tshark takes seconds to start (many
 * seconds inside UML); analysis always reads the finished file. Counting uses
 * one field per packet and never pipes into `head` (SIGPIPE).
 */
import { existsSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { makeTempDir, newRunId, run, sleep, spawnTracked, waitFor, type Proc } from './util.js';
import { nsExecArgv } from './netns.js';

export interface CaptureOptions {
  /** Capture (BPF) filter, e.g. 'udp or ip proto 50'. */
  filter?: string;
  /** Output file (default: a temp dir file *.pcapng). */
  file?: string;
  /** Snap length in bytes (default full packets). */
  snaplen?: number;
  /** Wait at most this long for the capture to start (default 15 s). */
  startTimeoutMs?: number;
}

export interface Capture {
  readonly file: string;
  readonly ns: string | null;
  readonly iface: string;
  /** Wait `flushMs` (default 500) for in-flight packets, stop dumpcap, wait for the file to be closed. */
  stop(flushMs?: number): Promise<void>;
  readonly proc: Proc;
}

/**
 * Start dumpcap on `iface` inside namespace `ns` (null = the current one) and
 * resolve once it is capturing ("Capturing on" / pcapng header written).
 */
export async function startCapture(ns: string | null, iface: string, opts: CaptureOptions = {}): Promise<Capture> {
  const dir = opts.file ? null : makeTempDir(`fs-cap-${newRunId()}`);
  const file = opts.file ?? join(dir!, `${iface}.pcapng`);
  const argv = ['dumpcap', '-i', iface, '-w', file];
  if (opts.filter) argv.push('-f', opts.filter);
  if (opts.snaplen) argv.push('-s', String(opts.snaplen));
  const logFile = `${file}.log`;
  const proc = spawnTracked(ns ? nsExecArgv(ns, argv) : argv, logFile);
  await waitFor(`dumpcap on ${iface} capturing`, () => {
    if (!proc.running) throw new Error(`dumpcap exited: ${proc.log()}`);
    return /Capturing on/.test(proc.log()) && existsSync(file) && statSync(file).size > 0;
  }, { timeoutMs: opts.startTimeoutMs ?? 15_000, intervalMs: 50 });
  return {
    file,
    ns,
    iface,
    proc,
    async stop(flushMs = 500) {
      if (!proc.running) return;
      await sleep(flushMs);
      // SIGINT = the normal way to end dumpcap: it writes the final stats and closes the file
      try { process.kill(proc.pid, 'SIGINT'); } catch { /* gone */ }
      const done = await Promise.race([proc.exited.then(() => true), sleep(5000).then(() => false)]);
      if (!done) await proc.kill();
      else await proc.stop(0);
    },
  };
}

/** Number of packets in `file` matching the tshark display filter. */
export async function countPackets(file: string, displayFilter: string): Promise<number> {
  const r = await run(['tshark', '-n', '-r', file, '-Y', displayFilter, '-T', 'fields', '-e', 'frame.number'], { timeoutMs: 120_000 });
  return r.stdout.split('\n').filter((l) => l.trim() !== '').length;
}

/** IKE packets (any port). */
export const countIke = (file: string): Promise<number> => countPackets(file, 'isakmp');
/** ESP in UDP (RFC 3948, port 4500). */
export const countEspInUdp = (file: string): Promise<number> => countPackets(file, 'udp.port == 4500 && esp');
/** Plain ESP (IP protocol 50). */
export const countRawEsp = (file: string): Promise<number> => countPackets(file, 'ip.proto == 50');

/** Summary lines of (at most `max`) packets matching a filter, for messages. */
export async function describePackets(file: string, displayFilter = '', max = 10): Promise<string> {
  const argv = ['tshark', '-n', '-r', file, '-c', String(max)];
  if (displayFilter) argv.push('-Y', displayFilter);
  const r = await run(argv, { allowFail: true, timeoutMs: 60_000 });
  return r.stdout.trimEnd();
}

/** Throw if any packet in `file` matches `displayFilter` (e.g. cleartext between sites). */
export async function assertNoPackets(file: string, displayFilter: string): Promise<void> {
  const n = await countPackets(file, displayFilter);
  if (n !== 0) {
    throw new Error(`expected no packets matching "${displayFilter}" in ${file}, found ${n}:\n${await describePackets(file, displayFilter)}`);
  }
}

/** Counts of the usual IPsec packet classes in one go. */
export async function ipsecSummary(file: string): Promise<{ ike: number; espInUdp: number; rawEsp: number; total: number }> {
  const r = await run(['tshark', '-n', '-r', file, '-T', 'fields', '-e', 'frame.protocols', '-e', 'udp.port'], { timeoutMs: 120_000 });
  let ike = 0, espInUdp = 0, rawEsp = 0, total = 0;
  for (const line of r.stdout.split('\n')) {
    if (!line.trim()) continue;
    total++;
    const [protos = '', ports = ''] = line.split('\t');
    const layers = protos.split(':');
    if (layers.includes('isakmp')) ike++;
    if (layers.includes('esp')) {
      if (layers.includes('udp') && ports.split(',').includes('4500')) espInUdp++;
      else if (!layers.includes('udp')) rawEsp++;
    }
  }
  return { ike, espInUdp, rawEsp, total };
}
