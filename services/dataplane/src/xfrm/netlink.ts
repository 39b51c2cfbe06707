/**
 * NETLINK_XFRM transport over the npm `netlink` package's RawNetlinkSocket (a native
 * AF_NETLINK socket with a libuv poll watcher; we send and receive whole datagrams and
 * do all framing in codec.ts). One socket for requests (matched to replies by sequence
 * number), one joined to the multicast groups for notifications.
 */
import { constants as osConstants } from "node:os";
import { createRequire } from "node:module";
import { KernelError, UnavailableError } from "@fleetswan/common";
import { type XfrmMessage, decodeMessages, encodeMessage } from "./codec.js";
import { NETLINK_XFRM, NLMSG, NLM_F } from "./constants.js";

// `netlink` is CommonJS; load its raw layer only (no rtnetlink/genl parsing).
const require = createRequire(import.meta.url);

interface RawSocket {
  send(msg: Uint8Array, options?: { port?: number }, cb?: (err?: Error & { errno?: number }) => void): void;
  on(ev: "message", l: (msg: Buffer) => void): unknown;
  on(ev: "error", l: (err: Error) => void): unknown;
  addMembership(group: number): void;
  close(): void;
  unref(): void;
  ref(): void;
  address(): { port: number };
  setRecvBufferSize(n: number): unknown;
}
interface RawModule {
  RawNetlinkSocket: new (protocol: number, options?: Record<string, unknown>) => RawSocket;
}

const ERRNO_NAME = new Map<number, string>(Object.entries(osConstants.errno).map(([k, v]) => [v, k]));
/** "ESRCH" for 3, for messages. */
export function errnoName(errno: number): string {
  return ERRNO_NAME.get(errno) ?? `errno ${errno}`;
}

/** Counters the metrics layer reads. */
export interface NetlinkStats {
  requests: number;
  errorsByErrno: Map<string, number>;
  decodeErrors: number;
}

interface Pending {
  describe: string;
  replies: XfrmMessage[];
  dump: boolean;
  ack: boolean;
  resolve(m: XfrmMessage[]): void;
  reject(e: Error): void;
  timer: NodeJS.Timeout;
}

export interface XfrmSocketOptions {
  /** Request timeout (default 5 s). */
  timeoutMs?: number;
  /** Multicast groups to join (XFRMNLGRP_*) for notifications. */
  groups?: number[];
  /** Called for every message that is not a reply to our requests (notifications). */
  onNotification?: (m: XfrmMessage) => void;
  /** Called when a datagram cannot be decoded. */
  onDecodeError?: (e: Error) => void;
}

/** A NETLINK_XFRM socket: request/reply by sequence number, plus notifications. */
export class XfrmSocket {
  readonly stats: NetlinkStats = { requests: 0, errorsByErrno: new Map(), decodeErrors: 0 };
  private readonly sock: RawSocket;
  private readonly pending = new Map<number, Pending>();
  private seq = Math.floor(Math.random() * 0x7fffffff);
  private closed = false;

  constructor(private readonly opts: XfrmSocketOptions = {}) {
    let mod: RawModule;
    try {
      mod = require("netlink/dist/raw.js") as RawModule;
    } catch (e) {
      throw new UnavailableError(`cannot load the netlink package's native binding: ${(e as Error).message}`, {}, { cause: e });
    }
    try {
      this.sock = new mod.RawNetlinkSocket(NETLINK_XFRM, { recvBufferSize: 4 << 20, sendBufferSize: 1 << 20 });
    } catch (e) {
      const errno = (e as { errno?: number }).errno ?? 0;
      throw new KernelError(`cannot open NETLINK_XFRM socket: ${(e as Error).message}`, Math.abs(errno), "opening a NETLINK_XFRM socket (is xfrm_user loaded? are we root?)");
    }
    for (const g of opts.groups ?? []) this.sock.addMembership(g);
    this.sock.on("message", (buf) => this.receive(buf));
    this.sock.on("error", (err) => {
      for (const p of this.pending.values()) p.reject(new UnavailableError(`netlink socket error: ${err.message}`, { request: p.describe }));
    });
    // Only notification sockets keep the process alive; request sockets hold a ref while waiting.
    this.sock.unref();
  }

