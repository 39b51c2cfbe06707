/**
 * Routes for remote subnets in a table of our own (220, like strongSwan's), so traffic
 * for a tunnel's remote side leaves with the right source address and reaches the XFRM
 * output policy even when the main table has no route. Done with `ip` (iproute2): the
 * error quotes the exact command and its stderr (FAQ: "route-client exited with status 7").
 */
import { execFile } from "node:child_process";
import { FleetswanError } from "@fleetswan/common";

export const ROUTE_TABLE = 220;
/** Priority of our `ip rule` (strongSwan uses 220 too). */
export const RULE_PRIORITY = 220;

/** `ip` exited non-zero. `command` is the exact argv joined, `stderr` what ip said. */
export class RouteError extends FleetswanError {
  constructor(readonly command: string, readonly stderr: string, readonly exitCode: number | null) {
    super("ROUTE_FAILED", `"${command}" failed (exit ${exitCode}): ${stderr.trim()}`, { command, stderr: stderr.trim(), exitCode });
  }
}

/** Runs `ip ARGS...`; resolves stdout. */
export type IpRunner = (args: string[]) => Promise<string>;

export const runIp: IpRunner = (args) =>
  new Promise((resolve, reject) => {
    execFile("ip", args, { timeout: 10_000 }, (err, stdout, stderr) => {
      if (err) reject(new RouteError(`ip ${args.join(" ")}`, String(stderr || err.message), typeof err.code === "number" ? err.code : null));
      else resolve(String(stdout));
    });
  });

export interface TunnelRoute {
  /** Remote subnet "10.2.0.0/16". */
  dst: string;
  /** Outer peer address (the route follows the path to it). */
  peer: string;
  /** Local inner address to use as source, if we have one inside the local subnet. */
  src?: string;
}

/** Installs and removes routes in table 220; idempotent (`ip route replace`, delete tolerates "No such process"). */
export class RouteManager {
  private ruleInstalled = false;
  constructor(
    private readonly ip: IpRunner = runIp,
    readonly table = ROUTE_TABLE,
  ) {}

  async ensureRule(family: 4 | 6 = 4): Promise<void> {
    if (this.ruleInstalled) return;
    const out = await this.ip([`-${family}`, "rule", "list", "priority", String(RULE_PRIORITY)]);
    if (!out.includes(`lookup ${this.table}`)) await this.ip([`-${family}`, "rule", "add", "priority", String(RULE_PRIORITY), "table", String(this.table)]);
    this.ruleInstalled = true;
  }

  /** Route `dst` the way `peer` is reached (same device and gateway), with `src`. */
  async install(r: TunnelRoute): Promise<void> {
    const fam = r.dst.includes(":") ? 6 : 4;
    await this.ensureRule(fam);
    const get = await this.ip([`-${fam}`, "-o", "route", "get", r.peer]);
    const dev = /\bdev (\S+)/.exec(get)?.[1];
    const via = /\bvia (\S+)/.exec(get)?.[1];
    if (!dev) throw new RouteError(`ip -${fam} -o route get ${r.peer}`, `no device in "${get.trim()}"`, 0);
    const args = [`-${fam}`, "route", "replace", r.dst, ...(via ? ["via", via] : []), "dev", dev, ...(r.src ? ["src", r.src] : []), "table", String(this.table)];
    await this.ip(args);
  }

  async remove(dst: string): Promise<void> {
    const fam = dst.includes(":") ? 6 : 4;
    try {
      await this.ip([`-${fam}`, "route", "del", dst, "table", String(this.table)]);
    } catch (e) {
      if (e instanceof RouteError && /No such process|not found/i.test(e.stderr)) return;
      throw e;
    }
  }

  /** Local addresses (for picking the inner source). */
  async localAddresses(): Promise<string[]> {
    const out = await this.ip(["-o", "addr", "show"]);
    return [...out.matchAll(/\binet6? ([0-9a-f.:]+)\//gi)].map((m) => m[1]);
  }
}
