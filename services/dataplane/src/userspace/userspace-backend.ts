/**
 * The userspace-esp Backend: ESP (RFC 4303) in Node over a TUN device, for kernels
 * without CONFIG_INET_ESP (like strongSwan's kernel-libipsec).
 *
 *   outbound: route (table 220) -> TUN -> OUT policy lookup -> SA -> ESP -> UDP 4500 (RFC 3948)
 *             or a raw IP-protocol-50 socket
 *   inbound:  UDP 4500 (non-ESP marker -> IKE relay, 0xFF -> keepalive) or raw socket
 *             -> SPI -> replay pre-check -> ICV/decrypt -> replay update -> selector and
 *             IN/FWD policy check -> TUN
 *
 * Policy semantics follow XFRM: the OUT policy with the lowest priority value wins (the
 * service derives it from selector specificity; ties: first installed), PROTECT without
 * an SA drops, TRAP without an SA drops and raises one Acquire per policy per 30 s (the
 * kernel's larval-state lifetime), DROP drops, BYPASS sends in clear (by a `throw` route
 * for plain-prefix bypass policies; a packet that still reaches the TUN is dropped and
 * counted, since re-injecting it would loop). Inbound tunnel-mode packets must match the
 * SA's selector and an IN or FWD policy whose template has the SA's reqid (XFRM drops them
 * as XfrmInNoPols / XfrmInTmplMismatch otherwise).
 */
import { randomInt } from "node:crypto";
import { dataplane } from "@fleetswan/proto";
import { FleetswanError, KernelError } from "@fleetswan/common";
import {
  type AllocateSpiParams,
  type Backend,
  type BackendEvent,
  type BackendEventListener,
  type Capabilities,
  type IkePacket,
  type NattSocket,
  type NattSocketOptions,
  type Policy,
  type PolicyKey,
  type PolicyState,
  type SaId,
  type SaState,
  type SecurityAssociation,
  describeSaId,
  isOwnedReqid,
  policyKeyString,
  saKey,
} from "../backend.js";
import { EspCrypto, type EspDropReason, ESP_HEADER } from "./esp.js";
import {
  type EspAddon,
  JOB_ADDR, JOB_FAMILY, JOB_FD, JOB_HANDLE, JOB_IN_LEN, JOB_IN_OFF, JOB_NH, JOB_OUT_LEN, JOB_OUT_OFF, JOB_PORT, JOB_SEQ_HI,
  JOB_SEQ_LO, JOB_SPI, JOB_STATUS, JOB_USER, JOB_WORDS, ST_OK, createNativeSa, espAddon, openDropReason,
} from "./esp-native.js";
import { REPLAY_DUPLICATE, REPLAY_TOO_OLD, ReplayWindow } from "./replay.js";
import { CompiledSelector, PacketInfo, addressBytes, addressText, familyOf, compilePrefix, prefixMatches } from "./ip.js";
import { loadAddon, type FsespAddon, type PollerInstance } from "./native.js";
import { RouteManager, type IpRunner } from "./routes.js";

const { Direction, PolicyAction, Mode } = dataplane;

export const DEFAULT_TUN_NAME = "fsesp0";
export const DEFAULT_ROUTE_TABLE = 220;
export const DEFAULT_REPLAY_WINDOW = 1024;
/** How long a TRAP policy stays quiet after an Acquire (the kernel's larval SA, xfrm_acq_expires). */
export const ACQUIRE_HOLD_MS = 30_000;
const LARVAL_SPI_MS = 30_000;

export interface UserspaceBackendOptions {
  /** TUN device name (default fsesp0). */
  tunName?: string;
  /** TUN MTU (default 1400: a 1500-octet path minus ESP-in-UDP overhead with room to spare). */
  mtu?: number;
  /** Routing table for routes into the TUN device (default 220) and the rule priority (default 220). */
  routeTable?: number;
  rulePriority?: number;
  /** Install routes and the rule (default true). */
  manageRoutes?: boolean;
  /** Open a raw IP-protocol-50 socket for SAs without encapsulation (default true). */
  rawEsp?: boolean;
  /** UDP port for ESP-in-UDP when nattSocket() was not called before the first encap SA (default 4500). */
  nattPort?: number;
  /** Packets per read batch (default 256). */
  batch?: number;
  /**
   * Where ESP is sealed/opened: "native" (default when the addon has it: one OpenSSL context per
   * SA, whole batches per call, sendmmsg) or "ts" (EspCrypto on node:crypto, the reference
   * implementation). The environment variable FLEETSWAN_ESP_CRYPTO=ts forces "ts".
   */
  crypto?: "native" | "ts";
  /** For tests: a replacement for `ip` and the addon, and a clock. */
  ip?: IpRunner;
  addon?: FsespAddon;
  now?: () => number;
}

/** Datapath drop counters by reason (bounded label set), for metrics. */
export interface UserspaceStats {
  outPackets: number;
  inPackets: number;
  drops: Record<EspDropReason | "out_no_policy" | "out_no_sa" | "out_drop_policy" | "out_bypass_in_tun" | "out_send_failed" | "in_tun_write_failed" | "seq_overflow", number>;
  acquires: number;
  ikeIn: number;
  keepalivesIn: number;
  /** Wake-ups with packets from the TUN device / the UDP and raw sockets (packets per wake-up = outPackets / tunBatches). */
  tunBatches: number;
  sockBatches: number;
}

export class UserspaceConfigError extends FleetswanError {
  constructor(message: string, details: Record<string, unknown> = {}) {
    super("USERSPACE_CONFIG", message, details);
  }
}

