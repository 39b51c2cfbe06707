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
    this.now = options.now ?? Date.now;
    this.addonOverride = options.addon;
    this.routes = new RouteManager({ dev: this.opts.tunName, table: this.opts.routeTable, rulePriority: this.opts.rulePriority, ip: options.ip });
    this.ip = options.ip;
  }
  private readonly ip: IpRunner | undefined;

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
    for (const s of this.sas.values()) for (const t of s.timers) clearTimeout(t);
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
    const us: UsSa = {
      sa: { ...sa, selector: sa.selector },
      key,
      crypto,
      replay: inbound ? new ReplayWindow(window, sa.esn) : undefined,
      inbound,
      family: familyOf(peerText),
      peer: addressBytes(peerText),
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

  private removeSa(us: UsSa): void {
    us.dead = true;
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
    for (let i = 0; i < n; i++) {
      const off = meta[i * 8]!;
      this.outbound(data.subarray(off, off + meta[i * 8 + 1]!));
    }
  }

  /** One packet read from the TUN device: policy lookup, ESP, send. */
  outbound(pkt: Buffer): void {
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
      this.inbound(pkt, true);
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
      this.inbound(data.subarray(off + ihl, off + len), false);
    }
  }

  /** One ESP packet (from the SPI on): SA lookup, replay, decrypt, policy check, TUN. */
  inbound(esp: Buffer, udp: boolean): void {
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
    const r = sa.crypto.open(esp, seq);
    if (typeof r === "string") {
      if (r === "integrity") sa.integrityErrors++;
      this.stats.drops[r]++;
      return;
    }
    replay.accept(seq);
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
