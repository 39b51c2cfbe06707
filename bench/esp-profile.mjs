#!/usr/bin/env node
// Profile the userspace ESP endpoints under iperf3 load: the two-namespace lab of
// esp-throughput.mjs, then `perf record` on both node processes while iperf3 runs, then
// `perf report` (top symbols) per side. Root, after `npm run build`.
//   node bench/esp-profile.mjs [--secs 6] [--udp] [--alg aes-gcm-256]
import { execFileSync, spawn } from "node:child_process";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const dist = join(root, "services/dataplane/dist/test/userspace");
const { createLab, Peer } = await import(join(dist, "netlab.js"));
const { makeSpec } = await import(join(dist, "tunnel-config.js"));
const args = process.argv.slice(2);
const opt = (n, d) => { const i = args.indexOf(`--${n}`); return i >= 0 ? args[i + 1] : d; };
const SECS = Number(opt("secs", "6"));
const UDP = args.includes("--udp");
const lab = createLab(`prof${process.pid}`);
const spec = makeSpec(opt("alg", "aes-gcm-256"), true);
const pa = new Peer(lab.a, spec, "a"), pb = new Peer(lab.b, spec, "b");
try {
  await Promise.all([pa.ready(), pb.ready()]);
  const srv = spawn("ip", ["netns", "exec", lab.b, "iperf3", "-s", "-1", "-B", "10.2.0.1"], { stdio: "ignore" });
  await new Promise((r) => setTimeout(r, 700));
  const cargs = ["netns", "exec", lab.a, "iperf3", "-c", "10.2.0.1", "-B", "10.1.0.1", "-t", String(SECS)];
  if (UDP) cargs.push("-u", "-b", "2G", "-l", "1300");
  const cli = spawn("ip", cargs, { stdio: ["ignore", "inherit", "inherit"] });
  const cliDone = new Promise((r) => cli.on("exit", r));
  await new Promise((r) => setTimeout(r, 1000));
  const recs = [["a", pa.proc.pid], ["b", pb.proc.pid]].map(([s, pid]) =>
    spawn("perf", ["record", "-F", "999", "-g", "-o", `/tmp/esp-perf-${s}.data`, "-p", String(pid), "--", "sleep", String(Math.max(1, SECS - 2))], { stdio: "ignore" }));
  await Promise.all(recs.map((p) => new Promise((r) => p.on("exit", r))));
  await cliDone;
  srv.kill();
  for (const s of ["a", "b"]) {
    console.log(`--- side ${s} (${s === "a" ? "iperf3 client side: mostly seal" : "server side: mostly open"})`);
    console.log(execFileSync("sh", ["-c", `perf report -i /tmp/esp-perf-${s}.data --no-children --sort dso,sym --stdio 2>/dev/null | grep -v '^#' | grep '%' | head -25`], { encoding: "utf8" }));
  }
  console.log(JSON.stringify((await pb.stats()).stats));
} finally { pa.stop(); pb.stop(); await new Promise((r) => setTimeout(r, 500)); lab.destroy(); }