interface UsSa {
  sa: SecurityAssociation;
  key: string;
  crypto: EspCrypto;
  /** Native SA handle (esp-native.ts), 0 = TypeScript crypto. */
  native: number;
  /** Peer address as 4 words of raw network-order bytes (job JOB_ADDR..+3). */
  peerWords: Uint32Array;
  replay: ReplayWindow | undefined;
  inbound: boolean;
  family: 4 | 6;
  /** Outer peer address bytes (dst for outbound, src for inbound). */
  peer: Buffer;
  selector: CompiledSelector | undefined;
  seq: number;
  bytes: number;
  packets: number;
  replayErrors: number;
  integrityErrors: number;
  addedAt: Date;
  usedAt: Date | undefined;
  usedMs: number;
  softFired: boolean;
  dead: boolean;
  timers: NodeJS.Timeout[];
  serial: number;
}

interface UsPolicy {
  policy: Policy;
  key: string;
  sel: CompiledSelector;
  serial: number;
  addedAt: Date;
  usedAt: Date | undefined;
  acquireUntil: number;
  /** Cached SA for PROTECT/TRAP out (invalidated by saGeneration). */
  cachedSa: UsSa | undefined;
  cachedGen: number;
  /** Route installed for this policy: prefix and kind. */
  route?: { prefix: string; family: 4 | 6; kind: "dev" | "throw" };
}

function emptyStats(): UserspaceStats {
  return {
    outPackets: 0,
    inPackets: 0,
    drops: {
      malformed: 0, integrity: 0, padding: 0, replay: 0, too_old: 0, sequence: 0, policy: 0, no_sa: 0,
      out_no_policy: 0, out_no_sa: 0, out_drop_policy: 0, out_bypass_in_tun: 0, out_send_failed: 0,
      in_tun_write_failed: 0, seq_overflow: 0,
    },
    acquires: 0,
    ikeIn: 0,
    keepalivesIn: 0,
    tunBatches: 0,
    sockBatches: 0,
  };
}

/** Internet checksum of a header (RFC 791). */
function ipv4Checksum(b: Buffer, off: number, len: number): number {
  let s = 0;
  for (let i = 0; i < len; i += 2) s += (b[off + i]! << 8) | b[off + i + 1]!;
  while (s > 0xffff) s = (s & 0xffff) + (s >>> 16);
  return ~s & 0xffff;
}

export class UserspaceBackend implements Backend {
  readonly kind = dataplane.Backend.BACKEND_USERSPACE;
  readonly stats: UserspaceStats = emptyStats();

  private readonly opts: Required<Pick<UserspaceBackendOptions, "tunName" | "mtu" | "routeTable" | "rulePriority" | "manageRoutes" | "rawEsp" | "nattPort" | "batch">>;
  private readonly now: () => number;
  private addon: FsespAddon | undefined;
  private readonly addonOverride: FsespAddon | undefined;
  private readonly routes: RouteManager;
  private readonly listeners = new Set<BackendEventListener>();
  private readonly ikeListeners = new Set<(p: IkePacket) => void>();

  private readonly sas = new Map<string, UsSa>();
  private readonly inBySpi = new Map<number, UsSa[]>();
  private readonly outByReqid = new Map<number, UsSa[]>();
  private readonly larval = new Map<number, number>();
  private saGeneration = 0;
  private serial = 0;

  private readonly policies = new Map<string, UsPolicy>();
  private outPolicies: UsPolicy[] = [];
  private inPolicies: UsPolicy[] = [];

  private tunFd = -1;
  private tunName = "";
  private tunPoller: PollerInstance | undefined;
  private udpFd = -1;
  private udpPort = 0;
  private udpPoller: PollerInstance | undefined;
  private raw: { fd: number; poller: PollerInstance } | undefined;
  private rawError: string | undefined;
  private started: Promise<void> | undefined;
  private readonly info = new PacketInfo();
  private readonly innerInfo = new PacketInfo();
  private readonly addrScratch = Buffer.alloc(16);
  private closed = false;
  private readonly cryptoMode: "native" | "ts";
  /** The addon's native ESP, once started, when cryptoMode is "native" and the addon has it. */
  private esp: (FsespAddon & EspAddon) | undefined;
  // batch state: jobs for the addon, the SA per job, native SAs to free after the batch
  private batchDepth = 0;
  private pendingFree: number[] = [];
  private readonly outJobs: Uint32Array;
  private readonly outJobSa: (UsSa | undefined)[];
  private outN = 0;
  private outData: Buffer | undefined;
  private readonly inJobs: Uint32Array;
  private readonly inJobSa: (UsSa | undefined)[];
  private readonly inJobSeq: number[];
  private inN = 0;
  private inData: Buffer | undefined;
  private readonly tunWrites: Uint32Array;
  private tunN = 0;

  constructor(options: UserspaceBackendOptions = {}) {
    this.opts = {
      tunName: options.tunName ?? DEFAULT_TUN_NAME,
      mtu: options.mtu ?? 1400,
      routeTable: options.routeTable ?? DEFAULT_ROUTE_TABLE,
      rulePriority: options.rulePriority ?? DEFAULT_ROUTE_TABLE,
      manageRoutes: options.manageRoutes ?? true,
      rawEsp: options.rawEsp ?? true,
      nattPort: options.nattPort ?? 4500,
      batch: options.batch ?? 256,
    };
    this.cryptoMode = process.env.FLEETSWAN_ESP_CRYPTO === "ts" ? "ts" : (options.crypto ?? "native");
    const b = this.opts.batch;
    this.outJobs = new Uint32Array(b * JOB_WORDS);
    this.outJobSa = new Array<UsSa | undefined>(b).fill(undefined);
    this.inJobs = new Uint32Array(b * JOB_WORDS);
    this.inJobSa = new Array<UsSa | undefined>(b).fill(undefined);
    this.inJobSeq = new Array<number>(b).fill(0);
    this.tunWrites = new Uint32Array(b * 2);
    this.now = options.now ?? Date.now;
    this.addonOverride = options.addon;
    this.routes = new RouteManager({ dev: this.opts.tunName, table: this.opts.routeTable, rulePriority: this.opts.rulePriority, ip: options.ip });
    this.ip = options.ip;
  }
  private readonly ip: IpRunner | undefined;

