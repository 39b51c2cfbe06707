/**
 * The task manager of one IKE SA (strongSwan's task_manager_v2): it owns what every
 * exchange shares — message IDs, the request window, retransmission, the cached last
 * response, and the queue of tasks waiting to initiate an exchange.
 *
 * Message IDs (RFC 7296 §2.2): we number our requests from 0 (`myMid`); we expect the
 * peer's requests in order (`peerMid`). A request with the previous ID is a retransmit:
 * we resend the cached response without processing it again (§2.1). Anything else is
 * dropped.
 *
 * Window size 1 (§2.3, no SET_WINDOW_SIZE): one request of ours outstanding at a time.
 * The peer's requests are answered independently, which is how collisions (§2.8.1,
 * §2.25) arise; tasks resolve them with the help of `active`.
 *
 * Retransmission (§2.1, schedule as strongSwan's charon.retransmit_*): the request is
 * resent after timeout(n) = base × 1.8^n seconds for n = 0..tries-1, and the exchange
 * fails after the last timeout. With the defaults (4 s, 1.8, 5 tries):
 *
 *   send at 0 s, resend at 4, 11.2, 24.2, 47.5, 89.5 s, give up at 165.1 s.
 *
 * A task may set `deadlineMs` (DPD: the dpd_timeout) to give up earlier.
 *
 * Fragmentation (RFC 7383): once both ends announced IKEV2_FRAGMENTATION_SUPPORTED in
 * IKE_SA_INIT (`fragmentation`), a protected message larger than the path limit
 * (`maxDatagram`, the IKE message without IP/UDP headers) goes out as SKF fragments of the
 * same message ID (§2.5), and they are resent together (§2.6.1). Incoming SKF fragments are
 * integrity-checked one by one and reassembled (§2.6) before the message is processed; a
 * retransmitted fragmented request is answered (with the cached response) on its first
 * fragment only.
 */
import type { Logger } from "@fleetswan/common";
import {
  DEFAULT_MAX_DATAGRAM,
  encodeMessage,
  FragmentReassembler,
  openFragment,
  sealMaybeFragmented,
  ExchangeType,
  IkeDecodeError,
  IkeIntegrityError,
  nameOf,
  NotifyType,
  openMessage,
  PayloadType,
  sealMessage,
  type DecodedMessage,
  type IkeHeader,
  type Payload,
} from "../wire/index.js";
import { IkeFailure, Reason } from "./failure.js";
import { unpooled, type IkeSa } from "./sa.js";

export type TaskType = "ike_init" | "ike_auth" | "child_create" | "child_rekey" | "ike_rekey" | "child_delete" | "ike_delete" | "ike_dpd";

/** An exchange this side initiates. */
export interface Task {
  readonly type: TaskType;
  readonly exchange: number;
  /** Give up after this many ms even if retransmits are left (DPD timeout). */
  readonly deadlineMs?: number;
  /** Builds the request payloads. Throwing IkeFailure fails the task without sending. */
  build(sa: IkeSa): Promise<Payload[]>;
  /** Processes the response; "retry" sends a new request built by build() (IKE_SA_INIT with COOKIE or a new KE group). */
  process(sa: IkeSa, payloads: Payload[], msg: DecodedMessage): Promise<"done" | "retry">;
  /** The exchange failed (timeout, error); the SA may be gone. */
  failed(sa: IkeSa, err: IkeFailure): Promise<void>;
}

/** The answer to a peer's request, and what to do once it is sent. */
export interface Response {
  payloads: Payload[];
  after?: () => Promise<void>;
}

export interface RetransmitConfig {
  /** First timeout, ms (strongSwan retransmit_timeout = 4 s). */
  timeoutMs: number;
  /** Backoff base (retransmit_base = 1.8). */
  base: number;
  /** Retransmissions before giving up (retransmit_tries = 5). */
  tries: number;
}

export const DEFAULT_RETRANSMIT: RetransmitConfig = { timeoutMs: 4000, base: 1.8, tries: 5 };

