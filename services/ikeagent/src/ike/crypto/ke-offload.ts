/**
 * The public-key work of a responder's IKE_SA_INIT (RFC 7296 §1.2, §2.14), off the event
 * loop. Answering an IKE_SA_INIT request takes our key exchange (a fresh key pair), g^ir
 * from the initiator's KE data (validated, RFC 6989 / RFC 8031 §2), and SKEYSEED with the
 * seven IKE SA keys. That is the largest single cost of a handshake, and it needs nothing
 * of the engine's state, so a pool of worker threads can do it while the event loop
 * handles other SAs (strongSwan spreads whole jobs over its thread pool instead).
 *
 *   responderKeyExchange()  the computation itself (the workers and the inline runner)
 *   InlineKeyExchange       runs it on the calling thread (engine default, tests)
 *   KeyExchangePool         runs it in worker threads (ke-worker.ts; the daemon's default)
 *
 * Key material crosses threads only inside this process (structured clone / transfer of
 * the buffers); the private value of our key exchange never leaves the thread that made it.
 */
import { availableParallelism } from "node:os";
import { Worker } from "node:worker_threads";
import { createKeyExchange, KeyExchangeError, type KeyExchange } from "./dh.js";
import { deriveInitialIkeKeys, type IkeKeyAlgorithms, type IkeSaKeys } from "./prf.js";

export interface ResponderKeRequest {
  /** The chosen DH group (the KE payload's group was checked against it). */
  group: number;
  /** The initiator's KE data. */
  peerPublic: Buffer;
  ni: Buffer;
  nr: Buffer;
  spiI: Buffer;
  spiR: Buffer;
  alg: IkeKeyAlgorithms;
}

export type ResponderKeResult =
  | { ok: true; /** KEr data. */ publicValue: Buffer; keys: IkeSaKeys }
  /** The initiator's KE data is invalid: answer INVALID_SYNTAX (RFC 6989 §2, RFC 7296 §3.10.1). */
  | { ok: false; invalid: string };

const KEY_NAMES = ["skD", "skAi", "skAr", "skEi", "skEr", "skPi", "skPr"] as const;

/**
 * §1.2 / §2.14 for the responder: KEr, g^ir and {SK_d, SK_ai, SK_ar, SK_ei, SK_er, SK_pi,
 * SK_pr}. `kex` is our key exchange (a pre-generated one from a worker's stock, or new).
 */
export function responderKeyExchange(req: ResponderKeRequest, kex: KeyExchange = createKeyExchange(req.group)): ResponderKeResult {
  let shared: Buffer;
  try {
    shared = kex.computeSharedSecret(req.peerPublic);
  } catch (err) {
    if (err instanceof KeyExchangeError) return { ok: false, invalid: err.message };
    throw err;
  }
  const keys = deriveInitialIkeKeys(req.alg, shared, req.ni, req.nr, req.spiI, req.spiR);
  shared.fill(0);
  return { ok: true, publicValue: kex.publicValue, keys };
}

/** Who computes the responder's IKE_SA_INIT keys. */
export interface KeyExchangeRunner {
  /** Worker threads in use (0 = the event loop). */
  readonly threads: number;
  responder(req: ResponderKeRequest): Promise<ResponderKeResult>;
  close(): Promise<void>;
}

/** On the calling thread (no workers). */
export class InlineKeyExchange implements KeyExchangeRunner {
  readonly threads = 0;
  async responder(req: ResponderKeRequest): Promise<ResponderKeResult> {
    return responderKeyExchange(req);
  }
  async close(): Promise<void> {}
}

/** Request and answer between KeyExchangePool and ke-worker.ts (each message carries an array of them). */
export interface WorkerRequest {
  id: number;
  req: ResponderKeRequest;
}
export type WorkerAnswer =
  | { id: number; ok: true; publicValue: Uint8Array; /** The seven keys back to back, KEY_NAMES order. */ keys: ArrayBuffer; lengths: number[] }
  | { id: number; ok: false; invalid?: string; error?: string };

/** Packs IKE SA keys into one transferable buffer (worker side). */
export function packKeys(keys: IkeSaKeys): { keys: ArrayBuffer; lengths: number[] } {
  const lengths = KEY_NAMES.map((k) => keys[k].length);
  const out = new Uint8Array(lengths.reduce((a, b) => a + b, 0));
  let o = 0;
  for (const k of KEY_NAMES) out.set(keys[k], o), (o += keys[k].length), keys[k].fill(0);
  return { keys: out.buffer, lengths };
}