  /**
   * Drop counters for metrics: `stats.drops` plus `tun_offload`, TUN packets the addon could
   * not split or complete (fsesp.cc tunStats; counted per process, not per backend).
   */
  dropCounts(): Record<string, number> {
    const t = this.addon?.tunStats?.();
    return t ? { ...this.stats.drops, tun_offload: t.dropped } : this.stats.drops;
  }

  /** The TUN device name once started. */
  get device(): string {
    return this.tunName;
  }

  // ------------------------------------------------------------ lifecycle --

  /** Open the TUN device (and the raw ESP socket); called by every operation that needs it. */
  start(): Promise<void> {
    this.started ??= this.doStart();
    return this.started;
  }

  private async doStart(): Promise<void> {
    this.addon = this.addonOverride ?? loadAddon();
    const a = this.addon;
    if (this.cryptoMode === "native") this.esp = espAddon(a);
    const t = a.openTun(this.opts.tunName);
    this.tunFd = t.fd;
    this.tunName = t.name;
    const { runIp } = await import("./routes.js");
    const ip = this.ip ?? runIp;
    await ip(["link", "set", "dev", t.name, "mtu", String(this.opts.mtu), "up"]);
    this.tunPoller = new a.Poller(t.fd, false, this.opts.batch, (data, meta, err) => this.onTunBatch(data, meta, err));
    this.tunPoller.start();
    if (this.opts.rawEsp) {
      try {
        const fd = a.rawEspSocket(4);
        const poller = new a.Poller(fd, true, this.opts.batch, (data, meta) => this.onRawBatch(data, meta));
        poller.start();
        this.raw = { fd, poller };
      } catch (e) {
        this.rawError = (e as Error).message;
      }
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const s of this.sas.values()) {
      for (const t of s.timers) clearTimeout(t);
      this.freeNative(s);
    }
    this.tunPoller?.close();
    this.udpPoller?.close();
    this.raw?.poller.close();
    const a = this.addon;
    if (a) {
      if (this.tunFd >= 0) a.close(this.tunFd);
      if (this.udpFd >= 0) a.close(this.udpFd);
      if (this.raw) a.close(this.raw.fd);
    }
    this.tunFd = this.udpFd = -1;
    if (this.opts.manageRoutes && this.started) await this.routes.close();
  }

