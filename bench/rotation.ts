/**
 * Rotation benchmark: time to rotate one shared secret across N agents.
 *
 * A real nats-server (test harness), the real keymgr in-process, and N simulated agents:
 * each is the real agent-side code (runFleetClient: its own NATS connection, enrollment,
 * filtered watchers, unsealing, fail-static state on disk) with a fake engine, spread
 * over worker threads. One PSK is shared by all N gateways; we time RotateSecret from
 * the request until every agent's engine has applied the new value (with the previous
 * one still valid).
 *
 *   npx tsc -b services/keymgr services/ikeagent test && npx tsc -p bench/rotation.tsconfig.json
 *   node bench/dist/rotation.js [--runs R] [N ...]        (default: 100 1000, 1 run)
 */
import { Worker, isMainThread, parentPort, workerData } from "node:worker_threads";
import { mkdtempSync, readFileSync, readdirSync, rmSync } from "node:fs";
import { loadavg, tmpdir } from "node:os";
import { join } from "node:path";
import { randomBytes } from "node:crypto";
import { fileURLToPath } from "node:url";
import { connect } from "nats";
import { Secret, createLogger } from "@fleetswan/common";
import { fleet } from "@fleetswan/proto";
import { KeyManager, KeymgrClient, MasterKeyring, parseMasterKey, tokenHash } from "@fleetswan/keymgr";
import { FakeEngine, runFleetClient, type FleetClient } from "@fleetswan/ikeagent/fleet/index";
import { startNats } from "@fleetswan/test/harness";

const log = createLogger("bench", { level: process.env.FLEETSWAN_BENCH_LOG ?? "error" });
const SECRET = "psk.fleet";
const WORKERS = 2;

type ToMain = { type: "enrolled" | "ready" | "rotated" | "stopped"; gw?: string; t?: number };

/** A fake engine that reports when it first sees the secret and when it sees a rotated one. */
class ReportingEngine extends FakeEngine {
  #ready = false;
  #rotated = false;
  constructor(private readonly gw: string) {
    super();
  }
  override async apply(...args: Parameters<FakeEngine["apply"]>) {
    const r = await super.apply(...args);
    const s = this.applies.at(-1)?.secrets.get(SECRET);
    if (s && !this.#ready) {
      this.#ready = true;
      parentPort!.postMessage({ type: "ready", gw: this.gw } satisfies ToMain);
    }
    if (s?.previous && !this.#rotated) {
      this.#rotated = true;
      parentPort!.postMessage({ type: "rotated", gw: this.gw, t: Date.now() } satisfies ToMain);
    }
    return r;
  }
}

async function worker(): Promise<void> {
  const { url, gateways, tokens, base } = workerData as { url: string; gateways: string[]; tokens: string[]; base: string };
  const clients: FleetClient[] = [];
  for (let i = 0; i < gateways.length; i += 50) {
    const batch = gateways.slice(i, i + 50).map(async (gw, j) => {
      const c = await runFleetClient({ natsUrl: url, gateway: gw, stateDir: join(base, gw), enrollToken: new Secret(tokens[i + j]!), engine: new ReportingEngine(gw), log, statusIntervalMs: 600_000, heartbeatMs: 5000 });
      clients.push(c);
      await c.enrolled;
    });
    await Promise.all(batch);
  }
  parentPort!.postMessage({ type: "enrolled" } satisfies ToMain);
  parentPort!.once("message", async () => {
    await Promise.all(clients.map((c) => c.stop()));
    parentPort!.postMessage({ type: "stopped" } satisfies ToMain);
  });
}

/** CPU seconds (user + system) of the nats-server whose command line names `configFile`. */
function natsCpu(configFile: string): number {
  for (const pid of readdirSync("/proc").filter((d) => /^\d+$/.test(d))) {
    try {
      if (!readFileSync(`/proc/${pid}/cmdline`, "utf8").includes(configFile)) continue;
      const f = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]!.split(" ");
      return (Number(f[11]) + Number(f[12])) / 100;
    } catch {
      /* gone */
    }
  }
  return NaN;
}

const pct = (sorted: number[], p: number): number => sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]!;