  /** Keep the event loop alive (for notification sockets). */
  ref(): void {
    this.sock.ref();
  }

  /**
   * Send a request and collect its replies: an ACK (NLMSG_ERROR errno 0) for changes,
   * the reply message for GET/ALLOCSPI, every part up to NLMSG_DONE for dumps. A kernel
   * error rejects with KernelError(errno, describe).
   */
  request(m: Omit<XfrmMessage, "seq" | "pid">, describe: string, timeoutMs = this.opts.timeoutMs ?? 5000): Promise<XfrmMessage[]> {
    if (this.closed) return Promise.reject(new UnavailableError("netlink socket closed", { request: describe }));
    const seq = (this.seq = (this.seq + 1) >>> 0 || 1);
    const buf = encodeMessage({ ...m, seq, pid: 0 });
    this.stats.requests++;
    return new Promise<XfrmMessage[]>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(seq);
        this.sockUnrefIfIdle();
        reject(new UnavailableError(`no netlink reply after ${timeoutMs} ms`, { request: describe }));
      }, timeoutMs);
      this.pending.set(seq, {
        describe,
        replies: [],
        dump: (m.flags & NLM_F.DUMP) === NLM_F.DUMP,
        ack: (m.flags & NLM_F.ACK) !== 0,
        resolve,
        reject,
        timer,
      });
      this.sock.ref();
      this.sock.send(buf, { port: 0 }, (err) => {
        if (!err) return;
        const p = this.finish(seq);
        p?.reject(new KernelError(`sendmsg failed: ${err.message}`, Math.abs(err.errno ?? 0), describe));
      });
    });
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const [seq, p] of this.pending) {
      this.finish(seq);
      p.reject(new UnavailableError("netlink socket closed", { request: p.describe }));
    }
    this.sock.close();
  }

  private finish(seq: number): Pending | undefined {
    const p = this.pending.get(seq);
    if (!p) return undefined;
    clearTimeout(p.timer);
    this.pending.delete(seq);
    this.sockUnrefIfIdle();
    return p;
  }

  private sockUnrefIfIdle(): void {
    if (this.pending.size === 0 && !this.closed) this.sock.unref();
  }

  private receive(buf: Buffer): void {
    let msgs: XfrmMessage[];
    try {
      msgs = decodeMessages(buf);
    } catch (e) {
      this.stats.decodeErrors++;
      this.opts.onDecodeError?.(e as Error);
      return;
    }
    for (const m of msgs) {
      const p = m.seq ? this.pending.get(m.seq) : undefined;
      if (!p) {
        if (m.body.kind !== "error" && m.body.kind !== "done") this.opts.onNotification?.(m);
        continue;
      }
      if (m.body.kind === "error") {
        this.finish(m.seq);
        if (m.body.errno === 0) p.resolve(p.replies);
        else {
          const name = errnoName(m.body.errno);
          this.stats.errorsByErrno.set(name, (this.stats.errorsByErrno.get(name) ?? 0) + 1);
          p.reject(new KernelError(`kernel refused: ${name}`, m.body.errno, p.describe, { errnoName: name }));
        }
      } else if (m.body.kind === "done" || (m.type === NLMSG.DONE)) {
        this.finish(m.seq);
        p.resolve(p.replies);
      } else {
        p.replies.push(m);
        // GET/ALLOCSPI without ACK: a single reply completes the request.
        if (!p.dump && !p.ack) {
          this.finish(m.seq);
          p.resolve(p.replies);
        }
      }
    }
  }
}

/** True when a KernelError means "no such object" (ESRCH for SAs, ENOENT for policies). */
export function isNotFound(e: unknown): boolean {
  const errno = (e as { errno?: number }).errno;
  return e instanceof KernelError && (errno === osConstants.errno.ESRCH || errno === osConstants.errno.ENOENT);
}

/** True when a KernelError is EEXIST. */
export function isExists(e: unknown): boolean {
  return e instanceof KernelError && e.errno === osConstants.errno.EEXIST;
}