  onEvent(listener: BackendEventListener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  private emit(ev: BackendEvent): void {
    for (const l of this.listeners) {
      try {
        l(ev);
      } catch {
        /* listeners must not throw; ignore */
      }
    }
  }

  async capabilities(): Promise<Capabilities> {
    await this.start().catch(() => undefined);
    const notes = ["userspace ESP over TUN device " + (this.tunName || this.opts.tunName)];
    if (!this.raw) notes.push(`plain ESP (IP protocol 50) unavailable${this.rawError ? `: ${this.rawError}` : ""}; ESP-in-UDP only`);
    notes.push("transport mode: ESP processing only, no routing of transport-mode traffic into the TUN device");
    notes.push(this.esp ? "ESP crypto: native (OpenSSL EVP context per SA, batches, sendmmsg)" : "ESP crypto: TypeScript (node:crypto)");
    return {
      backend: this.kind,
      encryption: [dataplane.Encryption.ENCRYPTION_AES_GCM_16, dataplane.Encryption.ENCRYPTION_CHACHA20_POLY1305, dataplane.Encryption.ENCRYPTION_AES_CBC],
      integrity: [dataplane.Integrity.INTEGRITY_HMAC_SHA2_256_128, dataplane.Integrity.INTEGRITY_HMAC_SHA2_384_192, dataplane.Integrity.INTEGRITY_HMAC_SHA2_512_256],
      esn: true,
      udpEncap: true,
      notes,
      kernel: "",
    };
  }

  // ------------------------------------------------------------------ SAs --

  async allocateSpi(p: AllocateSpiParams): Promise<number> {
    const t = this.now();
    for (const [spi, until] of this.larval) if (until <= t) this.larval.delete(spi);
    for (let i = 0; i < 1000; i++) {
      const spi = p.min === p.max ? p.min : p.min + randomInt(0, Math.min(p.max - p.min, 0xfffffffe) + 1);
      if (spi < 256) continue;
      if (this.inBySpi.has(spi >>> 0) || this.larval.has(spi >>> 0)) continue;
      this.larval.set(spi >>> 0, t + LARVAL_SPI_MS);
      return spi >>> 0;
    }
    throw new KernelError(`no free SPI in 0x${p.min.toString(16)}..0x${p.max.toString(16)}`, 28, `allocating an SPI for ${p.src}->${p.dst}`);
  }

  async addSa(sa: SecurityAssociation): Promise<void> {
    if (sa.id === undefined) throw new UserspaceConfigError("SA without id");
    if (sa.id.protocol !== 50) throw new UserspaceConfigError(`only ESP (protocol 50) is supported, got ${sa.id.protocol}`, { sa: describeSaId(sa.id) });
    const inbound = sa.direction === Direction.DIRECTION_IN;
    if (!inbound && sa.direction !== Direction.DIRECTION_OUT) {
      throw new UserspaceConfigError(`SA ${describeSaId(sa.id)}: direction must be IN or OUT (the userspace backend needs to know)`);
    }
    const crypto = new EspCrypto(sa); // validates algorithms and key lengths
    if (sa.encap === undefined && !this.opts.rawEsp) {
      throw new UserspaceConfigError(`SA ${describeSaId(sa.id)}: plain ESP needs the raw socket (rawEsp option off); use UDP encapsulation`);
    }
    await this.start();
    if (sa.encap === undefined && !this.raw) {
      throw new UserspaceConfigError(`SA ${describeSaId(sa.id)}: plain ESP (IP protocol 50) unavailable (${this.rawError ?? "no raw socket"}); use UDP encapsulation (encap)`);
    }
    if (sa.encap !== undefined) await this.ensureUdp(this.opts.nattPort, undefined);
    const key = saKey(sa.id);
    const old = this.sas.get(key);
    if (old) this.removeSa(old);
    const window = sa.replayWindow === 0 ? DEFAULT_REPLAY_WINDOW : sa.replayWindow;
    const peerText = inbound ? sa.src : sa.id.dst;
    const peerBytes = addressBytes(peerText);
    const peerWords = new Uint32Array(4);
    new Uint8Array(peerWords.buffer).set(peerBytes);
    const us: UsSa = {
      sa: { ...sa, selector: sa.selector },
      key,
      crypto,
      native: this.esp ? createNativeSa(this.esp, sa, !inbound) : 0,
      peerWords,
      replay: inbound ? new ReplayWindow(window, sa.esn) : undefined,
      inbound,
      family: familyOf(peerText),
      peer: peerBytes,
      selector: sa.selector && (sa.selector.src?.address || sa.selector.dst?.address) ? new CompiledSelector(sa.selector) : undefined,
      seq: 0,
      bytes: 0,
      packets: 0,
      replayErrors: 0,
      integrityErrors: 0,
      addedAt: new Date(this.now()),
      usedAt: undefined,
      usedMs: 0,
      softFired: false,
      dead: false,
      timers: [],
      serial: ++this.serial,
    };
    this.sas.set(key, us);
    const spi = sa.id.spi >>> 0;
    if (inbound) {
      this.inBySpi.set(spi, [...(this.inBySpi.get(spi) ?? []), us]);
      this.larval.delete(spi);
    } else {
      this.outByReqid.set(sa.reqid, [...(this.outByReqid.get(sa.reqid) ?? []), us]);
      for (const p of this.outPolicies) if (p.policy.template?.reqid === sa.reqid) p.acquireUntil = 0;
    }
    this.saGeneration++;
    // time lifetimes (RFC 4301 §4.4.2.1): soft -> Expire{hard:false}, hard -> delete + Expire{hard:true}
    const lt = sa.lifetime;
    if (lt) {
      if (lt.softAddSeconds > 0n) us.timers.push(setTimeout(() => this.expire(us, false), Number(lt.softAddSeconds) * 1000).unref());
      if (lt.hardAddSeconds > 0n) us.timers.push(setTimeout(() => this.expire(us, true), Number(lt.hardAddSeconds) * 1000).unref());
    }
  }

  /** Wipe and free the SA's native context; deferred while a batch may still reference it. */
  private freeNative(us: UsSa): void {
    const h = us.native;
    if (!h) return;
    us.native = 0;
    if (this.batchDepth > 0) this.pendingFree.push(h);
    else this.esp?.espSaFree(h);
  }

  private removeSa(us: UsSa): void {
    us.dead = true;
    this.freeNative(us);
    for (const t of us.timers) clearTimeout(t);
    this.sas.delete(us.key);
    const spi = us.sa.id!.spi >>> 0;
    if (us.inbound) {
      const l = (this.inBySpi.get(spi) ?? []).filter((x) => x !== us);
      if (l.length) this.inBySpi.set(spi, l);
      else this.inBySpi.delete(spi);
    } else {
      const l = (this.outByReqid.get(us.sa.reqid) ?? []).filter((x) => x !== us);
      if (l.length) this.outByReqid.set(us.sa.reqid, l);
      else this.outByReqid.delete(us.sa.reqid);
    }
    this.saGeneration++;
  }

  async deleteSa(id: SaId, src?: string): Promise<boolean> {
    const us = this.sas.get(saKey(id));
    if (!us) {
      const existed = this.larval.delete(id.spi >>> 0);
      return existed;
    }
    if (src && us.sa.src !== src) return false;
    this.removeSa(us);
    return true;
  }

  private expire(us: UsSa, hard: boolean): void {
    if (us.dead) return;
    if (!hard) {
      if (us.softFired) return;
      us.softFired = true;
    } else {
      this.removeSa(us);
    }
    this.emit({ $case: "expire", value: { id: us.sa.id, hard, childId: us.sa.childId, connection: us.sa.connection } });
  }

  /** Count traffic on an SA and enforce byte/packet lifetimes. */
  private account(us: UsSa, bytes: number): void {
    us.bytes += bytes;
    us.packets++;
    us.usedMs = this.now();
    const lt = us.sa.lifetime;
    if (!lt) return;
    if ((lt.hardBytes > 0n && us.bytes >= Number(lt.hardBytes)) || (lt.hardPackets > 0n && us.packets >= Number(lt.hardPackets))) {
      this.expire(us, true);
    } else if (!us.softFired && ((lt.softBytes > 0n && us.bytes >= Number(lt.softBytes)) || (lt.softPackets > 0n && us.packets >= Number(lt.softPackets)))) {
      this.expire(us, false);
    }
  }

  async listSas(): Promise<SaState[]> {
    return [...this.sas.values()]
      .filter((s) => isOwnedReqid(s.sa.reqid))
      .map((s) => ({
        sa: { ...s.sa, encryptionKey: Buffer.alloc(0), integrityKey: Buffer.alloc(0) },
        counters: {
          bytes: BigInt(s.bytes),
          packets: BigInt(s.packets),
          replayErrors: BigInt(s.replayErrors),
          integrityErrors: BigInt(s.integrityErrors),
          addedAt: s.addedAt,
          usedAt: s.usedMs ? new Date(s.usedMs) : undefined,
        },
      }));
  }

  // ------------------------------------------------------------- policies --

  async addPolicy(policy: Policy): Promise<void> {
    if (!policy.selector) throw new UserspaceConfigError("policy without selector");
    const sel = new CompiledSelector(policy.selector);
    const key = policyKeyString({ selector: policy.selector, direction: policy.direction, mark: policy.mark });
    const needsTmpl = policy.action === PolicyAction.POLICY_ACTION_PROTECT || policy.action === PolicyAction.POLICY_ACTION_TRAP;
    if (needsTmpl && !policy.template) throw new UserspaceConfigError(`policy ${key}: PROTECT/TRAP needs a template`);
    await this.start();
    const old = this.policies.get(key);
    const p: UsPolicy = {
      policy,
      key,
      sel,
      serial: old?.serial ?? ++this.serial,
      addedAt: old?.addedAt ?? new Date(this.now()),
      usedAt: old?.usedAt,
      acquireUntil: 0,
      cachedSa: undefined,
      cachedGen: -1,
    };
    // routes first, so a refused route leaves the old policy in force
    if (this.opts.manageRoutes && policy.direction === Direction.DIRECTION_OUT) {
      p.route = await this.routeFor(p);
      if (old?.route) await this.routes.remove(old.route.prefix, old.route.family, old.route.kind);
    }
    this.policies.set(key, p);
    this.rebuildPolicyLists();
  }

  private async routeFor(p: UsPolicy): Promise<UsPolicy["route"]> {
    const s = p.policy.selector!;
    const dst = s.dst;
    if (!dst || !dst.address) return undefined;
    const family = familyOf(dst.address);
    const prefix = `${dst.address}/${dst.length}`;
    const a = p.policy.action;
    if (a === PolicyAction.POLICY_ACTION_BYPASS) {
      if (dst.length === 0 || s.protocol !== 0 || s.srcPort !== 0 || s.dstPort !== 0) return undefined;
      await this.routes.addThrow(prefix, family);
      return { prefix, family, kind: "throw" };
    }
    if (a !== PolicyAction.POLICY_ACTION_PROTECT && a !== PolicyAction.POLICY_ACTION_TRAP) return undefined;
    if (p.policy.template?.mode === Mode.MODE_TRANSPORT) return undefined;
    const tdst = p.policy.template?.dst;
    if (tdst && familyOf(tdst) === family && prefixMatches(compilePrefix(dst, family), addressBytes(tdst), 0)) {
      throw new UserspaceConfigError(
        `policy ${prefix}: the remote subnet contains the tunnel endpoint ${tdst}; routing it into ${this.opts.tunName} would loop the ESP packets (host-to-host tunnels need the kernel backend)`,
      );
    }
    // src: a local address inside the policy's source selector, as strongSwan does
    let src: string | undefined;
    if (s.src?.address) {
      const sp = compilePrefix(s.src, family);
      for (const addr of await this.routes.localAddresses()) {
        if (familyOf(addr) === family && prefixMatches(sp, addressBytes(addr), 0)) {
          src = addr;
          break;
        }
      }
    }
    await this.routes.addRoute(prefix, family, src);
    return { prefix, family, kind: "dev" };
  }

  private rebuildPolicyLists(): void {
    const all = [...this.policies.values()].sort((a, b) => a.policy.priority - b.policy.priority || a.serial - b.serial);
    this.outPolicies = all.filter((p) => p.policy.direction === Direction.DIRECTION_OUT);
    this.inPolicies = all.filter((p) => p.policy.direction === Direction.DIRECTION_IN || p.policy.direction === Direction.DIRECTION_FWD);
  }

  async deletePolicy(key: PolicyKey): Promise<boolean> {
    const k = policyKeyString(key);
    const p = this.policies.get(k);
    if (!p) return false;
    this.policies.delete(k);
    this.rebuildPolicyLists();
    if (p.route) await this.routes.remove(p.route.prefix, p.route.family, p.route.kind);
    return true;
  }

  async listPolicies(): Promise<PolicyState[]> {
    return [...this.policies.values()].map((p) => ({
      policy: p.policy,
      counters: { addedAt: p.addedAt, usedAt: p.usedAt },
      effectivePriority: p.policy.priority,
    }));
  }

  // ------------------------------------------------------------ NAT-T socket --

  private async ensureUdp(port: number, address: string | undefined): Promise<void> {
    if (this.udpFd >= 0) return;
    this.addon ??= this.addonOverride ?? loadAddon();
    const a = this.addon;
    const addr = address ?? "0.0.0.0";
    this.udpFd = a.udpSocket(familyOf(addr) === 4 ? 4 : 6, addressBytes(addr), port, false);
    this.udpPort = port;
    if (port === 0) this.udpPort = this.opts.nattPort; // ephemeral ports are reported by the caller's config
    this.udpPoller = new a.Poller(this.udpFd, true, this.opts.batch, (data, meta) => this.onUdpBatch(data, meta));
    this.udpPoller.start();
  }

  async nattSocket(opts: NattSocketOptions): Promise<NattSocket> {
    await this.ensureUdp(opts.port, opts.address);
    // eslint-disable-next-line @typescript-eslint/no-this-alias
    const self = this;
    return {
      port: this.udpPort,
      onIke(listener) {
        self.ikeListeners.add(listener);
        return () => self.ikeListeners.delete(listener);
      },
      async sendIke(pkt) {
        const a = self.addon!;
        const fam = familyOf(pkt.remoteAddress);
        const body = pkt.keepalive ? Buffer.from([0xff]) : Buffer.concat([Buffer.alloc(4), pkt.payload]); // RFC 3948 §2.2 non-ESP marker
        const r = a.sendTo(self.udpFd, body, fam, addressBytes(pkt.remoteAddress), pkt.remotePort);
        if (r < 0) throw new KernelError(`sending IKE to ${pkt.remoteAddress}:${pkt.remotePort} failed`, -r, "sendto on the NAT-T socket");
      },
      async close() {
        self.ikeListeners.clear();
      },
    };
  }

  // ---------------------------------------------------------------- datapath --

  private onTunBatch(data: Buffer, meta: Uint32Array, err: string | undefined): void {
    if (err) this.emit({ $case: "error", value: { code: "TUN_READ", message: `${this.tunName}: ${err}` } });
    const n = meta.length >>> 3;
    if (n) this.stats.tunBatches++;
    this.batchDepth++;
    try {
      this.outData = data;
      for (let i = 0; i < n; i++) {
        const off = meta[i * 8]!;
        this.outboundOne(data.subarray(off, off + meta[i * 8 + 1]!));
      }
      this.flushOut();
    } finally {
      this.endBatch();
    }
  }

  private endBatch(): void {
    if (--this.batchDepth > 0) return;
    this.outData = this.inData = undefined;
    if (this.pendingFree.length) {
      for (const h of this.pendingFree) this.esp?.espSaFree(h);
      this.pendingFree = [];
    }
  }

  /** One packet read from the TUN device: policy lookup, ESP, send (a batch of one). */
  outbound(pkt: Buffer): void {
    this.batchDepth++;
    try {
      this.outData = pkt;
      this.outboundOne(pkt);
      this.flushOut();
    } finally {
      this.endBatch();
    }
  }

  /** Policy lookup and SA choice for one packet (a view into this.outData); ESP now (ts) or queued (native). */
  private outboundOne(pkt: Buffer): void {
    const info = this.info;
    if (!info.parse(pkt)) {
      this.stats.drops.malformed++;
      return;
    }
    if (info.totalLength < pkt.length) pkt = pkt.subarray(0, info.totalLength);
    let pol: UsPolicy | undefined;
    for (const p of this.outPolicies) {
      if (p.sel.matches(pkt, info)) {
        pol = p;
        break;
      }
    }
    if (!pol) {
      // Routed into the TUN without a policy (e.g. deleted a moment ago): never send in clear.
      this.stats.drops.out_no_policy++;
      return;
    }
    const action = pol.policy.action;
    if (action === PolicyAction.POLICY_ACTION_DROP) {
      this.stats.drops.out_drop_policy++;
      return;
    }
    if (action === PolicyAction.POLICY_ACTION_BYPASS) {
      this.stats.drops.out_bypass_in_tun++;
      return;
    }
    let sa = pol.cachedSa;
    if (pol.cachedGen !== this.saGeneration) {
      sa = this.pickOutSa(pol);
      pol.cachedSa = sa;
      pol.cachedGen = this.saGeneration;
    }
    if (!sa) {
      this.stats.drops.out_no_sa++;
      if (action === PolicyAction.POLICY_ACTION_TRAP) this.acquire(pol, pkt, info);
      return;
    }
    const t = this.now();
    if (!pol.usedAt || t - pol.usedAt.getTime() > 1000) pol.usedAt = new Date(t);
    // RFC 4303 §3.3.3: without ESN the counter must not cycle; the SA is spent.
    const next = sa.seq + 1;
    if (!sa.sa.esn && next > 0xffffffff) {
      this.stats.drops.seq_overflow++;
      this.expire(sa, true);
      return;
    }
    sa.seq = next;
    if (sa.native) {
      // queued: sealed and sent with the rest of the batch (flushOut)
      if (this.outN === this.outJobSa.length) this.flushOut();
      const j = this.outN * JOB_WORDS;
      const jobs = this.outJobs;
      const transport = sa.sa.mode === Mode.MODE_TRANSPORT;
      const payOff = transport ? info.l4Off : 0;
      jobs[j + JOB_HANDLE] = sa.native;
      jobs[j + JOB_SPI] = sa.sa.id!.spi;
      jobs[j + JOB_SEQ_LO] = next % 0x100000000;
      jobs[j + JOB_SEQ_HI] = Math.floor(next / 0x100000000);
      jobs[j + JOB_NH] = transport ? info.protocol : info.family === 4 ? 4 : 41;
      jobs[j + JOB_IN_OFF] = pkt.byteOffset - this.outData!.byteOffset + payOff;
      jobs[j + JOB_IN_LEN] = pkt.length - payOff;
      jobs[j + JOB_FD] = sa.sa.encap ? this.udpFd : this.raw!.fd;
      jobs[j + JOB_FAMILY] = sa.family;
      jobs[j + JOB_PORT] = sa.sa.encap ? sa.sa.encap.dstPort || 4500 : 0;
      jobs.set(sa.peerWords, j + JOB_ADDR);
      jobs[j + JOB_USER] = pkt.length;
      this.outJobSa[this.outN++] = sa;
      // counted now so that byte/packet lifetimes stay exact within a batch (undone if the send fails)
      this.account(sa, pkt.length);
      return;
    }
    let esp: Buffer;
    if (sa.sa.mode === Mode.MODE_TRANSPORT) {
      esp = sa.crypto.seal(sa.sa.id!.spi, next, info.protocol, pkt.subarray(info.l4Off));
    } else {
      esp = sa.crypto.seal(sa.sa.id!.spi, next, info.family === 4 ? 4 : 41, pkt);
    }
    const a = this.addon!;
    const r = sa.sa.encap
      ? a.sendTo(this.udpFd, esp, sa.family, sa.peer, sa.sa.encap.dstPort || 4500)
      : a.sendTo(this.raw!.fd, esp, sa.family, sa.peer, 0);
    if (r < 0) {
      this.stats.drops.out_send_failed++;
      return;
    }
    this.stats.outPackets++;
    this.account(sa, pkt.length);
  }

  /** Seal and send the queued outbound packets with one addon call (sendmmsg per socket). */
  private flushOut(): void {
    const n = this.outN;
    if (n === 0) return;
    this.outN = 0;
    const jobs = this.outJobs;
    this.esp!.espSealSend(this.outData!, jobs, n);
    for (let i = 0; i < n; i++) {
      const sa = this.outJobSa[i]!;
      this.outJobSa[i] = undefined;
      if (jobs[i * JOB_WORDS + JOB_STATUS] === ST_OK) {
        this.stats.outPackets++;
      } else {
        this.stats.drops.out_send_failed++;
        sa.bytes -= jobs[i * JOB_WORDS + JOB_USER]!;
        sa.packets--;
      }
    }
  }

  /** The newest live outbound SA for the policy's template (XFRM prefers the latest added). */
  private pickOutSa(pol: UsPolicy): UsSa | undefined {
    const t = pol.policy.template;
    if (!t) return undefined;
    const list = this.outByReqid.get(t.reqid);
    if (!list) return undefined;
    let best: UsSa | undefined;
    for (const s of list) {
      if (s.dead) continue;
      if (t.dst && s.sa.id!.dst !== t.dst) continue;
      if (t.src && s.sa.src !== t.src) continue;
      if (!best || s.serial > best.serial) best = s;
    }
    return best;
  }

  private acquire(pol: UsPolicy, pkt: Buffer, info: PacketInfo): void {
    const t = this.now();
    if (pol.acquireUntil > t) return;
    pol.acquireUntil = t + ACQUIRE_HOLD_MS;
    this.stats.acquires++;
    const tm = pol.policy.template!;
    this.emit({
      $case: "acquire",
      value: { policySelector: pol.policy.selector, reqid: tm.reqid, packet: CompiledSelector.ofPacket(pkt, info), src: tm.src, dst: tm.dst },
    });
  }

  private onUdpBatch(data: Buffer, meta: Uint32Array): void {
    const n = meta.length >>> 3;
    if (n) this.stats.sockBatches++;
    this.batchDepth++;
    try {
      this.inData = data;
      this.udpBatch(data, meta, n);
      this.flushIn();
    } finally {
      this.endBatch();
    }
  }

  private udpBatch(data: Buffer, meta: Uint32Array, n: number): void {
    for (let i = 0; i < n; i++) {
      const m = i * 8;
      const off = meta[m]!;
      const len = meta[m + 1]!;
      const pkt = data.subarray(off, off + len);
      if (len === 1 && pkt[0] === 0xff) {
        // RFC 3948 §2.3 NAT-keepalive
        this.stats.keepalivesIn++;
        if (this.ikeListeners.size) this.deliverIke(meta, m, Buffer.alloc(0), true);
        continue;
      }
      if (len >= 4 && pkt.readUInt32BE(0) === 0) {
        // RFC 3948 §2.2 non-ESP marker: IKE
        this.stats.ikeIn++;
        if (this.ikeListeners.size) this.deliverIke(meta, m, Buffer.from(pkt.subarray(4)), false);
        continue;
      }
      this.inboundOne(pkt, true);
    }
  }

  private deliverIke(meta: Uint32Array, m: number, payload: Buffer, keepalive: boolean): void {
    const fam = meta[m + 2]!;
    const ab = Buffer.from(meta.buffer, meta.byteOffset + (m + 4) * 4, fam === 4 ? 4 : 16);
    const pkt: IkePacket = { remoteAddress: addressText(ab), remotePort: meta[m + 3]!, localAddress: "", payload, keepalive };
    for (const l of this.ikeListeners) {
      try {
        l(pkt);
      } catch {
        /* must not throw */
      }
    }
  }

  private onRawBatch(data: Buffer, meta: Uint32Array): void {
    if (meta.length) this.stats.sockBatches++;
    this.batchDepth++;
    try {
      this.inData = data;
      this.rawBatch(data, meta);
      this.flushIn();
    } finally {
      this.endBatch();
    }
  }

  private rawBatch(data: Buffer, meta: Uint32Array): void {
    const n = meta.length >>> 3;
    for (let i = 0; i < n; i++) {
      const off = meta[i * 8]!;
      const len = meta[i * 8 + 1]!;
      // IPv4 raw sockets deliver the IP header (RFC 791); ESP follows it.
      const ihl = (data[off]! & 0x0f) * 4;
      if (len < ihl + ESP_HEADER) {
        this.stats.drops.malformed++;
        continue;
      }
      this.inboundOne(data.subarray(off + ihl, off + len), false);
    }
  }

  /** One ESP packet (from the SPI on): SA lookup, replay, decrypt, policy check, TUN (a batch of one). */
  inbound(esp: Buffer, udp: boolean): void {
    this.batchDepth++;
    try {
      // native crypto decrypts in place: work on a copy of the caller's buffer
      const b = this.esp ? Buffer.from(esp) : esp;
      this.inData = b;
      this.inboundOne(b, udp);
      this.flushIn();
    } finally {
      this.endBatch();
    }
  }

  /** SA lookup and replay pre-check for one ESP packet (a view into this.inData); opened now (ts) or queued (native). */
  private inboundOne(esp: Buffer, udp: boolean): void {
    if (esp.length < ESP_HEADER) {
      this.stats.drops.malformed++;
      return;
    }
    const spi = esp.readUInt32BE(0);
    const list = this.inBySpi.get(spi);
    const sa = list?.[list.length - 1];
    if (!sa || Boolean(sa.sa.encap) !== udp) {
      this.stats.drops.no_sa++;
      return;
    }
    // RFC 4303 §3.4.3: replay pre-check before the ICV, window update only after it verified
    const replay = sa.replay!;
    const seq = replay.check(esp.readUInt32BE(4));
    if (seq < 0) {
      sa.replayErrors++;
      if (seq === REPLAY_DUPLICATE) this.stats.drops.replay++;
      else if (seq === REPLAY_TOO_OLD) this.stats.drops.too_old++;
      else this.stats.drops.sequence++;
      return;
    }
    if (sa.native) {
      if (this.inN === this.inJobSa.length) this.flushIn();
      const j = this.inN * JOB_WORDS;
      const jobs = this.inJobs;
      jobs[j + JOB_HANDLE] = sa.native;
      jobs[j + JOB_SEQ_LO] = seq % 0x100000000;
      jobs[j + JOB_SEQ_HI] = Math.floor(seq / 0x100000000);
      jobs[j + JOB_IN_OFF] = esp.byteOffset - this.inData!.byteOffset;
      jobs[j + JOB_IN_LEN] = esp.length;
      this.inJobSa[this.inN] = sa;
      this.inJobSeq[this.inN++] = seq;
      return;
    }
    const r = sa.crypto.open(esp, seq);
    if (typeof r === "string") {
      if (r === "integrity") sa.integrityErrors++;
      this.stats.drops[r]++;
      return;
    }
    this.inboundOpened(sa, seq, r.nextHeader, r.payload);
  }

  /** Open the queued inbound packets with one addon call, then finish each and write them to the TUN in one call. */
  private flushIn(): void {
    const n = this.inN;
    if (n > 0) {
      this.inN = 0;
      const jobs = this.inJobs;
      const data = this.inData!;
      this.esp!.espOpen(data, jobs, n);
      for (let i = 0; i < n; i++) {
        const sa = this.inJobSa[i]!;
        this.inJobSa[i] = undefined;
        const j = i * JOB_WORDS;
        const st = jobs[j + JOB_STATUS]!;
        if (st !== ST_OK) {
          const reason = openDropReason(st);
          if (reason === "integrity") sa.integrityErrors++;
          this.stats.drops[reason]++;
          continue;
        }
        if (sa.dead) {
          // hard-expired by an earlier packet of this batch
          this.stats.drops.no_sa++;
          continue;
        }
        const off = jobs[j + JOB_OUT_OFF]!;
        this.inboundOpened(sa, this.inJobSeq[i]!, jobs[j + JOB_NH]!, data.subarray(off, off + jobs[j + JOB_OUT_LEN]!));
      }
    }
    this.flushTun();
  }

  private flushTun(): void {
    const n = this.tunN;
    if (n === 0) return;
    this.tunN = 0;
    const a = this.addon!;
    let ok: number;
    if (a.writeBatch) {
      ok = a.writeBatch(this.tunFd, this.inData!, this.tunWrites, n);
    } else {
      ok = 0;
      for (let i = 0; i < n; i++) {
        const off = this.tunWrites[i * 2]!;
        if (a.write(this.tunFd, this.inData!.subarray(off, off + this.tunWrites[i * 2 + 1]!)) >= 0) ok++;
      }
    }
    this.stats.inPackets += ok;
    this.stats.drops.in_tun_write_failed += n - ok;
  }

  /** After the ICV verified: replay window update, mode, inner packet policy check, TUN. */
  private inboundOpened(sa: UsSa, seq: number, nextHeader: number, payload: Buffer): void {
    const replay = sa.replay!;
    // a batch may hold the same sequence number twice: only the first one passes
    if (replay.check(seq % 0x100000000) !== seq) {
      sa.replayErrors++;
      this.stats.drops.replay++;
      return;
    }
    replay.accept(seq);
    const r = { nextHeader, payload };
    let inner: Buffer;
    if (sa.sa.mode === Mode.MODE_TRANSPORT) {
      inner = this.rebuildTransport(sa, r.nextHeader, r.payload);
    } else {
      if (r.nextHeader === 59) return; // dummy packet (RFC 4303 §2.6 TFC)
      if (r.nextHeader !== 4 && r.nextHeader !== 41) {
        this.stats.drops.malformed++;
        return;
      }
      inner = r.payload;
    }
    const info = this.innerInfo;
    if (!info.parse(inner)) {
      this.stats.drops.malformed++;
      return;
    }
    if (sa.sa.mode !== Mode.MODE_TRANSPORT && !this.inboundAllowed(sa, inner, info)) {
      this.stats.drops.policy++;
      return;
    }
    this.account(sa, inner.length);
    const data = this.inData;
    if (data && inner.buffer === data.buffer && inner.byteOffset >= data.byteOffset && inner.byteOffset + inner.length <= data.byteOffset + data.length) {
      if (this.tunN === this.opts.batch) this.flushTun();
      // a view into the batch: written with the others in flushTun
      this.tunWrites[this.tunN * 2] = inner.byteOffset - data.byteOffset;
      this.tunWrites[this.tunN * 2 + 1] = inner.length;
      this.tunN++;
      return;
    }
    const w = this.addon!.write(this.tunFd, inner);
    if (w < 0) {
      this.stats.drops.in_tun_write_failed++;
      return;
    }
    this.stats.inPackets++;
  }

  private inboundAllowed(sa: UsSa, inner: Buffer, info: PacketInfo): boolean {
    if (sa.selector && !sa.selector.matches(inner, info)) return false;
    for (const p of this.inPolicies) {
      if (!p.sel.matches(inner, info)) continue;
      const a = p.policy.action;
      if (a !== PolicyAction.POLICY_ACTION_PROTECT && a !== PolicyAction.POLICY_ACTION_TRAP) return false;
      return p.policy.template?.reqid === sa.sa.reqid;
    }
    return false;
  }

  /** Transport mode: put back an IP header (outer addresses, next header) around the payload. */
  private rebuildTransport(sa: UsSa, nh: number, payload: Buffer): Buffer {
    const dst = addressBytes(sa.sa.id!.dst);
    if (sa.family === 4) {
      const b = Buffer.alloc(20 + payload.length);
      b[0] = 0x45;
      b.writeUInt16BE(b.length, 2);
      b[8] = 64;
      b[9] = nh;
      sa.peer.copy(b, 12);
      dst.copy(b, 16);
      b.writeUInt16BE(ipv4Checksum(b, 0, 20), 10);
      payload.copy(b, 20);
      return b;
    }
    const b = Buffer.alloc(40 + payload.length);
    b[0] = 0x60;
    b.writeUInt16BE(payload.length, 4);
    b[6] = nh;
    b[7] = 64;
    sa.peer.copy(b, 8);
    dst.copy(b, 24);
    payload.copy(b, 40);
    return b;
  }
}