/** The keys again, as subarrays of one buffer of their own (it lives as long as the SA). */
function unpackKeys(buf: ArrayBuffer, lengths: number[]): IkeSaKeys {
  const all = Buffer.from(buf);
  let o = 0;
  const k = lengths.map((n) => all.subarray(o, (o += n)));
  return { skD: k[0]!, skAi: k[1]!, skAr: k[2]!, skEi: k[3]!, skEr: k[4]!, skPi: k[5]!, skPr: k[6]! };
}

/** A copy in an ArrayBuffer of its own size (typed as Buffer: the worker makes Buffers of it again, see fromWire). */
function own(b: Buffer): Buffer {
  return new Uint8Array(b) as Buffer;
}

/** A request as the worker receives it (structured clone turns Buffers into Uint8Arrays): Buffers again, no copies. */
export function fromWire(req: ResponderKeRequest): ResponderKeRequest {
  const buf = (u: Uint8Array): Buffer => Buffer.from(u.buffer, u.byteOffset, u.byteLength);
  return { ...req, peerPublic: buf(req.peerPublic), ni: buf(req.ni), nr: buf(req.nr), spiI: buf(req.spiI), spiR: buf(req.spiR) };
}

/** The default pool size: the CPUs besides the event loop's, at most 4. */
export function defaultCryptoWorkers(): number {
  return Math.max(0, Math.min(4, availableParallelism() - 1));
}

interface Slot {
  worker: Worker;
  pending: Map<number, (r: ResponderKeResult | Error) => void>;
  /** Requests not posted yet: the IKE_SA_INITs of one turn of the event loop go in one message. */
  batch: WorkerRequest[];
}

/**
 * Worker threads (ke-worker.ts) that each keep a small stock of key pairs made while idle.
 * A request goes to the worker with the fewest outstanding; a worker that dies fails its
 * outstanding requests and is replaced. The workers do not keep the process alive.
 */
export class KeyExchangePool implements KeyExchangeRunner {
  readonly threads: number;
  #slots: Slot[] = [];
  #nextId = 1;
  #closed = false;

  constructor(threads: number, private readonly onError: (message: string) => void = () => {}) {
    this.threads = Math.max(1, threads);
    for (let i = 0; i < this.threads; i++) this.#slots.push(this.#spawn());
  }

  #spawn(): Slot {
    const worker = new Worker(new URL("./ke-worker.js", import.meta.url));
    const slot: Slot = { worker, pending: new Map(), batch: [] };
    worker.unref();
    worker.on("message", (answers: WorkerAnswer[]) => {
      for (const a of answers) {
        const done = slot.pending.get(a.id);
        if (!done) continue;
        slot.pending.delete(a.id);
        if (a.ok) done({ ok: true, publicValue: Buffer.from(a.publicValue.buffer, a.publicValue.byteOffset, a.publicValue.byteLength), keys: unpackKeys(a.keys, a.lengths) });
        else if (a.invalid !== undefined) done({ ok: false, invalid: a.invalid });
        else done(new Error(`crypto worker: ${a.error}`));
      }
    });
    const fail = (why: string): void => {
      for (const done of slot.pending.values()) done(new Error(`crypto worker ${why}`));
      slot.pending.clear();
      slot.batch = [];
      const i = this.#slots.indexOf(slot);
      if (i < 0 || this.#closed) return;
      this.onError(`crypto worker ${why}: starting another`);
      this.#slots[i] = this.#spawn();
    };
    worker.on("error", (err) => fail(`failed: ${err.message}`));
    worker.on("exit", (code) => fail(`exited (code ${code})`));
    return slot;
  }

  responder(req: ResponderKeRequest): Promise<ResponderKeResult> {
    if (this.#closed) return Promise.reject(new Error("crypto worker pool closed"));
    let slot = this.#slots[0]!;
    for (const s of this.#slots) if (s.pending.size < slot.pending.size) slot = s;
    const id = this.#nextId++;
    return new Promise((resolve, reject) => {
      slot.pending.set(id, (r) => (r instanceof Error ? reject(r) : resolve(r)));
      // Exact copies: a Buffer is often a view of Node's 8 KiB pool, and cloning a view clones all of its ArrayBuffer.
      const wire: ResponderKeRequest = { ...req, peerPublic: own(req.peerPublic), ni: own(req.ni), nr: own(req.nr), spiI: own(req.spiI), spiR: own(req.spiR) };
      // One message per slot and turn of the event loop (a burst of datagrams is read in one poll phase).
      if (slot.batch.push({ id, req: wire }) === 1) {
        setImmediate(() => {
          const batch = slot.batch;
          slot.batch = [];
          if (batch.length) slot.worker.postMessage(batch);
        });
      }
    });
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await Promise.all(this.#slots.map((s) => s.worker.terminate()));
  }
}
