/**
 * The IKEv2 engine: connection table, IKE SA table, packet dispatch, timers (rekey with
 * margin and jitter, expiry, DPD, NAT-T keepalives), dataplane events (acquire, expire)
 * and the Engine interface of engine-api.ts (apply, initiate, terminate, route, unroute,
 * listings). Exchanges are tasks (tasks/*.ts) run by each IKE SA's task manager.
 *
 * I/O is injected: a Transport for IKE datagrams (UDP 500 socket and the dataplane's
 * UDP 4500 relay in the daemon, a fake network in exchange tests) and a DataplaneApi.
 */
import { EventEmitter } from "node:events";
import { isIP } from "node:net";
import { ConfigError, createLogger, type Logger } from "@fleetswan/common";
import { dataplane, fleet, ikeagent } from "@fleetswan/proto";
import type { Engine, EngineConfig, EngineEvent, SecretLookup } from "../../engine-api.js";
import { decodeMessage, ExchangeType, NotifyType, PayloadType, ProtocolId, nameOf, type DecodedMessage, type DeletePayload, type Payload } from "../wire/index.js";
import { EncrId, IntegId, PrfId } from "../wire/index.js";
import { childAlgText, dhName, find, findNotify, policiesFor, uninstallChild } from "./child.js";
import { compileConnection, type ConnRuntime } from "./conn.js";
import type { EngineCore } from "./context.js";
import type { DataplaneApi } from "./dataplane.js";
import { IkeFailure, Reason } from "./failure.js";
import { CookieJar } from "./keymat.js";
import { randomPublic } from "../crypto/random.js";
import { InlineKeyExchange, KeyExchangePool, type KeyExchangeRunner } from "../crypto/ke-offload.js";
import { createEngineMetrics, type EngineMetrics } from "./metrics.js";
import { PolicyTable } from "./policies.js";
import { ChildSa, IkeSa, unpooled, type Endpoint } from "./sa.js";
import { DEFAULT_RETRANSMIT, TaskManager, type Response, type RetransmitConfig, type Task, type TaskManagerHost } from "./task-manager.js";
import { hostTs, tsToString, type Ts } from "./ts.js";
import { ChildCreate, respondChildCreate } from "./tasks/child-create.js";
import { ChildDelete, respondChildDelete } from "./tasks/child-delete.js";
import { ChildRekey, respondChildRekey } from "./tasks/child-rekey.js";
import { IkeDelete } from "./tasks/ike-delete.js";
import { IkeDpd } from "./tasks/ike-dpd.js";
import { IkeInit, respondIkeInit } from "./tasks/ike-init.js";
import { IkeRekey, respondIkeRekey } from "./tasks/ike-rekey.js";
import { respondIkeAuth } from "./tasks/ike-auth.js";

/** How the engine sends IKE datagrams. */
export interface Transport {
  /** Sends from local (port 500: the IKE socket; 4500: the dataplane's NAT-T relay) to remote. */
  send(local: Endpoint, remote: Endpoint, data: Buffer): void;
  /** NAT-T keepalive (RFC 3948 §2.3) from UDP 4500. */
  keepalive(local: Endpoint, remote: Endpoint): void;
}

export interface EngineOptions {
  dataplane: DataplaneApi;
  transport: Transport;
  log?: Logger;
  metrics?: EngineMetrics;
  retransmit?: RetransmitConfig;
  /** Half-open IKE SAs before COOKIEs are demanded (§2.6); default 1000. */
  cookieThreshold?: number;
  /** NAT-T keepalive interval in seconds (default 20). */
  keepaliveSeconds?: number;
  /** Largest IKE message sent unfragmented once the peer supports RFC 7383 (default 1232, strongSwan's fragment_size is 1280 with IP/UDP). */
  fragmentSize?: number;
  /** This host's addresses, for connections without a local address. */
  localAddresses?: () => string[];
  /** Inbound SA of a rekeyed CHILD SA kept this long after its delete (default REKEYED_INBOUND_DELAY_MS). */
  rekeyedInboundDelayMs?: number;
  /**
   * Worker threads for the responder's IKE_SA_INIT key exchange and key derivation
   * (crypto/ke-offload.ts); 0 (the default) computes them on the event loop.
   */
  cryptoWorkers?: number;
  /** Random source in [0,1) for rekey jitter (tests fix it). */
  random?: () => number;
  gateway?: string;
  version?: string;
}

interface ConnState {
  attempts: number;
  retry?: NodeJS.Timeout;
  lastError?: { code: string; message: string; at: Date };
}

const hex = (b: Buffer): string => b.toString("hex");
const ZERO_SPI = Buffer.alloc(8);
/**
 * Two IKE SAs of one connection and peer, one initiated by each end, count as duplicates of
 * a simultaneous initiation when the second handshake started no later than this after the
 * first was established (a retransmitted IKE_SA_INIT arrives after ours completed).
 */
export const DUPLICATE_WINDOW_MS = 10_000;
/** How long the inbound SA of a rekeyed CHILD SA stays after the delete exchange (packets in flight). */
export const REKEYED_INBOUND_DELAY_MS = 2000;

export class IkeEngine extends EventEmitter implements Engine, EngineCore {
  readonly log: Logger;
  readonly dp: DataplaneApi;
  readonly metrics: EngineMetrics;
  readonly cookies = new CookieJar();
  readonly policies: PolicyTable;
  readonly keyExchange: KeyExchangeRunner;
  readonly #transport: Transport;
  readonly #retransmit: RetransmitConfig;
  readonly #opts: EngineOptions;
  #conns = new Map<string, ConnRuntime>();
  #connState = new Map<string, ConnState>();
  #sas = new Map<string, IkeSa>();
  #halfOpen = new Map<string, IkeSa>();
  /**
   * Established IKE SAs by connection, peer identity and who initiated them (uniqueids,
   * INITIAL_CONTACT, the duplicate rule) without a scan of every SA. Split by role because
   * the duplicate rule only looks at SAs the other end initiated: a responder holding
   * thousands of SAs of one identity (unique_ids false) must not scan them per handshake.
   */
  #byPeer = new Map<string, Set<IkeSa>>();
  #routed = new Set<string>();
  #reqids = new Map<string, number>();
  #nextReqid = 1;
  #nextUnique = 1;
  #nextChild = 1;
  #config: EngineConfig = { revision: 0n, connections: [], policyGroups: [], caCertificates: [] };
  #recent: string[] = [];
  #counters = new Map<string, { bytes: bigint; packets: bigint }>();
  #unwatch: () => void;
  #stopped = false;
  #cookieRotate: NodeJS.Timeout;
  /** What every IKE SA's task manager needs from the engine (one object, not closures per SA). */
  readonly #tmHost: TaskManagerHost;

