/**
 * Shared plumbing for the real-component harnesses: run ids, free ports,
 * polling, child processes and a process-wide cleanup registry.
 *
 * Every harness registers what it created (processes, namespaces, temp dirs)
 * with {@link registerCleanup}. The registry runs
 *   - when the harness object is stopped/destroyed normally,
 *   - from the process 'exit' handler (synchronously) and on SIGINT/SIGTERM,
 * so a failing or interrupted test never leaves namespaces or daemons behind.
 */
import { execFile, execFileSync, spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, openSync, closeSync, readFileSync, existsSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** Short random id (lowercase base36) used to keep names unique per run. */
export function newRunId(len = 5): string {
  const alphabet = '0123456789abcdefghijklmnopqrstuvwxyz';
  const bytes = randomBytes(len);
  let s = '';
  for (let i = 0; i < len; i++) s += alphabet[bytes[i]! % alphabet.length];
  return s;
}

/** Create a private temp dir (default under os.tmpdir()) removed at cleanup. */
export function makeTempDir(prefix: string, base = tmpdir(), keep = false): string {
  const dir = mkdtempSync(join(base, `${prefix}-`));
  if (!keep && process.env.FLEETSWAN_KEEP_TMP !== '1') {
    registerCleanup(() => rmSync(dir, { recursive: true, force: true }));
  }
  return dir;
}

/** A TCP port that was free a moment ago on 127.0.0.1 (ask the kernel). */
export async function freePort(host = '127.0.0.1'): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.unref();
    srv.once('error', reject);
    srv.listen(0, host, () => {
      const addr = srv.address();
      if (addr === null || typeof addr === 'string') { srv.close(); reject(new Error('no port')); return; }
      const port = addr.port;
      srv.close(() => resolve(port));
    });
  });
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/**
 * Poll `probe` until it returns a truthy value (which is returned) or throw
 * after `timeoutMs`. Exceptions from the probe count as "not yet".
 */
