/**
 * IKE and CHILD SA state (strongSwan's ike_sa_t / child_sa_t, reduced to data): the
 * engine and the tasks read and change it; the task manager (task-manager.ts) owns the
 * message exchange on it.
 */
import type { KeyExchange } from "../crypto/dh.js";
import type { NegotiatedAlgorithms } from "../proposal.js";
import type { ConnRuntime } from "./conn.js";
import type { Keymat } from "./keymat.js";
import type { TaskManager } from "./task-manager.js";
import type { Ts } from "./ts.js";

export type IkeState = "connecting" | "established" | "rekeying" | "deleting" | "destroyed";
export type ChildState = "creating" | "installed" | "rekeying" | "rekeyed" | "deleting" | "destroyed";

export class ChildSa {
  state: ChildState = "creating";
  /** Our inbound SPI (allocated by the dataplane) and the peer's (our outbound). */
  spiIn = 0;
  spiOut = 0;
  alg?: NegotiatedAlgorithms;
  /** PFS group used (0 = none). */
  dh = 0;
  encap = false;
  localTs: Ts[] = [];
  remoteTs: Ts[] = [];
  installedAt?: Date;
  /** Epoch ms of the scheduled rekey and of the hard expiry. */
  rekeyAt = 0;
  expireAt = 0;
  timers: NodeJS.Timeout[] = [];
  /** The outbound SA is installed (the responder of a rekey delays it until the old SA is deleted, so no packet is lost). */
  outboundInstalled = false;
  /** Responder of a rekey: install this child's outbound SA when `replaces` goes away. */
  pendingOutbound?: () => Promise<void>;
  /** For a rekey: the child this one replaces. */
  replaces?: ChildSa;
  /** For an old child: the one that replaced it. */
  replacedBy?: ChildSa;
  /** The dataplane SAs were removed. */
  removed = false;
  /** Our own rekey of this child is in flight. */
  rekeying = false;
  /** §2.8.1: the peer rekeyed this child while our rekey was in flight (resolved when ours completes). */
  peerRekey?: { child: ChildSa; nonces: Buffer[] };

  constructor(
    readonly id: number,
    readonly conn: ConnRuntime,
    readonly mode: "tunnel" | "transport",
  ) {}

  clearTimers(): void {
    for (const t of this.timers) clearTimeout(t);
    this.timers = [];
  }
}

export interface Endpoint {
  address: string;
  port: number;
}

export class IkeSa {
  state: IkeState = "connecting";
  /** The connection in use; a responder narrows it as it learns more (address -> identity -> TS). */
  conn?: ConnRuntime;
  /** Responder: connections still possible after IKE_SA_INIT (by address). */
  candidates: ConnRuntime[] = [];
  spiR: Buffer = Buffer.alloc(8);
  local: Endpoint;
  remote: Endpoint;
  /** NAT detected in front of us / in front of the peer (RFC 7296 §2.23). */
  natLocal = false;
  natRemote = false;
  /** Talking on UDP 4500 (through the dataplane relay). */
  natT = false;
  keymat?: Keymat;
  alg?: NegotiatedAlgorithms;
  ni: Buffer = Buffer.alloc(0);
  nr: Buffer = Buffer.alloc(0);
  ke?: KeyExchange;
  /** The IKE_SA_INIT request and response as sent (for AUTH, §2.15). */
  initRequest?: Buffer;
  initResponse?: Buffer;
  remoteIdText = "";
  localIdText = "";
  children = new Map<number, ChildSa>();
  tm!: TaskManager;
  /** Epoch ms of the last authenticated message from the peer (for DPD). */
  lastInbound = Date.now();
  establishedAt?: Date;
  startedAt = Date.now();
  rekeyAt = 0;
  timers: NodeJS.Timeout[] = [];
  /** The peer sent INITIAL_CONTACT. */
  initialContact = false;
  /** Set on an old IKE SA after rekeying: the SA that replaced it. */
  replacedBy?: IkeSa;
  /** Which connection attempt this is (for keyingtries). */
  attempt = 0;
  /** Our own rekey of this IKE SA is in flight. */
  rekeying = false;
  /** §2.8.1: the peer rekeyed this IKE SA while our rekey was in flight. */
  peerRekey?: { sa: IkeSa; nonces: Buffer[] };
  /** Key in the engine's half-open table, and the timer that removes the SA if it never authenticates, while it is half-open. */
  halfOpenKey?: string;
  halfOpenTimer?: NodeJS.Timeout;
  /** Serializes message processing of this SA. */
  chain: Promise<void> = Promise.resolve();
  /** Signature scheme hash algorithms the peer supports (RFC 7427 §4). */
  peerHashes: number[] = [];
  /** Ni and Nr of the IKE_SA_INIT that made this SA (kept after authDone for the duplicate rule, engine.ts #duplicateOf). */
  initNonces?: [Buffer, Buffer];
  /** A duplicate of a simultaneous initiation: the IKE SA kept instead of this one. */
  duplicateOf?: IkeSa;

  constructor(
    readonly uniqueId: number,
    /** We are the original initiator of this IKE SA. */
    readonly initiator: boolean,
    readonly spiI: Buffer,
    local: Endpoint,
    remote: Endpoint,
  ) {
    this.local = local;
    this.remote = remote;
  }

  /** Our own SPI (the key of the SA table). */
  get mySpi(): Buffer {
    return this.initiator ? this.spiI : this.spiR;
  }

  get name(): string {
    return this.conn?.name ?? "(unknown)";
  }

  clearTimers(): void {
    for (const t of this.timers) clearTimeout(t);
    this.timers = [];
  }

  /**
   * IKE_AUTH is over (the first CHILD SA too): drop what only IKE_SA_INIT and IKE_AUTH
   * needed — the IKE_SA_INIT messages (signed octets, §2.15), the nonces (KEYMAT of the
   * first CHILD SA), the key exchange, the connection candidates, the peer's signature hash
   * algorithms and SK_pi/SK_pr — so an established SA keeps little more than its keys.
   */
  authDone(): void {
    this.initRequest = undefined;
    this.initResponse = undefined;
    this.ni = NO_BYTES;
    this.nr = NO_BYTES;
    this.ke = undefined;
    this.candidates = [];
    this.peerHashes = [];
    this.keymat?.authDone();
  }
}

const NO_BYTES = Buffer.alloc(0);

/**
 * The buffers copied back to back into one buffer of their own, returned as views of it.
 * For what an SA keeps for its life: a small Buffer is usually a view of Node's shared
 * 8 KiB pool, and one such view kept alive keeps the whole pool slab alive.
 */
export function unpooled(...bufs: Buffer[]): Buffer[] {
  const store = Buffer.allocUnsafeSlow(bufs.reduce((a, b) => a + b.length, 0));
  let o = 0;
  return bufs.map((b) => (b.copy(store, o), store.subarray(o, (o += b.length))));
}
