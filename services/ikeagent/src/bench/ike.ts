/**
 * `fleetswan bench ike`: an IKEv2 handshake load generator. Runs N IKE_SA + CHILD_SA
 * handshakes (IKE_SA_INIT + IKE_AUTH with PSK, RFC 7296 §1.2) with C in flight against a
 * responder at ADDR:PORT, spread over worker threads (each a lean initiator with its own
 * UDP socket, ike-load-worker.ts), and reports handshakes/s, latency percentiles and, given
 * the responder's pid, its CPU time per handshake (utime+stime from /proc/PID/stat before
 * and after) and its RSS (before, after, and the delta per established SA).
 *
 * All SAs come from one address; the responder must not treat that as an attack (charon:
 * dos_protection = no, raised block/cookie thresholds) and must not replace SAs of the
 * same identity (no INITIAL_CONTACT is sent; charon: unique = no; fleetswan:
 * unique_ids: false), or use --id with %d for one identity per handshake.
 */
import { readdirSync, readFileSync } from "node:fs";
import { availableParallelism } from "node:os";
import { parseArgs } from "node:util";
import { Worker } from "node:worker_threads";
import { UsageError, type CliCommand } from "@fleetswan/common";
import type { WorkerParams, WorkerResult } from "./ike-load-worker.js";

const USAGE = `usage: fleetswan bench ike ADDR[:PORT] [options]

IKEv2 handshake load generator: N IKE_SA + CHILD_SA handshakes (IKE_SA_INIT + IKE_AUTH,
PSK, one CHILD SA) with C in flight against the responder at ADDR:PORT (default port 500).

  -n, --count N          handshakes (default 5000)
  -c, --concurrency C    handshakes in flight (default 64)
  --workers W            initiator threads, each with its own UDP socket (default 2)
  --psk TEXT             pre-shared key (default "bench pre-shared key, 32+ bytes long")
  --id ID                our identity (default bench-i.example.test); "%d" = handshake number
  --ike PROPOSAL         IKE proposal (default aes256gcm16-prfsha256-curve25519; its first DH group is sent)
  --esp PROPOSAL         ESP proposal (default aes256gcm16)
  --tsi CIDR[,CIDR]      our traffic selectors (default 10.1.0.0/16)
  --tsr CIDR[,CIDR]      the responder's (default 10.2.0.0/16)
  --local ADDR           address to send from
  --pid PID              the responder's pid: report its CPU time per handshake and RSS
  --settle-ms MS         wait before reading the responder's RSS at the end (default 1000)
  --timeout MS           first retransmission timeout (default 2000, doubling)
  --tries N              retransmissions before a handshake counts as failed (default 3)
  --label TEXT           name of this run in the output
  --json                 print one JSON object instead of text
`;

const CLK_TCK = 100; // USER_HZ: /proc/PID/stat counts in 1/100 s on every Linux architecture

/** utime + stime of a process (all threads), seconds. */
export function procCpuSeconds(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  // fields after "pid (comm)": state is f[0], utime f[11], stime f[12] (man 5 proc: 14, 15)
  return (Number(f[11]) + Number(f[12])) / CLK_TCK;
}

/** CPU seconds per thread of a process (thread name -> utime+stime, threads of one name summed). */
export function procThreadCpuSeconds(pid: number): Record<string, number> {
  const out: Record<string, number> = {};
  let tids: string[];
  try {
    tids = readdirSync(`/proc/${pid}/task`);
  } catch {
    return out;
  }
  for (const tid of tids) {
    try {
      const stat = readFileSync(`/proc/${pid}/task/${tid}/stat`, "utf8");
      // the main thread (tid = pid) apart from the helper threads of the same name (V8's GC and compiler threads are "node" too)
      const name = stat.slice(stat.indexOf("(") + 1, stat.lastIndexOf(")")) + (tid === String(pid) ? "/main" : "");
      const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      out[name] = (out[name] ?? 0) + (Number(f[11]) + Number(f[12])) / CLK_TCK;
    } catch {
      // the thread ended
    }
  }
  return out;
}

/** Busy and total jiffies of the whole host (/proc/stat "cpu" line; busy = all but idle and iowait). */
export function hostCpuJiffies(): { busy: number; total: number } {
  const f = readFileSync("/proc/stat", "utf8").split("\n", 1)[0]!.trim().split(/\s+/).slice(1).map(Number);
  const total = f.reduce((a, b) => a + b, 0);
  return { busy: total - (f[3] ?? 0) - (f[4] ?? 0), total };
}

/** Resident set size of a process, bytes. */
export function procRssBytes(pid: number): number {
  const m = /^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
  return m ? Number(m[1]) * 1024 : 0;
}