export async function waitFor<T>(
  what: string,
  probe: () => Promise<T | undefined | null | false> | T | undefined | null | false,
  { timeoutMs = 10_000, intervalMs = 100 }: { timeoutMs?: number; intervalMs?: number } = {},
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let lastErr: unknown;
  for (;;) {
    try {
      const v = await probe();
      if (v) return v;
    } catch (e) {
      lastErr = e;
    }
    if (Date.now() > deadline) {
      const tail = lastErr instanceof Error ? `: ${lastErr.message}` : '';
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${tail}`);
    }
    await sleep(intervalMs);
  }
}

export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Run a command to completion. Rejects on non-zero exit unless `allowFail`. */
export function run(
  argv: readonly string[],
  opts: { env?: NodeJS.ProcessEnv; cwd?: string; timeoutMs?: number; allowFail?: boolean; input?: string } = {},
): Promise<RunResult> {
  const [cmd, ...args] = argv;
  if (cmd === undefined) throw new Error('run: empty argv');
  return new Promise((resolve, reject) => {
    const child = execFile(
      cmd,
      args,
      { env: opts.env, cwd: opts.cwd, timeout: opts.timeoutMs ?? 60_000, maxBuffer: 64 * 1024 * 1024, killSignal: 'SIGKILL' },
      (err, stdout, stderr) => {
        const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : 1) : 0;
        const res = { code, stdout: String(stdout), stderr: String(stderr) };
        if (err && !opts.allowFail) {
          reject(new Error(`command failed (${code}): ${argv.join(' ')}\n${res.stderr || res.stdout}`.trimEnd()));
        } else resolve(res);
      },
    );
    if (opts.input !== undefined) child.stdin?.end(opts.input);
  });
}

/** A long-running child tracked for cleanup (killed with its process group). */
export interface Proc {
  readonly child: ChildProcess;
  readonly pid: number;
  /** Path of the file receiving stdout+stderr. */
  readonly logFile: string;
  /** Resolves with the exit code (or signal name) when the process ends. */
  readonly exited: Promise<number | string>;
  readonly running: boolean;
  /** SIGTERM the group, wait up to `graceMs`, then SIGKILL. */
  stop(graceMs?: number): Promise<void>;
  /** SIGKILL the group immediately and wait for the exit. */
  kill(): Promise<void>;
  /** Current contents of the log file. */
  log(): string;
}

/**
 * Spawn a long-running process in its own process group, stdout+stderr to
 * `logFile`. It is killed at cleanup (also on process exit/signals).
 */
export function spawnTracked(argv: readonly string[], logFile: string, opts: SpawnOptions = {}): Proc {
  const [cmd, ...args] = argv;
  if (cmd === undefined) throw new Error('spawnTracked: empty argv');
  const fd = openSync(logFile, 'a');
  const child = spawn(cmd, args, { ...opts, detached: true, stdio: ['ignore', fd, fd] });
  closeSync(fd);
  if (child.pid === undefined) throw new Error(`spawn failed: ${argv.join(' ')}`);
  const pid = child.pid;
  let running = true;
  const exited = new Promise<number | string>((resolve) => {
    child.once('exit', (code, signal) => {
      running = false;
      resolve(code ?? signal ?? -1);
    });
    child.once('error', () => {
      running = false;
      resolve(-1);
    });
  });
  const signalGroup = (sig: NodeJS.Signals): void => {
    try { process.kill(-pid, sig); } catch { /* gone */ }
  };
  const unregister = registerCleanup(() => { if (running) signalGroup('SIGKILL'); });
  const proc: Proc = {
    child,
    pid,
    logFile,
    exited,
    get running() { return running; },
    async stop(graceMs = 3000) {
      if (running) {
        signalGroup('SIGTERM');
        const t = await Promise.race([exited.then(() => true), sleep(graceMs).then(() => false)]);
        if (!t) signalGroup('SIGKILL');
        await exited;
      }
      signalGroup('SIGKILL'); // leftovers of the group (forked helpers)
      unregister();
    },
    async kill() {
      signalGroup('SIGKILL');
      await exited;
      unregister();
    },
    log() {
      return existsSync(logFile) ? readFileSync(logFile, 'utf8') : '';
    },
  };
  return proc;
}

// ---------------------------------------------------------------- cleanup --

type CleanupFn = () => void;
const cleanups = new Map<number, CleanupFn>();
let nextCleanupId = 1;
let handlersInstalled = false;

/**
 * Register a SYNCHRONOUS cleanup action run at process exit / SIGINT /
 * SIGTERM (latest first). Returns an unregister function; harnesses call
 * their cleanup themselves on normal stop and then unregister.
 */
export function registerCleanup(fn: CleanupFn): () => void {
  installHandlers();
  const id = nextCleanupId++;
  cleanups.set(id, fn);
  return () => { cleanups.delete(id); };
}

/** Run (and forget) every registered cleanup now, newest first. */
export function runAllCleanups(): void {
  const fns = [...cleanups.entries()].reverse();
  cleanups.clear();
  for (const [, fn] of fns) {
    try { fn(); } catch { /* best effort */ }
  }
}

function installHandlers(): void {
  if (handlersInstalled) return;
  handlersInstalled = true;
  process.on('exit', runAllCleanups);
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.once(sig, () => {
      runAllCleanups();
      process.exit(128 + (sig === 'SIGINT' ? 2 : sig === 'SIGTERM' ? 15 : 1));
    });
  }
}

/** Synchronous best-effort command (for exit handlers). */
export function runSync(argv: readonly string[]): boolean {
  const [cmd, ...args] = argv;
  if (cmd === undefined) return false;
  try {
    execFileSync(cmd, args, { stdio: 'ignore', timeout: 10_000 });
    return true;
  } catch {
    return false;
  }
}

/** Reason string if not root, else null (for t.skip). */
export function needRoot(): string | null {
  return typeof process.getuid === 'function' && process.getuid() === 0 ? null : 'needs root (network namespaces)';
}

/** Reason string if an executable is missing, else null. */
export function needExecutable(...paths: string[]): string | null {
  for (const p of paths) {
    if (p.includes('/')) {
      if (!existsSync(p)) return `missing ${p}`;
    } else if (!runSync(['sh', '-c', `command -v ${p}`])) {
      return `missing executable ${p}`;
    }
  }
  return null;
}

/** True when running under CI (CI=true): harness tests must not skip there. */
export const inCI = process.env.CI === 'true' || process.env.CI === '1';

/**
 * Skip reason for a test, or null when every precondition holds. In CI a
 * missing precondition is an error (thrown), never a silent skip.
 */
export function skipReason(...reasons: (string | null)[]): string | null {
  const r = reasons.filter((x): x is string => x !== null);
  if (r.length === 0) return null;
  const msg = r.join('; ');
  if (inCI) throw new Error(`precondition failed in CI: ${msg}`);
  return msg;
}