/** What the task manager needs from the engine. */
export interface TaskManagerHost {
  log: Logger;
  retransmit: RetransmitConfig;
  send(sa: IkeSa, packet: Buffer): void;
  /** Largest IKE message before fragmenting (RFC 7383 §2.5.1; default DEFAULT_MAX_DATAGRAM). */
  maxDatagram?: number;
  /** Responder side: process a request of the peer (dispatch by exchange and content). */
  respond(sa: IkeSa, exchange: number, payloads: Payload[], msg: DecodedMessage): Promise<Response | undefined>;
  /** A request of ours was retransmitted. */
  onRetransmit(sa: IkeSa, task: Task): void;
}

interface Active {
  task: Task;
  mid: number;
  /** The request as sent: one datagram, or its SKF fragments (RFC 7383). */
  packets: Buffer[];
  retransmits: number;
  timer?: NodeJS.Timeout;
  startedAt: number;
}

export class TaskManager {
  #queue: Task[] = [];
  #active: Active | undefined;
  #myMid = 0;
  #peerMid = 0;
  #lastResponse: { mid: number; packets: Buffer[] } | undefined;
  #destroyed = false;
  /** RFC 7383: both ends announced IKEV2_FRAGMENTATION_SUPPORTED (set by ike_init, inherited on IKE rekey). */
  fragmentation = false;
  /** Reassembly state (RFC 7383 §2.6), made when the first fragment arrives: most IKE SAs never see one. */
  #requestFragments?: FragmentReassembler;
  #responseFragments?: FragmentReassembler;

  constructor(
    private readonly sa: IkeSa,
    private readonly host: TaskManagerHost,
  ) {}

