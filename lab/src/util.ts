/**
 * Small process helpers for the lab. Unlike the test harness (test/harness/util.ts), nothing
 * here registers exit-time cleanup: the lab's daemons and namespaces outlive the command
 * that started them, until `fleetswan-lab down`.
 */
import { execFile, spawn } from "node:child_process";
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { dirname } from "node:path";

export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

export class CommandError extends Error {
  readonly code = "LAB_COMMAND_FAILED";
  constructor(readonly argv: readonly string[], readonly result: RunResult) {
    super(`\`${argv.join(" ")}\` failed (exit ${result.code}): ${(result.stderr || result.stdout).trim() || "no output"}`);
  }
}

export interface RunOptions {
  env?: NodeJS.ProcessEnv;
  cwd?: string;
  timeoutMs?: number;
  allowFail?: boolean;
  input?: string;
}

/** Run argv to completion; rejects with CommandError on a non-zero exit unless allowFail. */
export function run(argv: readonly string[], opts: RunOptions = {}): Promise<RunResult> {
  const [cmd, ...args] = argv;
  if (cmd === undefined) throw new Error("run: empty argv");
  return new Promise((resolve, reject) => {
    const child = execFile(
      cmd,
      args,
      { env: opts.env, cwd: opts.cwd, timeout: opts.timeoutMs ?? 60_000, maxBuffer: 64 << 20, killSignal: "SIGKILL" },
      (err, stdout, stderr) => {
        const code = err ? (typeof (err as { code?: unknown }).code === "number" ? (err as { code: number }).code : 1) : 0;
        const res: RunResult = { code, stdout: String(stdout), stderr: String(stderr) };
        if (err && !opts.allowFail) reject(new CommandError(argv, res));
        else resolve(res);
      },
    );
    if (opts.input !== undefined) child.stdin?.end(opts.input);
    else child.stdin?.end();
  });
}

/** `ip netns exec NS argv...` */
export const inNs = (ns: string, argv: readonly string[]): string[] => ["ip", "netns", "exec", ns, ...argv];

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/**
 * Poll until probe() is truthy; throws after timeoutMs naming `what` and the last error.
 * A probe error with `fatal: true` (e.g. the daemon died) ends the wait at once.
 */
export async function waitFor<T>(
  what: string,
  probe: () => Promise<T | undefined | null | false> | T | undefined | null | false,
  { timeoutMs = 10_000, intervalMs = 200 }: { timeoutMs?: number; intervalMs?: number } = {},
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await probe();
      if (v) return v;
    } catch (e) {
      if ((e as { fatal?: boolean }).fatal) throw e;
      last = e;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${Math.round(timeoutMs / 1000)} s waiting for ${what}${last instanceof Error ? `: ${last.message}` : ""}`);
    }
    await sleep(intervalMs);
  }
}

export function isAlive(pid: number | undefined): boolean {
  if (!pid) return false;
  try {
    process.kill(pid, 0);
  } catch {
    return false;
  }
  // a zombie (exited, not reaped) counts as dead
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2)[0] !== "Z";
  } catch {
    return false;
  }
}

export function readPid(file: string): number | undefined {
  if (!existsSync(file)) return undefined;
  const n = Number(readFileSync(file, "utf8").trim());
  return Number.isInteger(n) && n > 0 ? n : undefined;
}

export interface SpawnSpec {
  argv: readonly string[];
  logFile: string;
  pidFile: string;
  env?: NodeJS.ProcessEnv;
  cwd?: string;
}

/**
 * Start a daemon detached from us (own session, stdout+stderr appended to logFile) and
 * write its pid file. With `ip netns exec` (which execs, not forks) and `sh -c '... exec X'`
 * the pid is the daemon's own.
 */
export function spawnDaemon(s: SpawnSpec): number {
  const [cmd, ...args] = s.argv;
  if (cmd === undefined) throw new Error("spawnDaemon: empty argv");
  mkdirSync(dirname(s.logFile), { recursive: true });
  mkdirSync(dirname(s.pidFile), { recursive: true });
  const fd = openSync(s.logFile, "a");
  writeFileSync(fd, `--- ${new Date().toISOString()} start: ${s.argv.join(" ")}\n`);
  const child = spawn(cmd, args, { env: s.env ?? process.env, cwd: s.cwd, detached: true, stdio: ["ignore", fd, fd] });
  closeSync(fd);
  if (child.pid === undefined) throw new Error(`cannot start ${s.argv.join(" ")}`);
  child.unref();
  writeFileSync(s.pidFile, `${child.pid}\n`);
  return child.pid;
}

/** SIGTERM, wait up to graceMs, then SIGKILL. Resolves when the process is gone. */
export async function stopPid(pid: number | undefined, graceMs = 5000): Promise<void> {
  if (!pid || !isAlive(pid)) return;
  try { process.kill(pid, "SIGTERM"); } catch { return; }
  const deadline = Date.now() + graceMs;
  while (isAlive(pid) && Date.now() < deadline) await sleep(50);
  if (isAlive(pid)) {
    try { process.kill(pid, "SIGKILL"); } catch { /* gone */ }
    while (isAlive(pid)) await sleep(20);
  }
}

/** SIGKILL and wait until it is gone (a crash, for fault tests). */
export async function killPid(pid: number | undefined): Promise<void> {
  if (!pid || !isAlive(pid)) return;
  try { process.kill(pid, "SIGKILL"); } catch { return; }
  while (isAlive(pid)) await sleep(20);
}

export function rmrf(path: string): void {
  rmSync(path, { recursive: true, force: true });
}

/** The last `lines` lines of a file ('' if missing). */
export function tail(file: string, lines = 30): string {
  if (!existsSync(file)) return "";
  return readFileSync(file, "utf8").trimEnd().split("\n").slice(-lines).join("\n");
}

/** Lines on stderr with elapsed time, like scripts/check.sh's steps. */
export function makeStepper(out: (s: string) => void = (s) => process.stderr.write(s + "\n")): (msg: string) => void {
  const t0 = Date.now();
  return (msg) => out(`=== [${((Date.now() - t0) / 1000).toFixed(1)}s] ${msg}`);
}
