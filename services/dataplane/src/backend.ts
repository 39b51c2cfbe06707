/**
 * The boundary between the dataplane service and what carries ESP on this host.
 *
 * Two production backends implement it: kernel XFRM over netlink (src/xfrm/) and
 * userspace ESP over a TUN device (src/userspace/); src/fake/ holds an in-memory one for
 * unit tests. The service (src/server/, src/reconcile.ts) owns the desired-state table,
 * idempotency, priority derivation, ownership and drift repair; a backend only does
 * what it is told, reports what it has, and raises events.
 *
 * Rules every backend follows:
 * - addSa/addPolicy replace an existing object with the same identity
 *   (SA: dst, spi, protocol; policy: selector, direction, mark), so repeats are harmless.
 * - deleteSa/deletePolicy resolve to false when there was nothing to delete ("not found"
 *   is success), never throw for it.
 * - listSas/listPolicies return only objects fleetswan owns (see isOwnedReqid), keys
 *   always empty, with counters.
 * - Errors are FleetswanError subclasses (KernelError for kernel refusals) whose message
 *   never contains key bytes.
 */
import type { dataplane } from "@fleetswan/proto";

export type SecurityAssociation = dataplane.SecurityAssociation;
export type SaId = dataplane.SaId;
export type SaState = dataplane.SaState;
export type Policy = dataplane.Policy;
export type PolicyState = dataplane.PolicyState;
export type Selector = dataplane.Selector;
export type Capabilities = dataplane.Capabilities;

/** What a backend raises: the `kind` of a dataplane Event (the service stamps the time). */
export type BackendEvent = NonNullable<dataplane.Event["kind"]>;

/** Listener for backend events. Must not throw; must not block. */
export type BackendEventListener = (event: BackendEvent) => void;

/** Identity of a policy: (selector, direction, mark), as in XFRM. */
export interface PolicyKey {
  selector: Selector;
  direction: dataplane.Direction;
  mark: number;
}

export interface AllocateSpiParams {
  /** Outer source and destination of the future inbound SA (peer -> us). */
  src: string;
  dst: string;
  reqid: number;
  /** Inclusive range; the caller has already replaced 0/0 with the default. */
  min: number;
  max: number;
}

/** The backend-independent interface the dataplane service drives. */
export interface Backend {
  /** Which backend this is (reported in Capabilities.backend). */
  readonly kind: dataplane.Backend;

  /**
   * What this host can really do. Probed once at start (e.g. an ESP SA add in a scratch
   * state) and cached; notes explain gaps ("kernel lacks ESP (CONFIG_INET_ESP); use
   * --backend userspace").
   */
  capabilities(): Promise<Capabilities>;

  /** Reserve an unused inbound SPI in [min, max] (XFRM_MSG_ALLOCSPI). */
  allocateSpi(params: AllocateSpiParams): Promise<number>;

  /** Install an SA, replacing one with the same (dst, spi, protocol). */
  addSa(sa: SecurityAssociation): Promise<void>;

  /** Delete an SA; false when it did not exist. `src` narrows the match when given. */
  deleteSa(id: SaId, src?: string): Promise<boolean>;

  /**
   * Install a policy, replacing one with the same (selector, direction, mark).
   * `policy.priority` is the effective priority, already derived by the service (never 0).
   */
  addPolicy(policy: Policy): Promise<void>;

  /** Delete a policy; false when it did not exist. */
  deletePolicy(key: PolicyKey): Promise<boolean>;

  /** SAs this backend holds that fleetswan owns, keys empty, with counters. */
  listSas(): Promise<SaState[]>;

  /** Policies this backend holds that fleetswan owns, with counters. */
  listPolicies(): Promise<PolicyState[]>;

  /**
   * Subscribe to acquire/expire events (drift is raised by the service, errors by both).
   * Returns an unsubscribe function.
   */
  onEvent(listener: BackendEventListener): () => void;

  /**
   * The NAT-T socket (UDP 4500) for this backend, opened on first call, or undefined when
   * the backend has none (fake without a relay port). In xfrm mode the socket carries
   * UDP_ENCAP_ESPINUDP so the kernel takes ESP; in userspace mode the backend consumes
   * ESP itself. Either way non-ESP datagrams surface through NattSocket.onIke.
   */
  nattSocket?(opts: NattSocketOptions): Promise<NattSocket>;