  /** The exchange we are waiting for, if any. */
  get active(): Task | undefined {
    return this.#active?.task;
  }
  get queued(): readonly Task[] {
    return this.#queue;
  }
  /** Next message IDs (for tests and status). */
  get mids(): { mine: number; peer: number } {
    return { mine: this.#myMid, peer: this.#peerMid };
  }

  /** Queues a task and starts it when the window is free. */
  queue(task: Task, front = false): void {
    if (this.#destroyed) return;
    if (front) this.#queue.unshift(task);
    else this.#queue.push(task);
    void this.initiate();
  }

  /** Removes queued tasks matching `pred` (not the active one). */
  dequeue(pred: (t: Task) => boolean): void {
    this.#queue = this.#queue.filter((t) => !pred(t));
  }

  /** Starts the next task if no request is outstanding. */
  async initiate(): Promise<void> {
    if (this.#destroyed || this.#active || this.#queue.length === 0) return;
    const task = this.#queue.shift()!;
    // Reserve the window before the async build so a second call cannot start another.
    const active: Active = { task, mid: this.#myMid, packets: [], retransmits: 0, startedAt: Date.now() };
    this.#active = active;
    await this.#buildAndSend(active);
  }

  async #buildAndSend(active: Active): Promise<void> {
    let payloads: Payload[];
    try {
      payloads = await active.task.build(this.sa);
    } catch (err) {
      this.#active = undefined;
      await this.#fail(active.task, toFailure(err));
      void this.initiate();
      return;
    }
    if (this.#destroyed || this.#active !== active) return;
    active.packets = this.#encode(active.task.exchange, active.mid, false, payloads);
    active.retransmits = 0;
    this.host.log.debug({ sa: this.sa.uniqueId, exchange: nameOf(ExchangeType, active.task.exchange), mid: active.mid, payloads: summarize(payloads), ...(active.packets.length > 1 ? { fragments: active.packets.length } : {}) }, "sending request");
    this.#sendAll(active.packets);
    this.#arm(active);
  }

  #arm(active: Active): void {
    const { timeoutMs, base, tries } = this.host.retransmit;
    const timeout = timeoutMs * Math.pow(base, active.retransmits);
    active.timer = setTimeout(() => {
      if (this.#active !== active || this.#destroyed) return;
      const elapsed = Date.now() - active.startedAt;
      const deadline = active.task.deadlineMs;
      if (active.retransmits >= tries || (deadline !== undefined && elapsed >= deadline)) {
        this.#active = undefined;
        this.host.log.info({ sa: this.sa.uniqueId, conn: this.sa.name, exchange: nameOf(ExchangeType, active.task.exchange), retransmits: active.retransmits, seconds: Math.round(elapsed / 100) / 10 },
          `giving up after ${active.retransmits} retransmits: no answer from ${this.sa.remote.address}:${this.sa.remote.port} (check that the peer is up and UDP 500/4500 pass)`);
        void this.#fail(active.task, new IkeFailure(Reason.TIMEOUT, `no response from ${this.sa.remote.address} to ${nameOf(ExchangeType, active.task.exchange)} after ${active.retransmits} retransmits`));
        return;
      }
      active.retransmits++;
      this.host.onRetransmit(this.sa, active.task);
      this.host.log.debug({ sa: this.sa.uniqueId, mid: active.mid, n: active.retransmits }, "retransmitting request");
      // RFC 7383 §2.6.1: all fragments, as first sent.
      this.#sendAll(active.packets);
      this.#arm(active);
    }, deadlineClip(timeout, active));
    active.timer.unref?.();
  }

  async #fail(task: Task, err: IkeFailure): Promise<void> {
    try {
      await task.failed(this.sa, err);
    } catch (e) {
      this.host.log.error({ err: e, sa: this.sa.uniqueId }, "task failure handler threw");
    }
  }

  #sendAll(packets: Buffer[]): void {
    for (const p of packets) this.host.send(this.sa, p);
  }

  /** Encodes (and for all but IKE_SA_INIT, seals) a message of this SA: one datagram, or SKF fragments (RFC 7383 §2.5). */
  #encode(exchange: number, mid: number, response: boolean, payloads: Payload[]): Buffer[] {
    const header: IkeHeader = { spiI: this.sa.spiI, spiR: this.sa.spiR, exchangeType: exchange, messageId: mid, initiator: this.sa.initiator, response };
    if (exchange === ExchangeType.IKE_SA_INIT) return [encodeMessage(header, payloads)];
    if (!this.sa.keymat) throw new Error("no keys for a protected message");
    if (!this.fragmentation) return [sealMessage(header, payloads, this.sa.keymat.out)];
    // On UDP 4500 the non-ESP marker takes 4 octets of the datagram (RFC 3948 §2.2).
    const maxDatagram = (this.host.maxDatagram ?? DEFAULT_MAX_DATAGRAM) - (this.sa.natT ? 4 : 0);
    return sealMaybeFragmented(header, payloads, this.sa.keymat.out, { fragmentation: true, maxDatagram });
  }

  /** The responder's IKE_SA_INIT response was sent outside (by the engine): account for it. */
  initResponded(packet: Buffer): void {
    this.#peerMid = 1;
    this.#lastResponse = { mid: 0, packets: [packet] };
  }

  /** The IKE_SA_INIT exchange of the initiator completed (ike_init done): message ID 1 next. */
  initCompleted(): void {
    this.#myMid = Math.max(this.#myMid, 1);
  }

  /** Handles a message of this SA (already matched by SPI). Serialized by the engine. */
  async handle(msg: DecodedMessage): Promise<void> {
    if (this.#destroyed) return;
    const h = msg.header;
    if (h.response) await this.#handleResponse(msg);
    else await this.#handleRequest(msg);
  }

  /**
   * Verifies and decrypts a protected message; undefined = nothing to process (integrity
   * failure, or a fragment of a message still incomplete).
   */
  #open(msg: DecodedMessage): Payload[] | undefined {
    if (msg.header.exchangeType === ExchangeType.IKE_SA_INIT) return msg.payloads;
    if (!this.sa.keymat) return undefined;
    try {
      if (msg.encrypted?.type === PayloadType.SKF) {
        // RFC 7383 §2.6: each fragment is verified on its own, then reassembled. Fragments
        // are accepted only when we announced support (ike_init sets `fragmentation`).
        if (!this.fragmentation) {
          this.host.log.info({ sa: this.sa.uniqueId, mid: msg.header.messageId }, "dropping an IKE fragment: fragmentation was not negotiated");
          return undefined;
        }
        const f = openFragment(msg, this.sa.keymat.in);
        const r = (msg.header.response ? (this.#responseFragments ??= new FragmentReassembler()) : (this.#requestFragments ??= new FragmentReassembler())).add(msg.header.messageId, f);
        if (r.status === "discarded") this.host.log.info({ sa: this.sa.uniqueId, mid: msg.header.messageId, reason: r.reason }, "discarding IKE fragment");
        if (r.status !== "complete") {
          if (r.status === "incomplete") this.host.log.debug({ sa: this.sa.uniqueId, mid: msg.header.messageId, received: r.received, total: r.total }, "IKE fragment received");
          return undefined;
        }
        this.host.log.debug({ sa: this.sa.uniqueId, mid: msg.header.messageId, fragments: f.totalFragments, bytes: r.plaintext.length }, "IKE message reassembled from fragments");
        return [...msg.payloads.slice(0, -1), ...r.payloads];
      }
      return openMessage(msg, this.sa.keymat.in);
    } catch (err) {
      if (err instanceof IkeIntegrityError) {
        // §2.21.2: an integrity failure is dropped silently (logged, not answered).
        this.host.log.info({ sa: this.sa.uniqueId, mid: msg.header.messageId }, "dropping message: integrity check failed");
        return undefined;
      }
      throw err;
    }
  }

  async #handleResponse(msg: DecodedMessage): Promise<void> {
    const active = this.#active;
    if (!active || msg.header.messageId !== active.mid || msg.header.exchangeType !== active.task.exchange) {
      this.host.log.debug({ sa: this.sa.uniqueId, mid: msg.header.messageId }, "dropping unexpected response");
      return;
    }
    let payloads: Payload[] | undefined;
    try {
      payloads = this.#open(msg);
    } catch (err) {
      this.host.log.info({ sa: this.sa.uniqueId, err: (err as Error).message }, "dropping malformed response");
      return;
    }
    if (!payloads) return;
    clearTimeout(active.timer);
    this.sa.lastInbound = Date.now();
    let result: "done" | "retry";
    try {
      result = await active.task.process(this.sa, payloads, msg);
    } catch (err) {
      if (this.#active === active) {
        this.#active = undefined;
        if (active.task.exchange !== ExchangeType.IKE_SA_INIT) this.#myMid = active.mid + 1;
      }
      await this.#fail(active.task, toFailure(err));
      void this.initiate();
      return;
    }
    if (this.#active !== active) return;
    if (result === "retry") {
      // IKE_SA_INIT again (COOKIE / INVALID_KE_PAYLOAD): same message ID 0.
      active.startedAt = Date.now();
      await this.#buildAndSend(active);
      return;
    }
    this.#active = undefined;
    this.#myMid = active.mid + 1;
    void this.initiate();
  }

  async #handleRequest(msg: DecodedMessage): Promise<void> {
    const mid = msg.header.messageId;
    if (this.#lastResponse && mid === this.#lastResponse.mid) {
      // §2.1: a retransmitted request: send the same response again, do not process.
      // RFC 7383 §2.6.1: for a fragmented request, once (on its first fragment).
      if (msg.encrypted?.type === PayloadType.SKF && msg.encrypted.fragmentNumber !== 1) return;
      this.host.log.debug({ sa: this.sa.uniqueId, mid }, "retransmitting cached response");
      this.#sendAll(this.#lastResponse.packets);
      return;
    }
    if (mid !== this.#peerMid) {
      this.host.log.debug({ sa: this.sa.uniqueId, mid, expected: this.#peerMid }, "dropping request with unexpected message ID");
      return;
    }
    let payloads: Payload[] | undefined;
    let response: Response | undefined;
    try {
      payloads = this.#open(msg);
      if (!payloads) return;
      this.sa.lastInbound = Date.now();
      response = await this.host.respond(this.sa, msg.header.exchangeType, payloads, msg);
    } catch (err) {
      if (err instanceof IkeDecodeError) {
        // §2.21.2 / §3.10.1: protected malformed request -> INVALID_SYNTAX.
        response = { payloads: [notify(NotifyType.INVALID_SYNTAX)] };
      } else {
        this.host.log.error({ err, sa: this.sa.uniqueId }, "processing request failed");
        response = { payloads: [notify(NotifyType.TEMPORARY_FAILURE)] };
      }
    }
    if (!response || this.#destroyed && !response.after) return;
    const packets = this.#encode(msg.header.exchangeType, mid, true, response.payloads);
    // kept until the next request (§2.1 retransmits), for an idle SA its whole life: not in the shared Buffer pool
    this.#lastResponse = { mid, packets: unpooled(...packets) };
    this.#peerMid = mid + 1;
    this.host.log.debug({ sa: this.sa.uniqueId, exchange: nameOf(ExchangeType, msg.header.exchangeType), mid, payloads: summarize(response.payloads), ...(packets.length > 1 ? { fragments: packets.length } : {}) }, "sending response");
    this.#sendAll(packets);
    if (response.after) await response.after();
  }

  /** Stops timers and fails nothing (the SA is going away). */
  destroy(): void {
    this.#destroyed = true;
    if (this.#active) clearTimeout(this.#active.timer);
    this.#active = undefined;
    this.#queue = [];
  }

  /** Aborts the active exchange and queued tasks with `err` (e.g. the SA is deleted). */
  async abortAll(err: IkeFailure): Promise<void> {
    const tasks = [...(this.#active ? [this.#active.task] : []), ...this.#queue];
    this.destroy();
    for (const t of tasks) await this.#fail(t, err);
  }
}

function deadlineClip(timeout: number, a: Active): number {
  const d = a.task.deadlineMs;
  if (d === undefined) return timeout;
  const left = a.startedAt + d - Date.now();
  return Math.max(1, Math.min(timeout, left));
}

function toFailure(err: unknown): IkeFailure {
  if (err instanceof IkeFailure) return err;
  if (err instanceof IkeDecodeError) return new IkeFailure(Reason.INVALID_SYNTAX, err.message);
  const e = err as Error & { code?: string };
  if (e?.code === "UNAVAILABLE") return new IkeFailure(Reason.DATAPLANE_ERROR, e.message);
  return new IkeFailure(Reason.PEER_ERROR, e?.message ?? String(err));
}

/** A Notify payload without SPI. */
export function notify(type: number, data: Buffer = Buffer.alloc(0), protocol = 0, spi: Buffer = Buffer.alloc(0)): Payload {
  return { type: PayloadType.NOTIFY, protocol, notifyType: type, spi, data };
}

/** "SA KE No N(NATD_S_IP)" style summary for logs (as strongSwan's "generating IKE_SA_INIT request 0 [ SA KE No N(NATD_S_IP) ]"). */
export function summarize(payloads: readonly Payload[]): string {
  const names: Record<number, string> = { 33: "SA", 34: "KE", 35: "IDi", 36: "IDr", 37: "CERT", 38: "CERTREQ", 39: "AUTH", 40: "No", 42: "D", 43: "V", 44: "TSi", 45: "TSr", 47: "CP", 48: "EAP" };
  return payloads
    .map((p) => (p.type === PayloadType.NOTIFY ? `N(${nameOf(NotifyType, (p as { notifyType: number }).notifyType)})` : (names[p.type] ?? `P${p.type}`)))
    .join(" ");
}
