/**
 * Routes that steer protected traffic into the TUN device, like strongSwan's
 * kernel-libipsec with kernel-netlink: one route per remote subnet in a table of our own
 * (default 220) and one `ip rule` that consults it:
 *
 *   ip rule add priority 220 table 220
 *   ip route replace 10.2.0.0/16 dev fsesp0 src 10.1.0.1 table 220
 *
 * Every failure names the exact command and what `ip` said (FAQ: "route-client exited
 * with status 7" told nobody anything).
 */
import { execFile } from "node:child_process";
import { FleetswanError } from "@fleetswan/common";

export class RouteError extends FleetswanError {
  constructor(readonly command: string, stderr: string, code: number | string | null | undefined) {
    super("ROUTE_FAILED", `\`${command}\` failed (exit ${code ?? "?"}): ${stderr.trim() || "no message"}`, { command, stderr: stderr.trim() });
  }
}

export type IpRunner = (args: string[]) => Promise<string>;

/** Run `ip ARGS...`; reject with RouteError naming the command. */
export const runIp: IpRunner = (args) =>
  new Promise((resolve, reject) => {
    execFile("ip", args, { timeout: 10_000 }, (err, stdout, stderr) => {
      if (err) reject(new RouteError(`ip ${args.join(" ")}`, String(stderr || err.message), (err as NodeJS.ErrnoException).code));
      else resolve(String(stdout));
    });
  });

export interface RouteManagerOptions {
  dev: string;
  table: number;
  rulePriority: number;
  ip?: IpRunner;
}

/** Reference-counted routes into the TUN device plus the rule that uses their table. */
export class RouteManager {
  private readonly ip: IpRunner;
  /** "prefix|kind" -> references. */
  private readonly refs = new Map<string, number>();
  private rules = new Set<4 | 6>();

  constructor(private readonly opts: RouteManagerOptions) {
    this.ip = opts.ip ?? runIp;
  }

  private async ensureRule(family: 4 | 6): Promise<void> {
    if (this.rules.has(family)) return;
    const fam = family === 4 ? "-4" : "-6";
    const out = await this.ip([fam, "rule", "show", "priority", String(this.opts.rulePriority)]);
    if (!new RegExp(`lookup ${this.opts.table}\\b`).test(out)) {
      await this.ip([fam, "rule", "add", "priority", String(this.opts.rulePriority), "table", String(this.opts.table)]);
    }
    this.rules.add(family);
  }

  /** Route `prefix` ("10.2.0.0/16") into the TUN device, with `src` when given. */
  async addRoute(prefix: string, family: 4 | 6, src: string | undefined): Promise<void> {
    const k = `${prefix}|dev`;
    const n = this.refs.get(k) ?? 0;
    this.refs.set(k, n + 1);
    if (n > 0) return;
    try {
      await this.ensureRule(family);
      const args = [family === 4 ? "-4" : "-6", "route", "replace", prefix, "dev", this.opts.dev];
      if (src) args.push("src", src);
      args.push("table", String(this.opts.table));
      await this.ip(args);
    } catch (e) {
      this.refs.delete(k);
      throw e;
    }
  }

  /**
   * A `throw` route: traffic to `prefix` leaves table 220 and follows the main table
   * (bypass policies more specific than a protected subnet).
   */
  async addThrow(prefix: string, family: 4 | 6): Promise<void> {
    const k = `${prefix}|throw`;
    const n = this.refs.get(k) ?? 0;
    this.refs.set(k, n + 1);
    if (n > 0) return;
    try {
      await this.ensureRule(family);
      await this.ip([family === 4 ? "-4" : "-6", "route", "replace", "throw", prefix, "table", String(this.opts.table)]);
    } catch (e) {
      this.refs.delete(k);
      throw e;
    }
  }

  async remove(prefix: string, family: 4 | 6, kind: "dev" | "throw"): Promise<void> {
    const k = `${prefix}|${kind}`;
    const n = this.refs.get(k) ?? 0;
    if (n > 1) {
      this.refs.set(k, n - 1);
      return;
    }
    if (n === 0) return;
    this.refs.delete(k);
    const args = [family === 4 ? "-4" : "-6", "route", "del"];
    if (kind === "throw") args.push("throw");
    args.push(prefix, "table", String(this.opts.table));
    await this.ip(args).catch(() => undefined); // already gone (device removed): fine
  }

  /** Remove our rules (routes via the TUN device vanish with the device). */
  async close(): Promise<void> {
    for (const f of this.rules) {
      await this.ip([f === 4 ? "-4" : "-6", "rule", "del", "priority", String(this.opts.rulePriority), "table", String(this.opts.table)]).catch(() => undefined);
    }
    this.rules.clear();
    for (const k of this.refs.keys()) {
      const [prefix, kind] = k.split("|");
      if (kind === "throw") await this.ip(["route", "del", "throw", prefix!, "table", String(this.opts.table)]).catch(() => undefined);
    }
    this.refs.clear();
  }

  /** Local addresses (for a route's `src`). */
  async localAddresses(): Promise<string[]> {
    const out = await this.ip(["-j", "addr", "show"]);
    const links = JSON.parse(out) as { addr_info?: { local?: string }[] }[];
    return links.flatMap((l) => (l.addr_info ?? []).map((a) => a.local ?? "")).filter((a) => a !== "");
  }
}
