/**
 * What the IKE engine needs from the dataplane (proto/fleetswan/dataplane/v1): the
 * kernel-facing half of IPsec behind an interface, as strongSwan's kernel_ipsec_t is.
 * Implementations: GrpcDataplane (src/daemon/dataplane-grpc.ts, the real service over a
 * Unix socket) and FakeDataplane (dataplane-fake.ts, in memory, for exchange tests).
 */
import type { dataplane } from "@fleetswan/proto";

/** One datagram on the NAT-T socket (UDP 4500), owned by the dataplane (RFC 3948). */
export interface RelayDatagram {
  remoteAddress: string;
  remotePort: number;
  localAddress: string;
  payload: Buffer;
  keepalive?: boolean;
}

/** The IKE side of the dataplane's UDP 4500 relay stream. */
export interface IkeRelay {
  /** Sends an IKE message (without the non-ESP marker) or a keepalive from port 4500. */
  send(d: RelayDatagram): void;
  /** Registers the receiver of IKE messages that arrived on port 4500. */
  onReceive(fn: (d: RelayDatagram) => void): void;
  close(): void;
}

export interface DataplaneApi {
  getCapabilities(): Promise<dataplane.Capabilities>;
  allocateSpi(req: Partial<dataplane.AllocateSpiRequest>): Promise<number>;
  addSa(sa: dataplane.SecurityAssociation): Promise<void>;
  /** Succeeds when the SA does not exist. */
  deleteSa(id: dataplane.SaId, src?: string): Promise<void>;
  addPolicy(p: dataplane.Policy): Promise<void>;
  /** Succeeds when the policy does not exist. */
  deletePolicy(selector: dataplane.Selector, direction: dataplane.Direction, mark?: number): Promise<void>;
  listSas(connection?: string): Promise<dataplane.SaState[]>;
  listPolicies(connection?: string): Promise<dataplane.PolicyState[]>;
  /** Subscribes to acquires and expires; returns an unsubscribe function. */
  watchEvents(fn: (e: dataplane.Event) => void): () => void;
  /** Opens the UDP 4500 relay (one at a time). */
  openRelay(): IkeRelay;
  /**
   * Runs `fn` when the dataplane is reachable again after its streams broke (it may have
   * restarted and lost SAs or policies); returns an unsubscribe function. Optional: an
   * in-process dataplane never goes away.
   */
  onReconnect?(fn: () => void): () => void;
  close(): void;
}