export interface IkeBenchResult {
  label: string;
  target: string;
  count: number;
  concurrency: number;
  workers: number;
  done: number;
  failed: number;
  retransmits: number;
  errors: Record<string, number>;
  seconds: number;
  rate: number;
  p50Ms: number;
  p99Ms: number;
  maxMs: number;
  generatorCpuSeconds: number;
  /** Generator CPU (all its threads) per completed handshake, ms. */
  generatorCpuMsPerHandshake: number;
  /** Share of the host's CPUs busy during the run (everything on the machine, 1 = all saturated), and how many. */
  hostBusy: number;
  hostCpus: number;
  responder?: {
    pid: number;
    cpuSeconds: number;
    cpuMsPerHandshake: number;
    rssBefore: number;
    rssAfter: number;
    rssPerSa: number;
    /** CPU seconds per thread name during the run (the busiest first): is one thread the bound? */
    threads: { name: string; cpuSeconds: number; busy: number }[];
  };
}

function pct(sorted: Float64Array, q: number): number {
  if (!sorted.length) return 0;
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]!;
}

export async function runIkeBench(o: Omit<WorkerParams, "index" | "count" | "concurrency"> & { count: number; concurrency: number; workers: number; pid?: number; settleMs: number; label: string }): Promise<IkeBenchResult> {
  const w = Math.max(1, Math.min(o.workers, o.concurrency, Math.max(1, o.count)));
  const workers: Worker[] = [];
  const results: WorkerResult[] = [];
  const url = new URL("./ike-load-worker.js", import.meta.url);
  let ready = 0;
  const allReady = new Promise<void>((resolve, reject) => {
    for (let i = 0; i < w; i++) {
      const share = (total: number) => Math.floor(total / w) + (i < total % w ? 1 : 0);
      const params: WorkerParams = { ...o, index: i, count: share(o.count), concurrency: Math.max(1, share(o.concurrency)) };
      const wk = new Worker(url, { workerData: params });
      wk.on("error", reject);
      wk.on("message", (m: { kind: string; result?: WorkerResult; message?: string }) => {
        if (m.kind === "ready" && ++ready === w) resolve();
        else if (m.kind === "result") results.push(m.result!);
        else if (m.kind === "error") process.stderr.write(`worker ${i}: ${m.message}\n`);
      });
      workers.push(wk);
    }
  });
  await allReady;
  const cpu0 = o.pid ? procCpuSeconds(o.pid) : 0;
  const thr0 = o.pid ? procThreadCpuSeconds(o.pid) : {};
  const host0 = hostCpuJiffies();
  const rss0 = o.pid ? procRssBytes(o.pid) : 0;
  const gen0 = process.cpuUsage();
  const finished = Promise.all(workers.map((wk) => new Promise<void>((r) => wk.once("exit", () => r()))));
  const gotAll = new Promise<void>((resolve) => {
    const t = setInterval(() => results.length === w && (clearInterval(t), resolve()), 20);
  });
  for (const wk of workers) wk.postMessage({ kind: "go" });
  await gotAll;
  const cpu1 = o.pid ? procCpuSeconds(o.pid) : 0;
  const thr1 = o.pid ? procThreadCpuSeconds(o.pid) : {};
  const host1 = hostCpuJiffies();
  const gen1 = process.cpuUsage(gen0);
  for (const wk of workers) void wk.terminate();
  await finished;
  if (o.pid && o.settleMs > 0) await new Promise((r) => setTimeout(r, o.settleMs));
  const rss1 = o.pid ? procRssBytes(o.pid) : 0;

  const done = results.reduce((a, r) => a + r.done, 0);
  const failed = results.reduce((a, r) => a + r.failed, 0);
  const errors: Record<string, number> = {};
  for (const r of results) for (const [k, v] of Object.entries(r.errors)) errors[k] = (errors[k] ?? 0) + v;
  const all = new Float64Array(done);
  let off = 0;
  for (const r of results) all.set(r.latencies, off), (off += r.latencies.length);
  all.sort();
  const seconds = (Math.max(...results.map((r) => r.endedAt)) - Math.min(...results.map((r) => r.startedAt))) / 1000;
  const cpu = cpu1 - cpu0;
  return {
    label: o.label,
    target: `${o.host}:${o.port}`,
    count: o.count,
    concurrency: o.concurrency,
    workers: w,
    done,
    failed,
    retransmits: results.reduce((a, r) => a + r.retransmits, 0),
    errors,
    seconds,
    rate: seconds > 0 ? done / seconds : 0,
    p50Ms: pct(all, 0.5),
    p99Ms: pct(all, 0.99),
    maxMs: all.length ? all[all.length - 1]! : 0,
    generatorCpuSeconds: (gen1.user + gen1.system) / 1e6,
    generatorCpuMsPerHandshake: done ? (gen1.user + gen1.system) / 1000 / done : 0,
    hostBusy: host1.total > host0.total ? (host1.busy - host0.busy) / (host1.total - host0.total) : 0,
    hostCpus: availableParallelism(),
    ...(o.pid
      ? {
          responder: {
            pid: o.pid,
            cpuSeconds: cpu,
            cpuMsPerHandshake: done ? (cpu * 1000) / done : 0,
            rssBefore: rss0,
            rssAfter: rss1,
            rssPerSa: done ? (rss1 - rss0) / done : 0,
            threads: Object.entries(thr1)
              .map(([name, s]) => ({ name, cpuSeconds: s - (thr0[name] ?? 0), busy: seconds > 0 ? (s - (thr0[name] ?? 0)) / seconds : 0 }))
              .filter((t) => t.cpuSeconds > 0)
              .sort((a, b) => b.cpuSeconds - a.cpuSeconds),
          },
        }
      : {}),
  };
}

