/**
 * Watching NATS KV keys, the one way every service does it: a push consumer created with
 * the filtered create subject $JS.API.CONSUMER.CREATE.<stream>.<name>.<filter>, delivering
 * the last value of each matching key and then every change, without acks.
 *
 * It survives the loss of a NATS node. Idle heartbeats show the consumer is alive; after a
 * reconnect or missed heartbeats a new consumer replaces it and delivers the latest values
 * again (callers apply only differences, so a resync is harmless). nats.js kv.watch() is
 * not used: its ordered consumer resets through the unfiltered create subject, which a
 * confined gateway may not use (docs/security.md), and when that reset fails (a cluster
 * still electing the stream leader of a dead node) its iterator ends for good: a
 * controller replica then served the old spec or no status until restarted.
 */
import { createInbox, nuid, type Msg, type NatsConnection, type Status, type Subscription } from "nats";
import type { Logger } from "./log.js";
import { UnavailableError } from "./errors.js";

export interface KvChange {
  key: string;
  op: "PUT" | "DEL";
  value: Uint8Array;
  /** Stream sequence (the KV revision), 0 if unknown. */
  revision: number;
}

export interface KeyWatcherOptions {
  nc: NatsConnection;
  bucket: string;
  /** Key or key pattern within the bucket ("gw-a", "gw-a.>", ">"). */
  key: string;
  onChange: (c: KvChange) => void;
  /** Called when the initial values of a (re)subscription have all arrived. */
  onSynced?: () => void;
  log: Logger;
  /** Idle heartbeat of the consumer; three missed ones replace it (default 5 s). */
  heartbeatMs?: number;
}

const NS = 1_000_000;

export class KeyWatcher {
  readonly #o: KeyWatcherOptions;
  readonly #prefix: string;
  #sub: Subscription | undefined;
  #lastSeen = 0;
  #timer: NodeJS.Timeout | undefined;
  #statusEvents: { stop(): void } | undefined;
  #stopped = false;
  #establishing: Promise<void> | undefined;
  #generation = 0;
  /** Consecutive failed subscriptions (e.g. the bucket does not exist yet) and when to try again. */
  #failures = 0;
  #retryAt = 0;
  #firstSynced!: () => void;
  readonly #firstSync = new Promise<void>((r) => (this.#firstSynced = r));

  constructor(o: KeyWatcherOptions) {
    this.#o = o;
    this.#prefix = `$KV.${o.bucket}.`;
  }

