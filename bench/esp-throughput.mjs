#!/usr/bin/env node
// Throughput through a fleetswan userspace-esp tunnel vs strongSwan kernel-libipsec, same
// machine, same run, same topology (two netns over a veth, 10.1.0.1 -> 10.2.0.1, AES-GCM-256,
// ESP-in-UDP/4500). iperf3 TCP and UDP with 1400-octet datagrams. Prints Mbit/s, TCP
// retransmits, UDP loss, CPU seconds per Gbit of the two ESP endpoints (our two node
// processes; the two charon processes) and the ratio. Run as root after `npm run build`.
//   node bench/esp-throughput.mjs [--secs 10] [--udp-rate 2G] [--alg aes-gcm-256] [--no-libipsec]
//                                 [--runs N] [--crypto native|ts|both]
// --pin: the sending side (ESP endpoint A, iperf3 client) on CPU 0, the receiving side (endpoint
// B, iperf3 server) on CPU 1, for both implementations (charon's threads likewise).
// --runs repeats the whole comparison (ours, then libipsec) N times and prints the spread
// (min/median/max); --crypto ts runs our endpoints with FLEETSWAN_ESP_CRYPTO=ts (the
// TypeScript reference ESP on node:crypto), both = native and ts rows in every run.
import { execFileSync, spawn } from "node:child_process";
import { readFileSync, readdirSync } from "node:fs";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { dirname, join } from "node:path";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const dist = join(root, "services/dataplane/dist/test/userspace");
const { createLab, Peer } = await import(join(dist, "netlab.js"));
const { makeSpec } = await import(join(dist, "tunnel-config.js"));

const args = process.argv.slice(2);
const opt = (n, d) => { const i = args.indexOf(`--${n}`); return i >= 0 ? args[i + 1] : d; };
const SECS = Number(opt("secs", "10"));
const UDP_RATE = opt("udp-rate", "2G");
const ALG = opt("alg", "aes-gcm-256");
const LIBIPSEC = !args.includes("--no-libipsec");
const RUNS = Number(opt("runs", "1"));
const CRYPTO = opt("crypto", "native");
const RECIPE = opt("libipsec-script", "/work/shared/peers/strongswan-libipsec-pair.sh");
const TICK = 100; // USER_HZ
const PIN = args.includes("--pin");
/** Pin every thread of `pid` to `cpu` (--pin). */
const pin = (pid, cpu) => { if (PIN) execFileSync("taskset", ["-a", "-p", "-c", String(cpu), String(pid)], { stdio: "ignore" }); };
const onCpu = (cpu) => (PIN ? ["taskset", "-c", String(cpu)] : []);

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const cpuOf = (pid) => { try { const f = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1].split(" "); return (Number(f[11]) + Number(f[12])) / TICK; } catch { return undefined; } };

/** Machine-wide jiffies from /proc/stat: busy (all but idle and iowait) and softirq. */
const machine = () => { const l = readFileSync("/proc/stat", "utf8").split("\n")[0].trim().split(/\s+/).slice(1).map(Number); return { busy: l.reduce((a, b) => a + b, 0) - l[3] - l[4], softirq: l[6] }; };

/**
 * CPU seconds used while `fn` runs (processes sampled every 200 ms): `cpu` by processes matching
 * `pred(comm, pid)` (the ESP endpoints), `iperf` by iperf3, `other` by every other process on
 * the machine (other jobs competing for the two cores; this script excluded), `busy` machine-wide
 * and `softirq` (the kernel's network receive work, not charged to any process), `secs` wall time.
 */
async function cpuDuring(pred, fn) {
  const start = new Map(), last = new Map(), kind = new Map();
  const sample = () => {
    for (const d of readdirSync("/proc")) {
      if (!/^\d+$/.test(d) || Number(d) === process.pid) continue;
      let comm; try { comm = readFileSync(`/proc/${d}/comm`, "utf8").trim(); } catch { continue; }
      const c = cpuOf(d); if (c === undefined) continue;
      if (!start.has(d)) { start.set(d, c); kind.set(d, pred(comm, Number(d)) ? "cpu" : comm === "iperf3" ? "iperf" : "other"); }
      last.set(d, c);
    }
  };
  sample();
  const m0 = machine(), t0 = Date.now();
  const iv = setInterval(sample, 200);
  try {
    const r = await fn();
    sample();
    const m1 = machine();
    const out = { r, cpu: 0, iperf: 0, other: 0, busy: (m1.busy - m0.busy) / TICK, softirq: (m1.softirq - m0.softirq) / TICK, secs: (Date.now() - t0) / 1000, perPid: {} };
    for (const [p, c] of last) {
      out[kind.get(p)] += c - start.get(p);
      if (kind.get(p) === "cpu") out.perPid[p] = c - start.get(p);
    }
    return out;
  } finally { clearInterval(iv); }
}