export function formatIkeBench(r: IkeBenchResult): string {
  const l = [
    `${r.label ? `${r.label}: ` : ""}${r.done}/${r.count} handshakes against ${r.target} in ${r.seconds.toFixed(2)} s (${r.concurrency} in flight, ${r.workers} workers): ${r.rate.toFixed(0)} handshakes/s`,
    `  latency p50 ${r.p50Ms.toFixed(1)} ms, p99 ${r.p99Ms.toFixed(1)} ms, max ${r.maxMs.toFixed(1)} ms; ${r.failed} failed, ${r.retransmits} retransmits; generator CPU ${r.generatorCpuSeconds.toFixed(2)} s (${r.generatorCpuMsPerHandshake.toFixed(3)} ms/handshake); host CPUs ${(100 * r.hostBusy).toFixed(0)} % busy of ${r.hostCpus}`,
  ];
  if (r.responder) {
    const s = r.responder;
    l.push(`  responder pid ${s.pid}: CPU ${s.cpuSeconds.toFixed(2)} s = ${s.cpuMsPerHandshake.toFixed(3)} ms/handshake; RSS ${(s.rssBefore / 2 ** 20).toFixed(1)} -> ${(s.rssAfter / 2 ** 20).toFixed(1)} MiB (${(s.rssPerSa / 1024).toFixed(2)} KiB per SA)`);
    l.push(`  responder threads: ${s.threads.slice(0, 6).map((t) => `${t.name} ${(100 * t.busy).toFixed(0)} %`).join(", ")}`);
  }
  for (const [k, v] of Object.entries(r.errors)) l.push(`  error ${v}x: ${k}`);
  return l.join("\n");
}

async function runBench(argv: string[]): Promise<number> {
  const [what, ...rest] = argv;
  if (what !== "ike") throw new UsageError(what ? `unknown benchmark "${what}"` : "missing benchmark name (ike)");
  const { values, positionals } = parseArgs({
    args: rest,
    allowPositionals: true,
    strict: true,
    options: {
      count: { type: "string", short: "n" },
      concurrency: { type: "string", short: "c" },
      workers: { type: "string" },
      psk: { type: "string" },
      id: { type: "string" },
      ike: { type: "string" },
      esp: { type: "string" },
      tsi: { type: "string" },
      tsr: { type: "string" },
      local: { type: "string" },
      pid: { type: "string" },
      "settle-ms": { type: "string" },
      timeout: { type: "string" },
      tries: { type: "string" },
      label: { type: "string" },
      json: { type: "boolean" },
    },
  });
  const target = positionals[0];
  if (!target) throw new UsageError("missing ADDR[:PORT] of the responder");
  const m = /^\[?([^\]]+?)\]?(?::(\d+))?$/.exec(target.includes(":") && !target.startsWith("[") && target.split(":").length > 2 ? `[${target}]` : target);
  if (!m) throw new UsageError(`bad target "${target}"`);
  const int = (name: string, v: string | undefined, dflt: number): number => {
    if (v === undefined) return dflt;
    const n = Number(v);
    if (!Number.isInteger(n) || n < 0) throw new UsageError(`--${name} must be a non-negative integer`);
    return n;
  };
  const r = await runIkeBench({
    host: m[1]!,
    port: m[2] ? Number(m[2]) : 500,
    local: values.local ?? "",
    count: int("count", values.count, 5000),
    concurrency: Math.max(1, int("concurrency", values.concurrency, 64)),
    workers: Math.max(1, int("workers", values.workers, 2)),
    psk: values.psk ?? "bench pre-shared key, 32+ bytes long",
    id: values.id ?? "bench-i.example.test",
    ike: values.ike ?? "aes256gcm16-prfsha256-curve25519",
    esp: values.esp ?? "aes256gcm16",
    tsi: values.tsi ?? "10.1.0.0/16",
    tsr: values.tsr ?? "10.2.0.0/16",
    timeoutMs: int("timeout", values.timeout, 2000),
    tries: int("tries", values.tries, 3),
    ...(values.pid ? { pid: int("pid", values.pid, 0) } : {}),
    settleMs: int("settle-ms", values["settle-ms"], 1000),
    label: values.label ?? "",
  });
  process.stdout.write((values.json ? JSON.stringify(r) : formatIkeBench(r)) + "\n");
  return r.failed === 0 ? 0 : 1;
}

export const benchCommands: CliCommand[] = [{ name: "bench", summary: "Benchmarks: `bench ike` (IKEv2 handshake load generator)", usage: USAGE, run: runBench }];