  /** Release sockets and timers. Installed SAs and policies stay (restart must not drop traffic). */
  close(): Promise<void>;
}

/** A datagram on the NAT-T socket without the non-ESP marker (RFC 3948 §2.2). */
export interface IkePacket {
  remoteAddress: string;
  remotePort: number;
  /** Local address it arrived on / is sent from; "" = unknown / kernel chooses. */
  localAddress: string;
  /** The IKE message. Empty for a keepalive. */
  payload: Buffer;
  /** A NAT-T keepalive (RFC 3948 §2.3, the single octet 0xFF). */
  keepalive: boolean;
}

export interface NattSocketOptions {
  /** Port to bind, normally NATT_PORT (4500). 0 = ephemeral (tests). */
  port: number;
  /** Address to bind; default all (IPv4 "0.0.0.0"). */
  address?: string;
}

/**
 * The UDP 4500 socket shared by IKE and ESP-in-UDP (RFC 3948). The implementation
 * strips the 4-octet non-ESP marker before onIke and adds it in sendIke; ESP packets
 * never reach onIke. The service relays onIke/sendIke to the ikeagent over RelayIke.
 */
export interface NattSocket {
  /** The bound port. */
  readonly port: number;
  /** Subscribe to received IKE packets and keepalives; returns an unsubscribe function. */
  onIke(listener: (packet: IkePacket) => void): () => void;
  /** Send an IKE packet (the marker is prepended) or a keepalive (payload ignored). */
  sendIke(packet: IkePacket): Promise<void>;
  close(): Promise<void>;
}

/**
 * fleetswan owns SAs and PROTECT/TRAP policies whose reqid lies in this range
 * (proto: "Owned range: 1..0x7fffffff"); other reqids belong to someone else and are
 * never listed, pruned or repaired. Policies without a template (bypass, drop) are owned
 * when they are in the persisted desired state.
 */
export const OWNED_REQID_MIN = 1;
export const OWNED_REQID_MAX = 0x7fffffff;

/** True when `reqid` lies in fleetswan's owned range. */
export function isOwnedReqid(reqid: number): boolean {
  return reqid >= OWNED_REQID_MIN && reqid <= OWNED_REQID_MAX;
}

/** Default SPI range for AllocateSpi when the request says 0/0. */
export const DEFAULT_SPI_MIN = 0xc0000000;
export const DEFAULT_SPI_MAX = 0xcfffffff;

/** "192.0.2.2/esp/0xc0012345": how SAs are named in events, errors and logs. */
export function describeSaId(id: SaId): string {
  const proto = id.protocol === 50 ? "esp" : String(id.protocol);
  return `${id.dst}/${proto}/0x${(id.spi >>> 0).toString(16).padStart(8, "0")}`;
}

/** "10.1.0.0/16[any]->10.2.0.0/16[any] out mark 0": how policies are named. */
export function describePolicyKey(key: PolicyKey): string {
  const s = key.selector;
  const pfx = (p: dataplane.Prefix | undefined) => (p ? `${p.address}/${p.length}` : "any");
  const port = (n: number) => (n ? `:${n}` : "");
  const proto = s.protocol ? ` proto ${s.protocol}` : "";
  const dir = ["unspecified", "out", "in", "fwd"][key.direction] ?? String(key.direction);
  return `${pfx(s.src)}${port(s.srcPort)}->${pfx(s.dst)}${port(s.dstPort)}${proto} ${dir}${key.mark ? ` mark 0x${key.mark.toString(16)}` : ""}`;
}

/** A stable string key for maps of SAs: "dst|spi|protocol". */
export function saKey(id: SaId): string {
  return `${id.dst}|${id.spi >>> 0}|${id.protocol}`;
}

/** A stable string key for maps of policies. */
export function policyKeyString(key: PolicyKey): string {
  const s = key.selector;
  return [s.src?.address, s.src?.length, s.dst?.address, s.dst?.length, s.protocol, s.srcPort, s.dstPort, key.direction, key.mark >>> 0].join("|");
}