function iperf(nsA, nsB, udp) {
  const srv = spawn("ip", ["netns", "exec", nsB, ...onCpu(1), "iperf3", "-s", "-1", "-B", "10.2.0.1"], { stdio: "ignore" });
  execFileSync("sleep", ["0.7"]);
  const a = ["netns", "exec", nsA, ...onCpu(0), "iperf3", "-c", "10.2.0.1", "-B", "10.1.0.1", "-t", String(SECS), "-J"];
  if (udp) a.push("-u", "-b", UDP_RATE, "-l", "1400");
  return new Promise((resolve) => {
    let out = "";
    const c = spawn("ip", a, { stdio: ["ignore", "pipe", "inherit"] });
    c.stdout.on("data", (d) => (out += d));
    c.on("exit", () => {
      srv.kill();
      try {
        const j = JSON.parse(out);
        if (udp) {
          const s = j.end.sum;
          resolve({ mbit: s.bits_per_second * (1 - s.lost_percent / 100) / 1e6, sentMbit: s.bits_per_second / 1e6, lost: s.lost_percent, bytes: s.bytes * (1 - s.lost_percent / 100) });
        } else {
          resolve({ mbit: j.end.sum_received.bits_per_second / 1e6, retransmits: j.end.sum_sent.retransmits, bytes: j.end.sum_received.bytes });
        }
      } catch { resolve({ mbit: 0, error: out.slice(0, 300) }); }
    });
  });
}

async function ours(crypto) {
  if (crypto === "ts") process.env.FLEETSWAN_ESP_CRYPTO = "ts";
  else delete process.env.FLEETSWAN_ESP_CRYPTO;
  const lab = createLab(`bench${process.pid}`);
  const spec = makeSpec(ALG, true);
  const pa = new Peer(lab.a, spec, "a"), pb = new Peer(lab.b, spec, "b");
  try {
    await Promise.all([pa.ready(), pb.ready()]);
    const pids = new Set([pa.proc.pid, pb.proc.pid]);
    pin(pa.proc.pid, 0);
    pin(pb.proc.pid, 1);
    const res = {};
    for (const udp of [false, true]) {
      const { r, cpu, ...m } = await cpuDuring((_c, pid) => pids.has(pid), () => iperf(lab.a, lab.b, udp));
      res[udp ? "udp" : "tcp"] = { ...r, cpuPerGbit: cpu / ((r.bytes * 8) / 1e9), cpu, ...m, sides: [m.perPid[pa.proc.pid] ?? 0, m.perPid[pb.proc.pid] ?? 0] };
    }
    const ra = await pa.stats(), rb = await pb.stats();
    const sa = ra.stats, sb = rb.stats;
    res.drops = sb.drops;
    res.tun = { a: ra.tun, b: rb.tun };
    // packets per wake-up: sender's TUN reads (A) and receiver's socket reads (B), over both tests
    res.perWake = { aTun: sa.outPackets / Math.max(1, sa.tunBatches), bSock: (sb.inPackets + Object.values(sb.drops).reduce((x, y) => x + y, 0)) / Math.max(1, sb.sockBatches) };
    return res;
  } finally { pa.stop(); pb.stop(); await sleep(500); lab.destroy(); }
}

async function libipsec() {
  // start the recipe with --keep, run our own iperf3 in its namespaces, then press Enter
  const p = spawn("bash", [RECIPE, "--keep"], { stdio: ["pipe", "pipe", "pipe"] });
  let log = "";
  p.stderr.on("data", (d) => (log += d));
  const ns = await new Promise((resolve, reject) => {
    createInterface({ input: p.stdout }).on("line", (l) => { log += l + "\n"; const m = /^netns: (\S+) (\S+);/.exec(l); if (m) resolve([m[1], m[2]]); });
    p.on("exit", (c) => reject(new Error(`libipsec recipe exited ${c}: ${log.slice(-800)}`)));
  });
  const res = {};
  try {
    if (PIN) {
      ns.forEach((n, i) => {
        for (const pid of execFileSync("ip", ["netns", "pids", n], { encoding: "utf8" }).split("\n").filter(Boolean)) {
          try { if (readFileSync(`/proc/${pid}/comm`, "utf8").trim() === "charon") pin(pid, i); } catch { /* gone */ }
        }
      });
    }
    for (const udp of [false, true]) {
      const { r, cpu, ...m } = await cpuDuring((comm) => comm === "charon", () => iperf(ns[0], ns[1], udp));
      res[udp ? "udp" : "tcp"] = { ...r, cpuPerGbit: cpu / ((r.bytes * 8) / 1e9), cpu, ...m };
    }
  } finally { p.stdin.end("\n"); await new Promise((r) => p.once("exit", r)); }
  return res;
}

