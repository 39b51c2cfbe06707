/**
 * Minimal two-namespace lab for the userspace ESP itests and the benchmark: netns A and B
 * joined by a veth (192.0.2.1/24 <-> 192.0.2.2/24), site addresses on lo (10.1.0.1, 10.2.0.1),
 * and an esp-peer driver process per side. Namespaces are named fs-esp{a,b}-<pid>.
 */
import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { dirname, join } from "node:path";
import type { TunnelSpec } from "./tunnel-config.js";

export const DRIVER = join(dirname(fileURLToPath(import.meta.url)), "esp-peer.js");

export function sh(cmd: string): string {
  return execFileSync("sh", ["-c", cmd], { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
}

export interface Lab { a: string; b: string; destroy(): void }

export function createLab(tag = String(process.pid)): Lab {
  const a = `fs-espa-${tag}`, b = `fs-espb-${tag}`;
  const destroy = () => {
    for (const n of [a, b]) try { execFileSync("ip", ["netns", "del", n], { stdio: "ignore" }); } catch { /* gone */ }
  };
  destroy();
  sh(`ip netns add ${a} && ip netns add ${b}
      ip -n ${a} link set lo up && ip -n ${b} link set lo up
      ip -n ${a} link add veth0 type veth peer name veth0 netns ${b}
      ip -n ${a} addr add 192.0.2.1/24 dev veth0 && ip -n ${b} addr add 192.0.2.2/24 dev veth0
      ip -n ${a} link set veth0 up && ip -n ${b} link set veth0 up
      ip -n ${a} addr add 10.1.0.1/32 dev lo && ip -n ${b} addr add 10.2.0.1/32 dev lo`);
  process.once("exit", destroy);
  return { a, b, destroy };
}

export interface PeerStats {
  stats: { outPackets: number; inPackets: number; drops: Record<string, number> };
  /** The addon's TUN offload counters in that process (undefined with an older addon). */
  tun?: { reads: number; superPackets: number; segments: number; coalescedWrites: number; coalescedPackets: number; dropped: number };
  sas: { spi: number; dir: number; packets: number; bytes: number; replayErrors: number; integrityErrors: number }[];
}

/** A running esp-peer driver in a namespace. */
export class Peer {
  readonly proc: ChildProcess;
  private readonly lines: string[] = [];
  private waiters: ((l: string) => void)[] = [];
  log = "";

  constructor(ns: string, spec: TunnelSpec, side: "a" | "b") {
    this.proc = spawn("ip", ["netns", "exec", ns, process.execPath, DRIVER, JSON.stringify({ spec, side })], { stdio: ["pipe", "pipe", "pipe"] });
    createInterface({ input: this.proc.stdout! }).on("line", (l) => {
      const w = this.waiters.shift();
      if (w) w(l);
      else this.lines.push(l);
    });
    this.proc.stderr!.on("data", (d: Buffer) => (this.log += d.toString()));
  }

  next(timeoutMs = 20_000): Promise<string> {
    const l = this.lines.shift();
    if (l !== undefined) return Promise.resolve(l);
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`esp-peer: no output in ${timeoutMs} ms; stderr: ${this.log}`)), timeoutMs);
      this.waiters.push((x) => { clearTimeout(t); resolve(x); });
      this.proc.once("exit", (c) => reject(new Error(`esp-peer exited ${c}: ${this.log}`)));
    });
  }

  async ready(): Promise<void> {
    const l = await this.next();
    if (l !== "ready") throw new Error(`esp-peer: expected "ready", got ${l}; stderr: ${this.log}`);
  }

  async stats(): Promise<PeerStats> {
    this.proc.stdin!.write("stats\n");
    return JSON.parse(await this.next()) as PeerStats;
  }

  stop(): void {
    try { this.proc.stdin!.end("quit\n"); } catch { /* gone */ }
    setTimeout(() => this.proc.kill("SIGKILL"), 2000).unref();
  }
}

/** UDP payloads (ESP-in-UDP without marker check) of a classic pcap on an Ethernet link. */
export function udpPayloadsFromPcap(pcap: Buffer): Buffer[] {
  const out: Buffer[] = [];
  let off = 24;
  while (off + 16 <= pcap.length) {
    const incl = pcap.readUInt32LE(off + 8);
    const frame = pcap.subarray(off + 16, off + 16 + incl);
    off += 16 + incl;
    if (frame.length < 14 + 20 + 8 || frame.readUInt16BE(12) !== 0x0800) continue;
    const ip = frame.subarray(14);
    if (ip[9] !== 17) continue;
    const ihl = (ip[0]! & 15) * 4;
    out.push(Buffer.from(ip.subarray(ihl + 8, ip.readUInt16BE(2))));
  }
  return out;
}
