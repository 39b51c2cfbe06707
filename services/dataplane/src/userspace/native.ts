/**
 * Loader and types of the fsesp N-API addon (services/dataplane/native/fsesp.cc), built by
 * node-gyp from the package's install script (`npm ci`) or `npm run build:native -w
 * @fleetswan/dataplane`.
 */
import { createRequire } from "node:module";
import { existsSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { FleetswanError } from "@fleetswan/common";

export interface PollerInstance {
  start(): void;
  stop(): void;
  close(): void;
}

/**
 * Called once per batch: `meta` holds 8 words per packet (offset, length, family, port,
 * address[4]) into `data`, the poller's long-lived arena: valid during the call only (it is
 * overwritten by the next batch; copy what you keep) and longer than the batch.
 */
export type BatchCallback = (data: Buffer, meta: Uint32Array, error: string | undefined) => void;

export interface TunOffloadStats {
  reads: number;
  superPackets: number;
  segments: number;
  coalescedWrites: number;
  coalescedPackets: number;
  dropped: number;
}

export interface FsespAddon {
  /** offload: IFF_VNET_HDR + TUNSETOFFLOAD (TSO super-packets split, TCP segments coalesced on write; see fsesp.cc). */
  openTun(name: string): { fd: number; name: string; offload?: boolean };
  /** Process-wide TUN offload counters (TUN reads, TSO super-packets and their segments, coalesced writes, drops). */
  tunStats?(): TunOffloadStats;
  udpSocket(family: 4 | 6, address: Buffer, port: number, encap: boolean): number;
  setUdpEncap(fd: number): void;
  /** The port a socket is bound to (getsockname). */
  localPort?(fd: number): number;
  rawEspSocket(family: 4 | 6, bindAddress?: Buffer): number;
  /** Bytes written, or -errno for transient failures (EAGAIN, ENOBUFS, ...). */
  write(fd: number, packet: Buffer): number;
  /** Bytes sent, or -errno. */
  sendTo(fd: number, packet: Buffer, family: 4 | 6, address: Buffer, port: number): number;
  close(fd: number): void;
  /** write(2) each [offset, length] pair of `data` (one TUN packet per write); returns packets written. */
  writeBatch?(fd: number, data: Buffer, offLen: Uint32Array, n: number): number;
  Poller: new (fd: number, withAddress: boolean, maxBatch: number, cb: BatchCallback) => PollerInstance;
}

export class AddonMissingError extends FleetswanError {
  constructor(path: string, cause: unknown) {
    super(
      "ESP_ADDON_MISSING",
      `userspace ESP addon not loadable from ${path}: build it with \`npm run build:native -w @fleetswan/dataplane\` (needs python3, make, g++; npm ci runs it)`,
      { path },
      { cause },
    );
  }
}

let cached: FsespAddon | undefined;

/** Path of the built addon: <package>/native/build/Release/fsesp.node. */
export function addonPath(): string {
  // dist/src/userspace/native.js -> package root is three levels up from this directory
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 5; i++) {
    const p = join(dir, "native", "build", "Release", "fsesp.node");
    if (existsSync(p)) return p;
    dir = resolve(dir, "..");
  }
  return resolve(dirname(fileURLToPath(import.meta.url)), "../../../native/build/Release/fsesp.node");
}

export function loadAddon(): FsespAddon {
  if (cached) return cached;
  const path = addonPath();
  try {
    cached = createRequire(import.meta.url)(path) as FsespAddon;
  } catch (e) {
    throw new AddonMissingError(path, e);
  }
  return cached;
}