  constructor(opts: EngineOptions) {
    super();
    this.#opts = opts;
    this.dp = opts.dataplane;
    this.#transport = opts.transport;
    this.log = opts.log ?? createLogger("ikeagent");
    this.metrics = opts.metrics ?? createEngineMetrics();
    this.#retransmit = opts.retransmit ?? DEFAULT_RETRANSMIT;
    this.#tmHost = {
      log: this.log,
      retransmit: this.#retransmit,
      ...(this.#opts.fragmentSize ? { maxDatagram: this.#opts.fragmentSize } : {}),
      send: (s, packet) => this.#send(s, packet),
      respond: (s, exchange, ps, msg) => this.#respond(s, exchange, ps, msg),
      onRetransmit: (_s, task) => this.metrics.retransmissions.inc({ exchange: nameOf(ExchangeType, task.exchange) }),
    };
    this.policies = new PolicyTable(this.dp, this.log);
    this.keyExchange = opts.cryptoWorkers ? new KeyExchangePool(opts.cryptoWorkers, (m) => this.log.error(m)) : new InlineKeyExchange();
    this.#unwatch = this.dp.watchEvents((e) => void this.#onDataplaneEvent(e));
    const offReconnect = this.dp.onReconnect?.(() => void this.resync());
    if (offReconnect) {
      const unwatch = this.#unwatch;
      this.#unwatch = () => (unwatch(), offReconnect());
    }
    this.#cookieRotate = setInterval(() => this.cookies.rotate(), 120_000);
    this.#cookieRotate.unref?.();
    // The SA gauges are counted when metrics are read, not on every change (that was a
    // scan of every SA per handshake).
    this.metrics.refreshSaGauges = () => this.#countSas();
  }

  // ------------------------------------------------------------ EngineCore --

