/**
 * Traffic between site hosts, with loss accounting: ping (count, or a long-running flow
 * whose missing sequence numbers give the lost packets and the longest outage) and iperf3.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { inNs, run, sleep } from "./util.js";

export interface PingResult {
  sent: number;
  received: number;
  lost: number;
  /** Replies per sequence number received (duplicates ignored). */
  rttAvgMs?: number;
  output: string;
}

/** Parse ping's summary ("5 packets transmitted, 5 received, ..., rtt min/avg/max"). */
export function parsePingSummary(out: string): { sent: number; received: number; rttAvgMs?: number } {
  const m = out.match(/(\d+) packets transmitted, (\d+) (?:packets )?received/);
  const rtt = out.match(/= [\d.]+\/([\d.]+)\//);
  return { sent: m ? Number(m[1]) : 0, received: m ? Number(m[2]) : 0, rttAvgMs: rtt ? Number(rtt[1]) : undefined };
}

/** `ping -c count` from the namespace `ns` to `dst`. Never throws on loss: read the result. */
export async function ping(ns: string, dst: string, o: { count?: number; intervalS?: number; waitS?: number; src?: string; size?: number } = {}): Promise<PingResult> {
  const count = o.count ?? 3;
  const argv = ["ping", "-n", "-q", "-c", String(count), "-i", String(o.intervalS ?? 0.2), "-W", String(o.waitS ?? 2)];
  if (o.src) argv.push("-I", o.src);
  if (o.size) argv.push("-s", String(o.size));
  argv.push(dst);
  const r = await run(inNs(ns, argv), { allowFail: true, timeoutMs: (count * (o.intervalS ?? 0.2) + (o.waitS ?? 2) + 10) * 1000 });
  const s = parsePingSummary(r.stdout);
  return { ...s, lost: s.sent - s.received, output: (r.stdout + r.stderr).trim() };
}

export interface FlowResult {
  sent: number;
  received: number;
  lost: number;
  intervalMs: number;
  /** Longest run of consecutive lost packets, in seconds (the outage). */
  longestGapS: number;
  /** Number of separate loss bursts. */
  bursts: number;
  durationS: number;
  /** Wall-clock time of the last reply before the longest gap (ISO), to match against logs. */
  longestGapAt?: string;
}

/** Analyse the received sequence numbers of a flow that sent `sent` packets. */
export function analyseFlow(seqs: Iterable<number>, sent: number, intervalMs: number, durationS: number, times?: Map<number, number>): FlowResult {
  const got = new Set(seqs);
  let received = 0, longest = 0, run = 0, bursts = 0, lastOk = 0, gapAfter = 0;
  for (let s = 1; s <= sent; s++) {
    if (got.has(s)) {
      received++;
      run = 0;
      lastOk = s;
    } else {
      if (run === 0) bursts++;
      run++;
      if (run > longest) {
        longest = run;
        gapAfter = lastOk;
      }
    }
  }
  const r: FlowResult = { sent, received, lost: sent - received, intervalMs, longestGapS: (longest * intervalMs) / 1000, bursts, durationS };
  const t = times?.get(gapAfter);
  if (longest > 0 && t !== undefined) r.longestGapAt = new Date(t).toISOString();
  return r;
}

/** A continuous ping from `ns` to `dst` every `intervalMs` (1 = 1,000 packets/s); stop() gives the losses. */
export class PingFlow {
  private readonly child: ChildProcess;
  private readonly seqs = new Set<number>();
  private readonly times = new Map<number, number>();
  private buf = "";
  private out = "";
  private readonly t0 = Date.now();
  private readonly exited: Promise<void>;

  constructor(readonly ns: string, readonly dst: string, readonly intervalMs = 10) {
    // -W 2: a reply later than 2 s counts as lost; -s 56; no -q: one line per reply
    this.child = spawn("ip", inNs(ns, ["ping", "-n", "-D", "-i", String(intervalMs / 1000), "-W", "2", dst]).slice(1), { stdio: ["ignore", "pipe", "pipe"] });
    this.child.stdout!.on("data", (d: Buffer) => {
      this.buf += d.toString();
      let i: number;
      while ((i = this.buf.indexOf("\n")) >= 0) {
        const line = this.buf.slice(0, i);
        this.buf = this.buf.slice(i + 1);
        const m = line.match(/icmp_seq=(\d+)/);
        if (m && /bytes from/.test(line)) {
          this.seqs.add(Number(m[1]));
          const ts = line.match(/^\[(\d+\.\d+)\]/);
          if (ts) this.times.set(Number(m[1]), Number(ts[1]) * 1000);
        }
        else this.out += line + "\n";
      }
    });
    this.child.stderr!.on("data", (d: Buffer) => (this.out += d.toString()));
    this.exited = new Promise((r) => this.child.once("exit", () => r()));
  }

  /** Replies so far. */
  get received(): number {
    return this.seqs.size;
  }

  /** Stop (SIGINT: ping prints its summary), wait for late replies, return the losses. */
  async stop(): Promise<FlowResult> {
    const durationS = (Date.now() - this.t0) / 1000;
    this.child.kill("SIGINT");
    await Promise.race([this.exited, sleep(5000)]);
    this.child.kill("SIGKILL");
    const s = parsePingSummary(this.out);
    if (s.sent === 0) throw new Error(`ping ${this.dst} in ${this.ns} gave no summary:\n${this.out.slice(-2000)}`);
    // the last ~2 s of packets may be in flight when we stop: count a trailing run of
    // missing replies within the wait time as not sent
    let sent = s.sent;
    const tail = Math.ceil(2000 / this.intervalMs);
    for (let k = 0; k < tail && sent > 0 && !this.seqs.has(sent); k++) sent--;
    return analyseFlow(this.seqs, sent, this.intervalMs, durationS, this.times);
  }
}

export interface IperfResult {
  bitsPerSecond: number;
  retransmits?: number;
  lostPackets?: number;
  packets?: number;
  /**
   * UDP: datagrams the receiving host's kernel dropped because iperf3's socket buffer was
   * full (RcvbufErrors of the server namespace during the run): lost at the receiver, after
   * the tunnel delivered them.
   */
  receiverBufferDrops?: number;
  raw: unknown;
}

/** UDP RcvbufErrors of a namespace (/proc/net/snmp). */
export async function udpRcvbufErrors(ns: string): Promise<number> {
  const r = await run(inNs(ns, ["cat", "/proc/net/snmp"]), { allowFail: true });
  const lines = r.stdout.split("\n").filter((l) => l.startsWith("Udp:"));
  if (lines.length < 2) return 0;
  const names = lines[0]!.split(/\s+/);
  const values = lines[1]!.split(/\s+/);
  return Number(values[names.indexOf("RcvbufErrors")] ?? 0);
}

/** iperf3 for `seconds` from client ns to server ns (server started and stopped here). */
export async function iperf3(serverNs: string, clientNs: string, serverAddr: string, o: { seconds?: number; udp?: boolean; bitrate?: string; length?: number; port?: number; window?: string } = {}): Promise<IperfResult> {
  const port = String(o.port ?? 5201);
  const rcvbufBefore = o.udp ? await udpRcvbufErrors(serverNs) : 0;
  const server = spawn("ip", ["netns", "exec", serverNs, "iperf3", "-s", "-1", "-p", port], { stdio: "ignore" });
  try {
    await sleep(300);
    const argv = ["iperf3", "-c", serverAddr, "-p", port, "-t", String(o.seconds ?? 3), "-J"];
    if (o.udp) argv.push("-u", "-b", o.bitrate ?? "1M");
    else if (o.bitrate) argv.push("-b", o.bitrate);
    if (o.length) argv.push("-l", String(o.length));
    // -w: socket buffers of both ends (the client passes it to the server); UDP at a steady
    // rate through a busy 2-vCPU machine overflows the default 208 KiB receive buffer whenever
    // the iperf3 server is not scheduled for ~200 ms.
    if (o.window) argv.push("-w", o.window);
    const r = await run(inNs(clientNs, argv), { allowFail: true, timeoutMs: ((o.seconds ?? 3) + 20) * 1000 });
    let j: Record<string, any>;
    try {
      j = JSON.parse(r.stdout) as Record<string, any>;
    } catch {
      throw new Error(`iperf3 ${clientNs} -> ${serverAddr}: no JSON output (exit ${r.code}): ${r.stderr || r.stdout}`);
    }
    if (j.error) throw new Error(`iperf3 ${clientNs} -> ${serverAddr}: ${j.error}`);
    const end = j.end ?? {};
    if (o.udp) {
      const sum = end.sum ?? {};
      const receiverBufferDrops = (await udpRcvbufErrors(serverNs)) - rcvbufBefore;
      return { bitsPerSecond: Number(sum.bits_per_second ?? 0), lostPackets: Number(sum.lost_packets ?? 0), packets: Number(sum.packets ?? 0), receiverBufferDrops, raw: j };
    }
    return { bitsPerSecond: Number(end.sum_received?.bits_per_second ?? 0), retransmits: Number(end.sum_sent?.retransmits ?? 0), raw: j };
  } finally {
    server.kill("SIGKILL");
  }
}