  get #hb(): number {
    return this.#o.heartbeatMs ?? 5000;
  }

  start(): void {
    this.#timer = setInterval(() => {
      if (!this.#stopped && !this.#establishing && Date.now() - this.#lastSeen > 3 * this.#hb && Date.now() >= this.#retryAt) {
        this.#o.log.debug({ bucket: this.#o.bucket }, "watch heartbeats missed; resubscribing");
        this.resync();
      }
    }, this.#hb);
    this.#timer.unref();
    // A reconnect (possibly to another cluster node) may have lost the consumer: replace it now.
    const events = this.#o.nc.status() as AsyncIterable<Status> & { stop(): void };
    this.#statusEvents = events;
    void (async () => {
      for await (const s of events) if (s.type === "reconnect") this.resync();
    })().catch(() => undefined);
    this.resync();
  }

  /** Resolves when the first subscription has delivered every initial value; rejects after timeoutMs. */
  async waitSynced(timeoutMs: number): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new UnavailableError(`cannot read KV bucket ${this.#o.bucket} (no answer within ${timeoutMs / 1000} s)`)), timeoutMs);
    });
    try {
      await Promise.race([this.#firstSync, timeout]);
    } finally {
      clearTimeout(timer);
    }
  }

  /** Replace the consumer (after a reconnect or a missed heartbeat). */
  resync(): void {
    if (this.#stopped || this.#establishing) return;
    this.#establishing = this.#establish()
      .then(() => {
        this.#failures = 0;
        this.#retryAt = 0;
      })
      .catch((e: Error) => {
        // Back off (heartbeat period doubling, at most 6 of them): a thousand agents
        // started before keymgr created its bucket should not ask every 5 s each.
        this.#retryAt = Date.now() + Math.min(this.#hb * 2 ** this.#failures, 6 * this.#hb);
        this.#failures++;
        this.#o.log.debug({ bucket: this.#o.bucket, err: e.message }, "watch subscription failed; will retry");
      })
      .finally(() => {
        this.#establishing = undefined;
      });
  }

  async #establish(): Promise<void> {
    const gen = ++this.#generation;
    this.#sub?.unsubscribe();
    const nc = this.#o.nc;
    const inbox = createInbox((nc as unknown as { options: { inboxPrefix?: string } }).options.inboxPrefix);
    let synced = false;
    const markSynced = () => {
      if (!synced) {
        synced = true;
        this.#o.onSynced?.();
        this.#firstSynced();
      }
    };
    this.#sub = nc.subscribe(inbox, {
      callback: (err, m) => {
        if (err || gen !== this.#generation) return;
        this.#lastSeen = Date.now();
        this.#onMsg(m, markSynced);
      },
    });
    const stream = `KV_${this.#o.bucket}`;
    const filter = this.#prefix + this.#o.key;
    const name = nuid.next();
    const req = {
      stream_name: stream,
      config: {
        name,
        deliver_subject: inbox,
        filter_subject: filter,
        deliver_policy: "last_per_subject",
        ack_policy: "none",
        replay_policy: "instant",
        idle_heartbeat: this.#hb * NS,
        inactive_threshold: 4 * this.#hb * NS,
        mem_storage: true,
        num_replicas: 1,
      },
    };
    const r = await nc.request(`$JS.API.CONSUMER.CREATE.${stream}.${name}.${filter}`, new TextEncoder().encode(JSON.stringify(req)), { timeout: 5000 });
    const info = JSON.parse(new TextDecoder().decode(r.data)) as { error?: { code: number; description: string }; num_pending?: number };
    if (info.error) throw new Error(`consumer on ${filter}: ${info.error.description} (${info.error.code})`);
    this.#lastSeen = Date.now();
    if ((info.num_pending ?? 0) === 0) markSynced();
  }

  #onMsg(m: Msg, markSynced: () => void): void {
    const h = m.headers;
    if (h && h.code === 100) return; // idle heartbeat (flow control is off)
    if (!m.subject.startsWith(this.#prefix)) return;
    const key = m.subject.slice(this.#prefix.length);
    const opHeader = h?.get("KV-Operation");
    const op = opHeader === "DEL" || opHeader === "PURGE" ? "DEL" : "PUT";
    const ack = parseAckSubject(m.reply ?? "");
    try {
      this.#o.onChange({ key, op, value: m.data, revision: ack?.streamSeq ?? 0 });
    } catch (e) {
      this.#o.log.warn({ bucket: this.#o.bucket, key, err: (e as Error).message }, "ignoring KV change");
    }
    if (ack?.pending === 0) markSynced();
  }

  stop(): void {
    this.#stopped = true;
    if (this.#timer) clearInterval(this.#timer);
    this.#statusEvents?.stop();
    this.#sub?.unsubscribe();
  }
}

/**
 * The stream sequence and pending count in a JetStream delivery's reply subject:
 * $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<dseq>.<ts>.<pending> (nats-server 2.9), or
 * $JS.ACK.<domain>.<account>.<stream>.<consumer>.<delivered>.<sseq>.<dseq>.<ts>.<pending>[.<token>] (2.10+).
 */
export function parseAckSubject(reply: string): { streamSeq: number; pending: number } | undefined {
  const t = reply.split(".");
  if (t[0] !== "$JS" || t[1] !== "ACK") return undefined;
  const at = t.length === 9 ? 5 : t.length === 11 || t.length === 12 ? 7 : -1;
  if (at < 0) return undefined;
  const streamSeq = Number(t[at]);
  const pending = Number(t[at + 3]);
  return Number.isSafeInteger(streamSeq) && Number.isSafeInteger(pending) ? { streamSeq, pending } : undefined;
}