  connections(): ConnRuntime[] {
    return [...this.#conns.values()];
  }
  caCertificates(): string[] {
    return this.#config.caCertificates;
  }
  newChildId(): number {
    return this.#nextChild++;
  }
  newSpi(): Buffer {
    let spi: Buffer;
    do spi = randomPublic(8, true);
    while (spi.equals(ZERO_SPI) || this.#sas.has(hex(spi)));
    return spi;
  }
  cookieRequired(): boolean {
    return this.#halfOpen.size >= (this.#opts.cookieThreshold ?? 1000);
  }
  createIkeSa(initiator: boolean, spiI: Buffer, local: Endpoint, remote: Endpoint): IkeSa {
    const sa = new IkeSa(this.#nextUnique++, initiator, spiI, local, remote);
    sa.tm = new TaskManager(sa, this.#tmHost);
    return sa;
  }
  register(sa: IkeSa): void {
    this.#sas.set(hex(sa.mySpi), sa);
    this.#changed();
  }
  ikeSas(): IkeSa[] {
    return [...this.#sas.values()];
  }
  queue(sa: IkeSa, task: Task): void {
    if (sa.state === "destroyed") return;
    sa.tm.queue(task);
  }

  #send(sa: IkeSa, packet: Buffer): void {
    this.#transport.send(sa.local, sa.remote, packet);
  }

  ikeEstablished(sa: IkeSa, old?: IkeSa): void {
    const conn = sa.conn!;
    if (!old && sa.ni.length && sa.nr.length) sa.initNonces = unpooled(sa.ni, sa.nr) as [Buffer, Buffer];
    sa.state = "established";
    sa.establishedAt = new Date();
    this.#dropHalfOpen(sa);
    this.register(sa);
    const peerKey = `${conn.name}\0${sa.remoteIdText}`;
    const roleKey = (initiator: boolean): string => `${peerKey}\0${initiator ? "i" : "r"}`;
    let peers = this.#byPeer.get(roleKey(sa.initiator));
    if (!peers) this.#byPeer.set(roleKey(sa.initiator), (peers = new Set()));
    peers.add(sa); // before the loop below: a destroyed last member must not drop the set from the map
    const others = this.#byPeer.get(roleKey(!sa.initiator));
    const st = this.#state(conn.name);
    st.attempts = 0;
    if (st.retry) clearTimeout(st.retry);
    st.retry = undefined;
    if (old) {
      this.event("rekey", conn.name, `IKE SA #${old.uniqueId} rekeyed to #${sa.uniqueId} (SPIs ${hex(sa.spiI)}_i ${hex(sa.spiR)}_r)`);
    } else {
      this.event("ike_up", conn.name, `IKE SA #${sa.uniqueId} established with ${sa.remote.address} ('${sa.remoteIdText}'): ${this.#ikeAlgText(sa)}`);
      // Both ends initiated at once: the duplicate goes by a rule both ends compute alike (see #duplicateOf).
      const dup = others ? this.#duplicateOf(sa, others) : undefined;
      // §2.4 INITIAL_CONTACT / uniqueids: an older IKE SA with the same peer identity goes.
      // (Without either, SAs of one identity may pile up: do not look at them at all.)
      const replace = sa.initialContact || (conn.uniqueIds && !sa.initiator);
      if (replace) for (const other of [...peers, ...(others ?? [])]) {
        if (other === sa || other === dup || other.conn?.name !== conn.name || other.remoteIdText !== sa.remoteIdText || other.state !== "established") continue;
        if (sa.initialContact) {
          this.log.info({ conn: conn.name, old: other.uniqueId }, "peer sent INITIAL_CONTACT: deleting the old IKE SA without notice");
          void this.destroyIkeSa(other, undefined, { noRestart: true });
        } else if (conn.uniqueIds && !sa.initiator) {
          this.log.info({ conn: conn.name, old: other.uniqueId }, `uniqueids: replacing IKE SA #${other.uniqueId} of '${sa.remoteIdText}'`);
          other.tm.queue(new IkeDelete(this, { noRestart: true }));
        }
      }
    }
    this.#scheduleIke(sa);
  }

  /**
   * Simultaneous initiation (both ends start the connection): RFC 7296 has no collision rule
   * for IKE_SA_INIT, so two IKE SAs (each with a CHILD SA) come up, one initiated by each end.
   * Rule, as §2.8.1 has for rekeys: of the two IKE_SA_INIT exchanges' four nonces, the SA
   * whose exchange has the lowest nonce is the duplicate, deleted by its initiator (with its
   * CHILD SA; the connection's policies stay, held by the other CHILD SA); the other end
   * waits for that delete. Both ends compute the same answer. Applies when the other SA was
   * initiated by the other end and established at most DUPLICATE_WINDOW_MS before this one's
   * handshake started; uniqueids and INITIAL_CONTACT then leave the pair alone (they would
   * delete whichever SA came second on each end: both SAs, or the one the peer keeps).
   */
  #duplicateOf(sa: IkeSa, peers: Set<IkeSa>): IkeSa | undefined {
    if (!sa.initNonces) return undefined;
    for (const other of peers) {
      if (other === sa || other.state !== "established" || other.initiator === sa.initiator || other.replacedBy || !other.initNonces) continue;
      if (other.conn?.name !== sa.conn?.name || other.remoteIdText !== sa.remoteIdText) continue;
      if (!other.establishedAt || other.establishedAt.getTime() < sa.startedAt - DUPLICATE_WINDOW_MS) continue;
      // INITIAL_CONTACT says the peer holds no other IKE SA with us. It is believed unless the
      // handshakes overlapped here (the other SA completed after this one's IKE_SA_INIT
      // arrived, so the peer answered it knowing both): a peer that restarted (kill -9 and
      // back within seconds) must not have its stale SA kept as the "winner".
      if (sa.initialContact && other.establishedAt.getTime() < sa.startedAt) continue;
      const all = [...sa.initNonces, ...other.initNonces];
      const min = all.reduce((a, b) => (Buffer.compare(a, b) <= 0 ? a : b));
      const loser = sa.initNonces.some((n) => n.equals(min)) ? sa : other;
      const keep = loser === sa ? other : sa;
      if (loser.initiator) {
        this.log.info({ conn: sa.name, duplicate: loser.uniqueId, kept: keep.uniqueId }, `both ends initiated: IKE SA #${loser.uniqueId} has the lowest nonce, deleting it (keeping #${keep.uniqueId})`);
        loser.duplicateOf = keep;
        loser.tm.queue(new IkeDelete(this, { noRestart: true }));
      } else {
        this.log.info({ conn: sa.name, duplicate: loser.uniqueId, kept: keep.uniqueId }, `both ends initiated: IKE SA #${loser.uniqueId} has the lowest nonce, the peer deletes it (keeping #${keep.uniqueId})`);
        loser.duplicateOf = keep;
      }
      return other;
    }
    return undefined;
  }

  #dropHalfOpen(sa: IkeSa): void {
    if (sa.halfOpenKey !== undefined && this.#halfOpen.get(sa.halfOpenKey) === sa) this.#halfOpen.delete(sa.halfOpenKey);
    sa.halfOpenKey = undefined;
    if (sa.halfOpenTimer) clearTimeout(sa.halfOpenTimer);
    sa.halfOpenTimer = undefined;
  }

  #scheduleIke(sa: IkeSa): void {
    const conn = sa.conn!;
    const rnd = this.#opts.random ?? Math.random;
    // Rekey at lifetime - margin - random(margin × fuzz%), so a fleet does not rekey in step.
    let rekeyIn = conn.ikeLifetime - conn.rekeyMargin - rnd() * conn.rekeyMargin * (conn.rekeyFuzz / 100);
    if (rekeyIn < 1) rekeyIn = Math.max(1, conn.ikeLifetime / 2);
    sa.rekeyAt = Date.now() + rekeyIn * 1000;
    const t1 = setTimeout(() => {
      if (sa.state === "established" && !sa.tm.queued.some((t) => t.type === "ike_rekey")) sa.tm.queue(new IkeRekey(this));
    }, rekeyIn * 1000);
    const t2 = setTimeout(() => {
      if (sa.state !== "destroyed" && !sa.replacedBy) {
        this.log.info({ conn: conn.name, sa: sa.uniqueId }, "IKE SA lifetime expired without rekey: deleting it");
        sa.tm.queue(new IkeDelete(this));
      }
    }, conn.ikeLifetime * 1000);
    sa.timers.push(t1, t2);
    if (conn.dpdDelay > 0) {
      const t = setInterval(() => {
        if (sa.state !== "established" || sa.tm.active || sa.tm.queued.length) return;
        if (Date.now() - sa.lastInbound >= conn.dpdDelay * 1000) sa.tm.queue(new IkeDpd(this, conn.dpdTimeout));
      }, Math.max(250, (conn.dpdDelay * 1000) / 4));
      sa.timers.push(t);
    }
    const ka = this.#opts.keepaliveSeconds ?? 20;
    if (sa.natLocal && sa.natT && ka > 0) {
      const t = setInterval(() => sa.state !== "destroyed" && this.#transport.keepalive(sa.local, sa.remote), ka * 1000);
      sa.timers.push(t);
    }
    for (const t of sa.timers) t.unref?.();
  }

  childInstalled(sa: IkeSa, child: ChildSa, rekeyOf?: ChildSa): void {
    sa.children.set(child.id, child);
    const conn = child.conn;
    const rnd = this.#opts.random ?? Math.random;
    let rekeyIn = conn.childLifetime - conn.rekeyMargin - rnd() * conn.rekeyMargin * (conn.rekeyFuzz / 100);
    if (rekeyIn < 1) rekeyIn = Math.max(1, conn.childLifetime / 2);
    child.rekeyAt = Date.now() + rekeyIn * 1000;
    child.expireAt = Date.now() + conn.childLifetime * 1000;
    const t1 = setTimeout(() => {
      const owner = this.#ownerOf(child);
      if (owner && child.state === "installed" && owner.state === "established") owner.tm.queue(new ChildRekey(this, child));
    }, rekeyIn * 1000);
    const t2 = setTimeout(() => {
      const owner = this.#ownerOf(child);
      if (owner && (child.state === "installed" || child.state === "rekeying")) {
        this.log.info({ conn: conn.name, child: child.id }, "CHILD SA lifetime expired without rekey: deleting it");
        owner.tm.queue(new ChildDelete(this, child, "expired"));
      }
    }, conn.childLifetime * 1000);
    t1.unref?.();
    t2.unref?.();
    child.timers.push(t1, t2);
    const text = `CHILD SA ${conn.name}{${child.id}} ${child.mode}${child.encap ? " (UDP-encapsulated)" : ""} SPIs ${child.spiIn.toString(16).padStart(8, "0")}_i ${child.spiOut.toString(16).padStart(8, "0")}_o ${childAlgText(child.alg, child.dh)}: ${child.localTs.map(tsToString).join(",")} === ${child.remoteTs.map(tsToString).join(",")}`;
    if (rekeyOf) this.event("rekey", conn.name, `${text} (rekeyed {${rekeyOf.id}})`);
    else this.event("child_up", conn.name, `${text} installed`);
    this.#changed();
  }

  /** The IKE SA that holds `child` now (children move on IKE rekey). */
  #ownerOf(child: ChildSa): IkeSa | undefined {
    for (const sa of this.#sas.values()) if (sa.children.get(child.id) === child) return sa;
    return undefined;
  }

  isRouted(connection: string): boolean {
    return this.#routed.has(connection);
  }

  async removeChild(sa: IkeSa, child: ChildSa, why: string): Promise<void> {
    const owner = this.#ownerOf(child) ?? sa;
    const next = child.replacedBy;
    if (next?.pendingOutbound) {
      const install = next.pendingOutbound;
      next.pendingOutbound = undefined;
      await install().catch((err) => this.log.error({ err, child: next.id }, "installing the outbound SA of a rekeyed CHILD SA failed"));
    }
    owner.children.delete(child.id);
    child.clearTimers();
    const wasUp = child.state !== "destroyed";
    child.state = "destroyed";
    try {
      await uninstallChild(this, owner, child, this.#routed.has(child.conn.name), next && owner.state !== "destroyed" ? { inboundDelayMs: this.#opts.rekeyedInboundDelayMs ?? REKEYED_INBOUND_DELAY_MS } : {});
    } catch (err) {
      this.log.error({ err: (err as Error).message, conn: child.conn.name, child: child.id }, "removing CHILD SA from the dataplane failed");
    }
    if (wasUp && !next) this.event("child_down", child.conn.name, `CHILD SA ${child.conn.name}{${child.id}} removed: ${why}`);
    this.#changed();
  }

  async destroyIkeSa(sa: IkeSa, reason?: IkeFailure, opts: { keepChildren?: boolean; noRestart?: boolean } = {}): Promise<void> {
    if (sa.state === "destroyed") return;
    const wasEstablished = sa.state !== "connecting";
    sa.state = "destroyed";
    sa.tm.destroy();
    sa.clearTimers();
    if (this.#sas.get(hex(sa.mySpi)) === sa) this.#sas.delete(hex(sa.mySpi));
    this.#dropHalfOpen(sa);
    if (sa.conn) {
      const peerKey = `${sa.conn.name}\0${sa.remoteIdText}\0${sa.initiator ? "i" : "r"}`;
      const peers = this.#byPeer.get(peerKey);
      if (peers?.delete(sa) && peers.size === 0) this.#byPeer.delete(peerKey);
    }
    if (!opts.keepChildren) {
      for (const child of [...sa.children.values()]) await this.removeChild(sa, child, reason ? reason.message : "IKE SA deleted");
    }
    sa.keymat?.wipe();
    const conn = sa.conn;
    if (conn && wasEstablished && !sa.replacedBy && !sa.duplicateOf) this.event("ike_down", conn.name, `IKE SA #${sa.uniqueId} with ${sa.remote.address} deleted${reason ? `: ${reason.message}` : ""}`, reason?.reason);
    this.#changed();
    if (!conn || !reason || opts.noRestart || this.#stopped || !this.#conns.has(conn.name)) return;
    if (reason.reason === Reason.PEER_DEAD) {
      const action = conn.def.dpdAction;
      if (action === fleet.DpdAction.DPD_ACTION_RESTART) {
        this.log.info({ conn: conn.name }, "dpd_action=restart: initiating again");
        void this.initiate({ connection: conn.name, wait: false, timeoutMs: 0 });
      } else if (action === fleet.DpdAction.DPD_ACTION_TRAP) {
        this.log.info({ conn: conn.name }, "dpd_action=trap: installing trap policies");
        void this.route({ connection: conn.name, wait: false, timeoutMs: 0 });
      }
      return;
    }
    // keyingtries: retry a failed initiation with backoff 1, 2, 4 ... 60 s.
    if (sa.initiator && !wasEstablished && reason.reason !== Reason.CANCELLED) {
      const st = this.#state(conn.name);
      st.attempts++;
      if (conn.keyingTries === 0 || st.attempts < conn.keyingTries) {
        const delay = Math.min(60, 2 ** (st.attempts - 1));
        this.log.info({ conn: conn.name, attempt: st.attempts + 1, of: conn.keyingTries || "forever" }, `keyingtries: retrying in ${delay} s`);
        if (st.retry) clearTimeout(st.retry);
        st.retry = setTimeout(() => {
          st.retry = undefined;
          if (!this.#stopped && this.#conns.has(conn.name)) void this.#initiateConn(this.#conns.get(conn.name)!, undefined, true);
        }, delay * 1000);
        st.retry.unref?.();
      } else {
        this.log.warn({ conn: conn.name }, `giving up on ${conn.name} after ${st.attempts} attempts (keyingtries=${conn.keyingTries})`);
        st.attempts = 0;
      }
    }
  }

  failed(sa: IkeSa | undefined, conn: ConnRuntime | undefined, err: IkeFailure): void {
    this.metrics.failures.inc({ reason: err.reason });
    const name = conn?.name ?? "";
    if (conn) this.#state(conn.name).lastError = { code: err.reason, message: err.message, at: new Date() };
    const kind = err.reason === Reason.AUTH_FAILED || err.reason === Reason.CERT_INVALID || err.reason === Reason.NO_SUITABLE_CONNECTION ? "auth_failed" : err.reason === Reason.PEER_DEAD ? "dpd_dead" : "negotiation_failed";
    if (err.reason !== Reason.CANCELLED) this.event(kind, name, err.message, err.reason);
    void sa;
  }

  event(kind: string, conn: string, message: string, code?: string): void {
    const e: EngineEvent = { time: new Date(), kind, connection: conn, message, ...(code ? { code } : {}) };
    const line = `${e.time.toISOString()} ${kind}${conn ? ` ${conn}` : ""}${code ? ` [${code}]` : ""}: ${message}`;
    this.#recent.push(line);
    if (this.#recent.length > 6000) this.#recent.splice(0, this.#recent.length - 5000); // amortized: not a 5000-entry shift per event
    if (code) this.log.warn({ conn, code, event: kind }, message);
    else this.log.info({ conn, event: kind }, message);
    this.emit("event", e);
  }

  #state(name: string): ConnState {
    let s = this.#connState.get(name);
    if (!s) this.#connState.set(name, (s = { attempts: 0 }));
    return s;
  }

  #changed(): void {
    this.emit("change");
  }

  /** Sets fleetswan_ike_sas / fleetswan_child_sas (called when metrics are read). */
  #countSas(): void {
    const ike: Record<string, number> = { connecting: 0, established: 0, rekeying: 0, deleting: 0 };
    const child: Record<string, number> = { creating: 0, installed: 0, rekeying: 0, rekeyed: 0, deleting: 0 };
    for (const sa of this.#sas.values()) {
      if (sa.state in ike) ike[sa.state]!++;
      for (const c of sa.children.values()) if (c.state in child) child[c.state]!++;
    }
    for (const [k, v] of Object.entries(ike)) this.metrics.ikeSas.set({ state: k }, v);
    for (const [k, v] of Object.entries(child)) this.metrics.childSas.set({ state: k }, v);
  }

  // ------------------------------------------------------------- receiving --

  /** A datagram arrived (from the UDP 500 socket or the NAT-T relay). */
  receive(local: Endpoint, remote: Endpoint, data: Buffer): void {
    if (this.#stopped) return;
    let msg: DecodedMessage;
    try {
      msg = decodeMessage(data);
    } catch (err) {
      this.log.debug({ peer: remote.address, err: (err as Error).message }, "dropping undecodable datagram");
      return;
    }
    const h = msg.header;
    if (h.exchangeType === ExchangeType.IKE_SA_INIT && !h.response && h.spiR.equals(ZERO_SPI)) {
      const key = `${hex(h.spiI)}|${remote.address}:${remote.port}`;
      const pending = this.#halfOpen.get(key);
      if (pending) {
        pending.chain = pending.chain.then(() => pending.tm.handle(msg)).catch((err) => this.log.error({ err }, "handling message failed"));
        return;
      }
      const r = respondIkeInit(this, local, remote, msg);
      if (r.kind === "reply") this.#transport.send(local, remote, r.packet);
      else if (r.kind === "sa") {
        const sa = r.sa;
        // Registered (its SPI taken, its IKE_SA_INIT known) before the keys exist: a
        // retransmitted request waits on the chain below, then gets the cached response.
        this.register(sa);
        this.#halfOpen.set(key, sa);
        sa.halfOpenKey = key;
        sa.chain = r.response.then(
          (res) => {
            if (sa.state === "destroyed") return; // stopped, or the half-open timer, meanwhile
            this.#transport.send(local, remote, res.packet);
            if (!res.ok) void this.destroyIkeSa(sa, undefined, { noRestart: true });
          },
          (err) => {
            this.log.error({ peer: remote.address, err: (err as Error).message }, "IKE_SA_INIT key exchange failed");
            void this.destroyIkeSa(sa, undefined, { noRestart: true });
          },
        );
        // A half-open SA that never authenticates goes after 30 s.
        const t = setTimeout(() => sa.state === "connecting" && void this.destroyIkeSa(sa, undefined, { noRestart: true }), 30_000);
        t.unref?.();
        sa.halfOpenTimer = t;
      }
      return;
    }
    // Our SPI: the responder's if the sender is the original initiator, else the initiator's.
    const mine = h.initiator ? h.spiR : h.spiI;
    const sa = this.#sas.get(hex(mine));
    if (!sa) {
      this.log.debug({ peer: remote.address, spi: hex(mine), exchange: nameOf(ExchangeType, h.exchangeType) }, "no IKE SA for this SPI: dropping");
      return;
    }
    // RFC 7296 §2.23: the peer moved to UDP 4500 (NAT-T); follow it (and its NAT mapping's port).
    if (local.port !== 500 && sa.remote.address === remote.address) {
      if (!sa.natT) this.log.info({ conn: sa.name }, `peer switched to UDP ${remote.port}: using NAT-T`);
      sa.natT = true;
      sa.local = { ...sa.local, port: local.port };
      sa.remote = { ...sa.remote, port: remote.port };
    }
    sa.chain = sa.chain.then(() => sa.tm.handle(msg)).catch((err) => this.log.error({ err }, "handling message failed"));
  }

  /** Responder dispatch by exchange and content (strongSwan's task_manager process_request). */
  async #respond(sa: IkeSa, exchange: number, ps: Payload[], _msg: DecodedMessage): Promise<Response | undefined> {
    switch (exchange) {
      case ExchangeType.IKE_AUTH:
        return respondIkeAuth(this, sa, ps);
      case ExchangeType.CREATE_CHILD_SA: {
        if (sa.state === "connecting") return { payloads: [{ type: PayloadType.NOTIFY, protocol: 0, notifyType: NotifyType.INVALID_SYNTAX, spi: Buffer.alloc(0), data: Buffer.alloc(0) }] };
        if (findNotify(ps, NotifyType.REKEY_SA)) return respondChildRekey(this, sa, ps);
        if (find(ps, PayloadType.SA)?.proposals[0]?.protocol === ProtocolId.IKE) return respondIkeRekey(this, sa, ps);
        return respondChildCreate(this, sa, ps);
      }
      case ExchangeType.INFORMATIONAL: {
        const deletes = ps.filter((p): p is DeletePayload => p.type === PayloadType.DELETE);
        if (deletes.some((d) => d.protocol === ProtocolId.IKE)) {
          this.log.info({ conn: sa.name, sa: sa.uniqueId }, `peer deleted IKE SA #${sa.uniqueId}`);
          return { payloads: [], after: () => this.destroyIkeSa(sa, undefined, { noRestart: true, keepChildren: !!sa.replacedBy }) };
        }
        if (deletes.length) return respondChildDelete(this, sa, deletes);
        return { payloads: [] };
      }
      default:
        return undefined;
    }
  }

  // --------------------------------------------------------------- dataplane --

  async #onDataplaneEvent(e: dataplane.Event): Promise<void> {
    const k = e.kind;
    if (!k) return;
    if (k.$case === "acquire") {
      const a = k.value;
      const conn = [...this.#conns.values()].find((c) => c.reqid === a.reqid);
      if (!conn) return;
      const pkt = a.packet;
      const trigger = pkt?.src && pkt?.dst && isIP(pkt.src.address) && isIP(pkt.dst.address) ? { src: { ...hostTs(pkt.src.address), proto: pkt.protocol, ...(pkt.srcPort ? { startPort: pkt.srcPort, endPort: pkt.srcPort } : {}) }, dst: { ...hostTs(pkt.dst.address), proto: pkt.protocol, ...(pkt.dstPort ? { startPort: pkt.dstPort, endPort: pkt.dstPort } : {}) } } : undefined;
      const existing = this.#sasOf(conn.name);
      if (existing.some((s) => s.state === "connecting")) return;
      const up = existing.find((s) => s.state === "established");
      if (up) {
        if (![...up.children.values()].some((c) => c.state === "installed") && !up.tm.queued.some((t) => t.type === "child_create")) up.tm.queue(new ChildCreate(this, conn, trigger));
        return;
      }
      this.log.info({ conn: conn.name }, "acquire: traffic hit the trap policy, initiating");
      await this.#initiateConn(conn, trigger);
    } else if (k.$case === "expire") {
      const x = k.value;
      for (const sa of this.#sas.values()) {
        for (const c of sa.children.values()) {
          if (Number(x.childId) !== c.id && !(x.id && (x.id.spi === c.spiIn || x.id.spi === c.spiOut))) continue;
          if (x.hard) {
            await this.removeChild(sa, c, "hard lifetime reached in the dataplane");
            sa.tm.queue(new ChildDelete(this, c, "expired"));
          } else if (c.state === "installed" && sa.state === "established") {
            this.log.info({ conn: c.conn.name, child: c.id }, "soft lifetime (bytes/packets) reached: rekeying");
            sa.tm.queue(new ChildRekey(this, c));
          }
          return;
        }
      }
    } else if (k.$case === "error") {
      this.log.warn({ code: k.value.code }, `dataplane: ${k.value.message}`);
    }
  }

  #sasOf(name: string): IkeSa[] {
    return [...this.#sas.values()].filter((s) => s.conn?.name === name && s.state !== "destroyed");
  }

  // ----------------------------------------------------------------- Engine --

  async apply(config: EngineConfig, secrets: SecretLookup): Promise<ikeagent.ReloadConfigResponse> {
    // Compile everything first: a bad definition changes nothing.
    const compiled = new Map<string, ConnRuntime>();
    for (const def of config.connections) {
      if (compiled.has(def.name)) throw new ConfigError(`duplicate connection name "${def.name}"`, `connection ${def.name}`);
      let reqid = this.#reqids.get(def.name);
      if (!reqid) this.#reqids.set(def.name, (reqid = this.#nextReqid++));
      compiled.set(def.name, compileConnection(def, secrets, config.caCertificates, reqid));
    }
    this.#config = config;
    const added: string[] = [];
    const changed: string[] = [];
    const removed: string[] = [];
    const secretArrived: string[] = [];
    for (const [name, old] of this.#conns) {
      const fresh = compiled.get(name);
      // The secret arriving is no change of the connection: SAs in progress (a responder's
      // IKE SA between IKE_SA_INIT and IKE_AUTH) go on with it instead of being dropped
      // silently, which left the peer's initiator retransmitting IKE_AUTH into the void.
      const arrived = !!fresh && !old.secret && !!fresh.secret && fresh.fingerprint === `${old.fingerprint}|${fresh.secret.kind}`;
      if (!fresh) removed.push(name);
      else if (fresh.fingerprint !== old.fingerprint && !arrived) changed.push(name);
      else {
        if (arrived) secretArrived.push(name);
        // Unchanged: keep the SAs; pick up rotated secrets, renewed certificates and CAs.
        old.fingerprint = fresh.fingerprint;
        old.secret = fresh.secret;
        old.certChain = fresh.certChain;
        old.localId = fresh.localId;
        old.remoteCas = fresh.remoteCas;
      }
    }
    for (const name of compiled.keys()) if (!this.#conns.has(name)) added.push(name);
    for (const name of [...removed, ...changed]) {
      await this.#takeDown(name);
      this.#conns.delete(name);
    }
    for (const name of [...changed, ...added]) {
      const conn = compiled.get(name)!;
      this.#conns.set(name, conn);
      this.#state(name).attempts = 0;
      if (conn.def.startAction === fleet.StartAction.START_ACTION_START) void this.#initiateConn(conn);
      else if (conn.def.startAction === fleet.StartAction.START_ACTION_ROUTE) await this.route({ connection: name, wait: false, timeoutMs: 0 });
    }
    for (const name of secretArrived) {
      // not initiated while the secret was missing: start now, unless the peer's IKE SA is already on its way
      const conn = this.#conns.get(name)!;
      this.log.info({ conn: name }, `secret for ${name} arrived`);
      if (conn.def.startAction === fleet.StartAction.START_ACTION_START && this.#sasOf(name).length === 0) {
        this.#state(name).attempts = 0;
        void this.#initiateConn(conn);
      }
    }
    if (added.length || changed.length || removed.length) this.event("apply", "", `configuration revision ${config.revision}: added [${added.join(", ")}] changed [${changed.join(", ")}] removed [${removed.join(", ")}]`);
    this.#changed();
    return { added, changed, removed, revision: config.revision };
  }

  async #takeDown(name: string): Promise<void> {
    const st = this.#state(name);
    if (st.retry) clearTimeout(st.retry);
    st.retry = undefined;
    for (const sa of this.#sasOf(name)) {
      if (sa.state === "connecting") await this.destroyIkeSa(sa, new IkeFailure(Reason.CANCELLED, "connection removed or changed"), { noRestart: true });
      else sa.tm.queue(new IkeDelete(this, { noRestart: true }));
    }
    if (this.#routed.has(name)) await this.unroute({ connection: name, wait: false, timeoutMs: 0 });
  }

  #localAddressFor(conn: ConnRuntime): string | undefined {
    if (conn.localAddrs[0]) return conn.localAddrs[0];
    const remote = conn.remoteAddrs.find((a) => a !== "%any");
    const fam = remote ? isIP(remote) : 4;
    return (this.#opts.localAddresses?.() ?? []).find((a) => isIP(a) === fam);
  }

  async #initiateConn(conn: ConnRuntime, trigger?: { src: Ts; dst: Ts }, retry = false): Promise<IkeSa | IkeFailure> {
    if (!retry) {
      const st = this.#state(conn.name);
      if (st.retry) clearTimeout(st.retry);
      st.retry = undefined;
    }
    const remote = conn.remoteAddrs.find((a) => a !== "%any");
    if (!remote) return new IkeFailure(Reason.NOT_FOUND, `connection ${conn.name} has no remote address to initiate to (right=%any accepts only)`);
    const local = this.#localAddressFor(conn);
    if (!local) return new IkeFailure(Reason.NOT_FOUND, `connection ${conn.name}: no local address of the right family to initiate from`);
    // Without the secret IKE_AUTH cannot be sent; the apply that brings it (a fleet agent's
    // PSK sealed by keymgr right after the view) changes the connection and starts it. An
    // IKE SA begun now would be abandoned after IKE_SA_INIT, half-open at the peer.
    if (!conn.secret) return new IkeFailure(Reason.NO_SECRET, `connection ${conn.name}: not initiating, its secret (secret_ref "${conn.def.secretRef}") has not arrived`);
    const sa = this.createIkeSa(true, this.newSpi(), { address: local, port: 500 }, { address: remote, port: conn.remotePort });
    sa.conn = conn;
    this.register(sa);
    this.log.info({ conn: conn.name, peer: remote }, `initiating IKE SA #${sa.uniqueId} to ${remote}`);
    sa.tm.queue(new IkeInit(this, conn, trigger));
    return sa;
  }

  /** Waits for the outcome of bringing `name` up (CHILD SA installed, or a failure). */
  #waitFor(name: string, timeoutMs: number, ok: (e: EngineEvent) => boolean, bad: (e: EngineEvent) => boolean): Promise<ikeagent.CommandResult> {
    return new Promise((resolve) => {
      const done = (r: ikeagent.CommandResult): void => {
        clearTimeout(t);
        this.off("event", on);
        resolve(r);
      };
      const on = (e: EngineEvent): void => {
        if (e.connection !== name) return;
        if (ok(e)) done({ ok: true, code: "", message: e.message });
        else if (bad(e)) done({ ok: false, code: e.code ?? "FAILED", message: e.message });
      };
      const t = setTimeout(() => done({ ok: false, code: Reason.TIMEOUT, message: `no result for ${name} within ${timeoutMs} ms` }), timeoutMs);
      t.unref?.();
      this.on("event", on);
    });
  }

  async initiate(cmd: ikeagent.ConnectionCommand): Promise<ikeagent.CommandResult> {
    const conn = this.#conns.get(cmd.connection);
    if (!conn) return { ok: false, code: Reason.NOT_FOUND, message: `connection "${cmd.connection}" not found` };
    const timeout = cmd.timeoutMs || 30000;
    const existing = this.#sasOf(conn.name);
    const up = existing.find((s) => s.state === "established");
    if (up) {
      if ([...up.children.values()].some((c) => c.state === "installed")) return { ok: true, code: "", message: `${conn.name} is already up (IKE SA #${up.uniqueId})` };
      const wait = cmd.wait ? this.#waitFor(conn.name, timeout, (e) => e.kind === "child_up", (e) => e.kind === "negotiation_failed") : undefined;
      up.tm.queue(new ChildCreate(this, conn));
      return wait ? wait : { ok: true, code: "", message: `creating a CHILD SA for ${conn.name}` };
    }
    if (existing.some((s) => s.state === "connecting")) {
      if (!cmd.wait) return { ok: true, code: "", message: `${conn.name} is connecting` };
      return this.#waitFor(conn.name, timeout, (e) => e.kind === "child_up" || e.kind === "ike_up", (e) => !!e.code);
    }
    this.#state(conn.name).attempts = 0;
    const wait = cmd.wait ? this.#waitFor(conn.name, timeout, (e) => e.kind === "child_up", (e) => !!e.code && e.kind !== "apply") : undefined;
    const r = await this.#initiateConn(conn);
    if (r instanceof IkeFailure) return { ok: false, code: r.reason, message: r.message };
    return wait ? wait : { ok: true, code: "", message: `initiating ${conn.name} (IKE SA #${r.uniqueId})` };
  }

  async terminate(cmd: ikeagent.ConnectionCommand): Promise<ikeagent.CommandResult> {
    const conn = this.#conns.get(cmd.connection);
    if (!conn) return { ok: false, code: Reason.NOT_FOUND, message: `connection "${cmd.connection}" not found` };
    const st = this.#state(conn.name);
    if (st.retry) clearTimeout(st.retry);
    st.retry = undefined;
    const sas = this.#sasOf(conn.name);
    if (!sas.length) return { ok: true, code: "", message: `${conn.name} has no IKE SA` };
    const gone = sas.map((sa) => new Promise<void>((resolve) => {
      const check = (): void => {
        if (sa.state === "destroyed") {
          this.off("change", check);
          resolve();
        }
      };
      this.on("change", check);
      check();
    }));
    for (const sa of sas) {
      if (sa.state === "connecting") void this.destroyIkeSa(sa, new IkeFailure(Reason.CANCELLED, "terminated by operator"), { noRestart: true });
      else sa.tm.queue(new IkeDelete(this, { noRestart: true }));
    }
    if (cmd.wait) {
      const timeout = cmd.timeoutMs || 30000;
      const ok = await Promise.race([Promise.all(gone).then(() => true), new Promise<boolean>((r) => setTimeout(() => r(false), timeout).unref?.())]);
      if (!ok) return { ok: false, code: Reason.TIMEOUT, message: `${conn.name}: delete not completed within ${timeout} ms` };
    }
    return { ok: true, code: "", message: `deleting ${sas.length} IKE SA(s) of ${conn.name}` };
  }

  /** Trap policies (out) for the connection's selectors: traffic starts negotiation (auto=route). */
  async route(cmd: ikeagent.ConnectionCommand): Promise<ikeagent.CommandResult> {
    const conn = this.#conns.get(cmd.connection);
    if (!conn) return { ok: false, code: Reason.NOT_FOUND, message: `connection "${cmd.connection}" not found` };
    const remote = conn.remoteAddrs.find((a) => a !== "%any");
    const local = this.#localAddressFor(conn);
    if (!remote || !local) return { ok: false, code: "CONFIG_INVALID", message: `connection ${conn.name} needs literal local and remote addresses to be routed` };
    this.#routed.add(conn.name);
    const hasChild = this.#sasOf(conn.name).some((s) => [...s.children.values()].some((c) => !c.removed));
    if (!hasChild) {
      const lts = conn.localTs.length ? conn.localTs : [hostTs(local)];
      const rts = conn.remoteTs.length ? conn.remoteTs : [hostTs(remote)];
      try {
        await this.policies.setTrap(policiesFor(conn, lts, rts, local, remote, conn.transport ? "transport" : "tunnel", dataplane.PolicyAction.POLICY_ACTION_TRAP, true));
      } catch (err) {
        return { ok: false, code: Reason.DATAPLANE_ERROR, message: `installing trap policies for ${conn.name} failed: ${(err as Error).message}` };
      }
    }
    this.#changed();
    return { ok: true, code: "", message: `${conn.name} routed: traffic ${conn.localTs.map(tsToString).join(",") || local} === ${conn.remoteTs.map(tsToString).join(",") || remote} starts negotiation` };
  }

  async unroute(cmd: ikeagent.ConnectionCommand): Promise<ikeagent.CommandResult> {
    const conn = this.#conns.get(cmd.connection) ?? undefined;
    if (!conn) return { ok: false, code: Reason.NOT_FOUND, message: `connection "${cmd.connection}" not found` };
    if (!this.#routed.delete(conn.name)) return { ok: true, code: "", message: `${conn.name} was not routed` };
    const hasChild = this.#sasOf(conn.name).some((s) => [...s.children.values()].some((c) => !c.removed));
    const remote = conn.remoteAddrs.find((a) => a !== "%any");
    const local = this.#localAddressFor(conn);
    void hasChild; // a CHILD SA's policies stay: clearTrap only changes what remains once it goes
    if (remote && local) {
      const lts = conn.localTs.length ? conn.localTs : [hostTs(local)];
      const rts = conn.remoteTs.length ? conn.remoteTs : [hostTs(remote)];
      await this.policies.clearTrap(policiesFor(conn, lts, rts, local, remote, conn.transport ? "transport" : "tunnel", dataplane.PolicyAction.POLICY_ACTION_TRAP, true)).catch((err) => this.log.warn({ err: (err as Error).message }, "removing trap policy failed"));
    }
    this.#changed();
    return { ok: true, code: "", message: `${conn.name} unrouted` };
  }

  #ikeAlgText(sa: IkeSa): string {
    const a = sa.alg;
    if (!a) return "";
    const e = `${nameOf(EncrId, a.encr)}${a.encr === EncrId.CHACHA20_POLY1305 ? "" : `-${a.encrKeyBits}`}`;
    return `${e}${a.integ ? `/${nameOf(IntegId, a.integ)}` : ""}/PRF_${nameOf(PrfId, a.prf)}/${dhName(a.dh)}`;
  }

  /** Refreshes per-SA byte/packet counters from the dataplane (for listSas and metrics). */
  async refreshCounters(): Promise<void> {
    try {
      const list = await this.dp.listSas();
      this.#counters.clear();
      const perConn = new Map<string, { inB: bigint; inP: bigint; outB: bigint; outP: bigint }>();
      for (const s of list) {
        if (!s.sa?.id) continue;
        const c = { bytes: s.counters?.bytes ?? 0n, packets: s.counters?.packets ?? 0n };
        this.#counters.set(`${s.sa.id.dst}/${s.sa.id.spi}`, c);
        const agg = perConn.get(s.sa.connection) ?? { inB: 0n, inP: 0n, outB: 0n, outP: 0n };
        if (s.sa.direction === dataplane.Direction.DIRECTION_IN) (agg.inB += c.bytes), (agg.inP += c.packets);
        else (agg.outB += c.bytes), (agg.outP += c.packets);
        perConn.set(s.sa.connection, agg);
      }
      for (const [name, a] of perConn) {
        if (!this.#conns.has(name)) continue;
        this.metrics.childBytes.set({ connection: name, direction: "in" }, Number(a.inB));
        this.metrics.childBytes.set({ connection: name, direction: "out" }, Number(a.outB));
        this.metrics.childPackets.set({ connection: name, direction: "in" }, Number(a.inP));
        this.metrics.childPackets.set({ connection: name, direction: "out" }, Number(a.outP));
      }
    } catch (err) {
      this.log.debug({ err: (err as Error).message }, "reading dataplane counters failed");
    }
    // The connections' policies are re-asserted: whatever removed them, they come back within one interval.
    await this.policies.reassert().catch((err) => this.log.debug({ err: (err as Error).message }, "checking dataplane policies failed"));
  }

  listSas(req: ikeagent.ListSasRequest): ikeagent.ListSasResponse {
    const now = Date.now();
    const secs = (at: number): bigint => (at > now ? BigInt(Math.round((at - now) / 1000)) : 0n);
    const out: ikeagent.IkeSaInfo[] = [];
    for (const sa of this.#sas.values()) {
      if (req.connection && sa.conn?.name !== req.connection) continue;
      const state = { connecting: ikeagent.IkeSaState.IKE_SA_STATE_CONNECTING, established: ikeagent.IkeSaState.IKE_SA_STATE_ESTABLISHED, rekeying: ikeagent.IkeSaState.IKE_SA_STATE_REKEYING, deleting: ikeagent.IkeSaState.IKE_SA_STATE_DELETING, destroyed: ikeagent.IkeSaState.IKE_SA_STATE_DELETING }[sa.state];
      const children: ikeagent.ChildSaInfo[] = [...sa.children.values()].map((c) => {
        const cin = this.#counters.get(`${sa.local.address}/${c.spiIn}`);
        const cout = this.#counters.get(`${sa.remote.address}/${c.spiOut}`);
        return {
          name: c.conn.name,
          uniqueId: BigInt(c.id),
          state: { creating: ikeagent.ChildSaState.CHILD_SA_STATE_CREATING, installed: ikeagent.ChildSaState.CHILD_SA_STATE_INSTALLED, rekeying: ikeagent.ChildSaState.CHILD_SA_STATE_REKEYING, rekeyed: ikeagent.ChildSaState.CHILD_SA_STATE_REKEYED, deleting: ikeagent.ChildSaState.CHILD_SA_STATE_DELETING, destroyed: ikeagent.ChildSaState.CHILD_SA_STATE_DELETING }[c.state],
          mode: c.mode.toUpperCase(),
          udpEncap: c.encap,
          spiIn: c.spiIn,
          spiOut: c.spiOut,
          algorithms: childAlgText(c.alg, c.dh),
          bytesIn: cin?.bytes ?? 0n,
          packetsIn: cin?.packets ?? 0n,
          bytesOut: cout?.bytes ?? 0n,
          packetsOut: cout?.packets ?? 0n,
          installedAt: c.installedAt,
          rekeyInSeconds: c.state === "installed" ? secs(c.rekeyAt) : 0n,
          expiresInSeconds: secs(c.expireAt),
          localTs: c.localTs.map(tsToString),
          remoteTs: c.remoteTs.map(tsToString),
        };
      });
      out.push({
        name: sa.conn?.name ?? "",
        uniqueId: BigInt(sa.uniqueId),
        state,
        localAddress: sa.local.address,
        localPort: sa.local.port,
        localId: sa.localIdText,
        remoteAddress: sa.remote.address,
        remotePort: sa.remote.port,
        remoteId: sa.remoteIdText,
        initiatorSpi: hex(sa.spiI),
        responderSpi: hex(sa.spiR),
        initiator: sa.initiator,
        algorithms: this.#ikeAlgText(sa),
        natLocal: sa.natLocal,
        natRemote: sa.natRemote,
        establishedAt: sa.establishedAt,
        rekeyInSeconds: sa.state === "established" ? secs(sa.rekeyAt) : 0n,
        children,
      });
    }
    return { ikeSas: out };
  }

  /**
   * The dataplane is back after an outage (it may have restarted): policies missing from it
   * are installed again; CHILD SAs whose SAs it lost are rekeyed (their keys are not kept
   * after installation, so new ones are negotiated). A dataplane that kept its state file
   * has everything: nothing happens then.
   */
  async resync(): Promise<void> {
    if (this.#stopped) return;
    let present: Set<string>;
    try {
      present = new Set((await this.dp.listSas()).filter((s) => s.sa?.id).map((s) => `${s.sa!.id!.dst}/${s.sa!.id!.spi}`));
    } catch (err) {
      this.log.warn({ err: (err as Error).message }, "dataplane resync: listing SAs failed");
      return;
    }
    let rekeys = 0;
    for (const sa of this.#sas.values()) {
      if (sa.state !== "established") continue;
      for (const c of sa.children.values()) {
        if (c.state !== "installed" || c.removed) continue;
        const lost = !present.has(`${sa.local.address}/${c.spiIn}`) || (c.outboundInstalled && !present.has(`${sa.remote.address}/${c.spiOut}`));
        if (!lost) continue;
        rekeys++;
        this.log.warn({ conn: c.conn.name, child: c.id }, `dataplane lost the SAs of CHILD SA ${c.conn.name}{${c.id}}: rekeying it`);
        sa.tm.queue(new ChildRekey(this, c));
      }
    }
    const missing = await this.policies.reassert().catch((err) => (this.log.warn({ err: (err as Error).message }, "dataplane resync: policies"), [] as string[]));
    this.log.info({ rekeys, connectionsWithMissingPolicies: missing }, "dataplane resync done");
  }

  policiesMissing(): ReadonlySet<string> {
    return this.policies.missing;
  }

  listConnections(): ikeagent.ListConnectionsResponse {
    const start = { [fleet.StartAction.START_ACTION_START]: "start", [fleet.StartAction.START_ACTION_ROUTE]: "route" } as Record<number, string>;
    return {
      connections: [...this.#conns.values()].map((c) => {
        const st = this.#state(c.name);
        return {
          name: c.name,
          startAction: start[c.def.startAction] ?? "add",
          routed: this.#routed.has(c.name),
          established: this.#sasOf(c.name).filter((s) => s.state === "established").length,
          lastErrorCode: st.lastError?.code ?? "",
          lastError: st.lastError?.message ?? "",
          lastErrorAt: st.lastError?.at,
          revision: c.def.revision,
        };
      }),
    };
  }

  async diagnostics(req: ikeagent.GetDiagnosticsRequest): Promise<ikeagent.Diagnostics> {
    await this.refreshCounters();
    const n = Math.min(5000, req.logLines || 200);
    const view = {
      revision: this.#config.revision.toString(),
      self: this.#config.self ? fleet.GatewaySelf.toJSON(this.#config.self) : undefined,
      connections: this.#config.connections.map((c) => fleet.ConnectionDef.toJSON(c)),
      policyGroups: this.#config.policyGroups.map((p) => fleet.PolicyGroup.toJSON(p)),
      caCertificates: this.#config.caCertificates.length,
    };
    const [sas, pols] = await Promise.all([this.dp.listSas().catch(() => []), this.dp.listPolicies().catch(() => [])]);
    return {
      gateway: this.#opts.gateway ?? "",
      collectedAt: new Date(),
      version: this.#opts.version ?? "",
      viewJson: JSON.stringify(view),
      sas: this.listSas({ connection: "" }),
      connections: this.listConnections(),
      dataplaneSasJson: JSON.stringify(sas.map((s) => dataplane.SaState.toJSON({ ...s, sa: s.sa ? { ...s.sa, encryptionKey: Buffer.alloc(0), integrityKey: Buffer.alloc(0) } : undefined }))),
      dataplanePoliciesJson: JSON.stringify(pols.map((p) => dataplane.PolicyState.toJSON(p))),
      logLines: this.#recent.slice(-n),
      metricsText: await this.metrics.registry.metrics(),
    };
  }

  async stop(opts: { keepSas?: boolean } = {}): Promise<void> {
    this.#stopped = true;
    for (const st of this.#connState.values()) if (st.retry) clearTimeout(st.retry);
    clearInterval(this.#cookieRotate);
    const sas = [...this.#sas.values()];
    if (!opts.keepSas) {
      // Tell peers (best effort, no retransmits awaited) and remove our SAs.
      for (const sa of sas) if (sa.state === "established") sa.tm.queue(new IkeDelete(this, { noRestart: true }));
      await new Promise((r) => setTimeout(r, 200).unref?.());
      for (const sa of sas) await this.destroyIkeSa(sa, undefined, { noRestart: true });
    } else {
      for (const sa of sas) {
        sa.tm.destroy();
        sa.clearTimers();
        for (const c of sa.children.values()) c.clearTimers();
      }
      this.#sas.clear();
    }
    this.#unwatch();
    await this.keyExchange.close();
  }

  /** Test/inspection helper: the IKE SAs of a connection. */
  sasOf(name: string): IkeSa[] {
    return this.#sasOf(name);
  }
  /** Starts a CHILD SA rekey now (tests, `fleetswan agent rekey`). */
  rekeyChild(name: string): boolean {
    for (const sa of this.#sasOf(name)) for (const c of sa.children.values()) if (c.state === "installed" && sa.state === "established") return sa.tm.queue(new ChildRekey(this, c)), true;
    return false;
  }
  /** Starts an IKE SA rekey now. */
  rekeyIke(name: string): boolean {
    const sa = this.#sasOf(name).find((s) => s.state === "established");
    if (!sa) return false;
    sa.tm.queue(new IkeRekey(this));
    return true;
  }
  /** Sends a liveness check now. */
  dpd(name: string): boolean {
    const sa = this.#sasOf(name).find((s) => s.state === "established");
    if (!sa) return false;
    sa.tm.queue(new IkeDpd(this, sa.conn!.dpdTimeout));
    return true;
  }
}