const f = (x, d = 0) => (x === undefined || Number.isNaN(x) ? "-" : x.toFixed(d));
console.log(`esp-throughput: ${ALG}, ESP-in-UDP/4500, ${SECS} s per test, UDP -l 1400 -b ${UDP_RATE}${PIN ? ", pinned (A + iperf3 client: CPU 0, B + server: CPU 1)" : ""}; ${(await import("node:os")).cpus().length} CPUs, load ${(await import("node:os")).loadavg()[0].toFixed(2)}`);
// where the two cores went during the TCP test (CPU seconds per wall second = cores)
const cores = (t) => `endpoints ${f(t.cpu / t.secs, 2)}${t.sides ? ` (A ${f(t.sides[0] / t.secs, 2)}, B ${f(t.sides[1] / t.secs, 2)})` : ""}, iperf3 ${f(t.iperf / t.secs, 2)}, softirq ${f(t.softirq / t.secs, 2)}, other jobs ${f(t.other / t.secs, 2)}, machine busy ${f(t.busy / t.secs, 2)} of 2 cores`;
const row = (name, r) => {
  console.log(`${name.padEnd(34)} TCP ${f(r.tcp.mbit).padStart(6)} Mbit/s  retr ${String(r.tcp.retransmits ?? "-").padStart(6)}  CPU ${f(r.tcp.cpuPerGbit, 2).padStart(6)} s/Gbit | UDP ${f(r.udp.mbit).padStart(6)} Mbit/s (offered ${f(r.udp.sentMbit)}, lost ${f(r.udp.lost, 1)} %)  CPU ${f(r.udp.cpuPerGbit, 2)} s/Gbit`);
  console.log(`${"".padEnd(34)} TCP test cores: ${cores(r.tcp)}`);
};
// TUN offloads: A's packets per TUN read (TSO super-packets split), B's packets per TUN write (coalesced runs)
const tunLine = (t) => !t?.a ? "" : `; TUN offload: A ${f(t.a.segments / Math.max(1, t.a.superPackets), 1)} segments per super-packet (${t.a.superPackets} of ${t.a.reads} reads), B ${f(t.b.coalescedPackets / Math.max(1, t.b.coalescedWrites), 1)} packets per coalesced write (${t.b.coalescedPackets} packets), dropped ${t.a.dropped + t.b.dropped}`;
const modes = CRYPTO === "both" ? ["native", "ts"] : [CRYPTO];
const all = { libipsec: [] };
for (const m of modes) all[m] = [];
for (let run = 1; run <= RUNS; run++) {
  if (RUNS > 1) console.log(`run ${run}/${RUNS} (load ${(await import("node:os")).loadavg()[0].toFixed(2)})`);
  const res = {};
  for (const m of modes) {
    res[m] = await ours(m);
    all[m].push(res[m]);
    row(`fleetswan userspace-esp (${m})`, res[m]);
  }
  const them = LIBIPSEC ? await libipsec() : undefined;
  if (them) {
    all.libipsec.push(them);
    row("strongSwan kernel-libipsec", them);
    for (const m of modes) console.log(`ratio fleetswan(${m})/libipsec: TCP ${f(res[m].tcp.mbit / them.tcp.mbit, 2)}x, UDP ${f(res[m].udp.mbit / them.udp.mbit, 2)}x (goal >= 3x)`);
  }
  for (const m of modes) console.log(`fleetswan (${m}) receiver drops: ${JSON.stringify(Object.fromEntries(Object.entries(res[m].drops).filter(([, v]) => v)))}; packets per wake-up: A TUN ${f(res[m].perWake.aTun, 1)}, B socket ${f(res[m].perWake.bSock, 1)}${tunLine(res[m].tun)}`);
}
if (RUNS > 1) {
  const med = (s) => (s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2);
  const spreadD = (xs, d) => { const s = [...xs].sort((a, b) => a - b); return `${f(s[0], d)} / ${f(med(s), d)} / ${f(s[s.length - 1], d)}`; };
  const spread = (xs) => spreadD(xs, 0), spread2 = (xs) => spreadD(xs, 2);
  console.log(`spread over ${RUNS} runs (min / median / max):`);
  for (const [name, rs] of Object.entries(all)) {
    if (!rs.length) continue;
    console.log(`  ${name.padEnd(10)} TCP Mbit/s ${spread(rs.map((r) => r.tcp.mbit))}  retr ${spread(rs.map((r) => r.tcp.retransmits))}  CPU s/Gbit ${spread2(rs.map((r) => r.tcp.cpuPerGbit))}  other jobs (cores) ${spread2(rs.map((r) => r.tcp.other / r.tcp.secs))}  UDP Mbit/s ${spread(rs.map((r) => r.udp.mbit))}`);
  }
  if (all.libipsec.length) {
    for (const m of modes) console.log(`  ratio (${m}) TCP ${spread(all[m].map((r, i) => r.tcp.mbit / all.libipsec[i].tcp.mbit).map((x) => x * 100))} % , UDP ${spread(all[m].map((r, i) => r.udp.mbit / all.libipsec[i].udp.mbit).map((x) => x * 100))} %`);
  }
}