async function run(n: number): Promise<void> {
  const nats = await startNats();
  const base = mkdtempSync(join(tmpdir(), "fs-bench-rot-"));
  try {
    const nc = await connect({ servers: nats.url });
    const km = new KeyManager({ nc, keyring: new MasterKeyring(parseMasterKey(randomBytes(32))), log });
    await km.start();
    const js = nc.jetstream();
    const views = await js.views.kv("fleet-views");
    const enroll = await js.views.kv("fleet-enroll");
    const gws = Array.from({ length: n }, (_, i) => `gw-${i}`);
    const tokens = gws.map(() => randomBytes(16).toString("hex"));
    for (const [i, gw] of gws.entries()) {
      await enroll.put(gw, tokenHash(new Secret(tokens[i]!)));
      await views.put(gw, fleet.GatewayView.encode(fleet.GatewayView.fromPartial({ gateway: gw, revision: 1n, connections: [{ name: "mesh", secretRef: SECRET, startAction: fleet.StartAction.START_ACTION_START }] })).finish());
    }
    const ready = new Set<string>();
    const rotatedAt = new Map<string, number>();
    let enrolled = 0;
    let stopped = 0;
    const workers: Worker[] = [];
    const t0 = Date.now();
    for (let w = 0; w < WORKERS; w++) {
      const mine = gws.filter((_, i) => i % WORKERS === w);
      const worker = new Worker(fileURLToPath(import.meta.url), { workerData: { url: nats.url, gateways: mine, tokens: mine.map((g) => tokens[gws.indexOf(g)]), base } });
      worker.on("message", (m: ToMain) => {
        if (m.type === "enrolled") enrolled++;
        else if (m.type === "ready") ready.add(m.gw!);
        else if (m.type === "rotated") rotatedAt.set(m.gw!, m.t!);
        else if (m.type === "stopped") stopped++;
      });
      worker.on("error", (e) => console.error("worker failed:", e));
      workers.push(worker);
    }
    const until = async (what: string, cond: () => boolean, timeoutMs: number) => {
      const end = Date.now() + timeoutMs;
      while (!cond()) {
        if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
        await new Promise((r) => setTimeout(r, 20));
      }
    };
    await until("agents enrolled", () => enrolled === WORKERS, 300_000);
    const tEnrolled = Date.now() - t0;
    const client = new KeymgrClient(nc, 120_000);
    const tg = Date.now();
    await client.generateSecret(SECRET, gws);
    await until("agents hold the secret", () => ready.size === n, 120_000);
    const tDistribute = Date.now() - tg;

    const cpu0 = process.cpuUsage();
    const ncpu0 = natsCpu(nats.configFile);
    const start = Date.now();
    await client.rotateSecret(SECRET, 600);
    const rpc = Date.now() - start;
    await until("agents hold the rotated secret", () => rotatedAt.size === n, 120_000);
    const cpu = process.cpuUsage(cpu0);
    const ncpu = natsCpu(nats.configFile) - ncpu0;
    const lat = [...rotatedAt.values()].map((t) => t - start).sort((a, b) => a - b);
    console.log(
      `rotation  agents=${String(n).padStart(5)}  keymgr RotateSecret (seal+publish ${n} blobs)=${rpc} ms  ` +
        `applied by all: p50=${pct(lat, 50)} ms p99=${pct(lat, 99)} ms max=${lat.at(-1)} ms   ` +
        `(setup: ${n} enrollments ${tEnrolled} ms, first distribution ${tDistribute} ms)`,
    );
    console.log(`          CPU until the last agent applied it: bench process (keymgr + agents) ${((cpu.user + cpu.system) / 1e6).toFixed(2)} s, nats-server ${ncpu.toFixed(2)} s; load average ${loadavg()[0]!.toFixed(1)}`);
    for (const w of workers) w.postMessage("stop");
    await until("workers stopped", () => stopped === WORKERS, 60_000).catch(() => undefined);
    for (const w of workers) await w.terminate();
    await km.stop();
    await nc.close();
  } finally {
    await nats.stop();
    rmSync(base, { recursive: true, force: true });
  }
}

if (isMainThread) {
  const args = process.argv.slice(2);
  const ri = args.indexOf("--runs");
  const runs = ri >= 0 ? Number(args.splice(ri, 2)[1]) : 1;
  const sizes = args.map(Number).filter((x) => x > 0);
  for (const n of sizes.length ? sizes : [100, 1000]) for (let i = 0; i < runs; i++) await run(n);
  process.exit(0);
} else {
  await worker();
}
