/**
 * What tasks may ask of the engine (strongSwan tasks reach the same through the bus,
 * the kernel interface and the IKE SA manager). The engine (engine.ts) implements it;
 * tasks depend only on this.
 */
import type { Logger } from "@fleetswan/common";
import type { DataplaneApi } from "./dataplane.js";
import type { ConnRuntime } from "./conn.js";
import type { ChildSa, IkeSa } from "./sa.js";
import type { Task } from "./task-manager.js";
import type { IkeFailure } from "./failure.js";
import type { EngineMetrics } from "./metrics.js";
import type { CookieJar } from "./keymat.js";
import type { PolicyTable } from "./policies.js";
import type { KeyExchangeRunner } from "../crypto/ke-offload.js";

export interface EngineCore {
  readonly log: Logger;
  readonly dp: DataplaneApi;
  readonly metrics: EngineMetrics;
  readonly cookies: CookieJar;
  /** The connections' policies, reference-counted by their CHILD SAs. */
  readonly policies: PolicyTable;
  /** Who computes the responder's IKE_SA_INIT keys (the event loop, or crypto worker threads). */
  readonly keyExchange: KeyExchangeRunner;
  /** All connections, in configuration order. */
  connections(): ConnRuntime[];
  /** Trusted CA certificates (PEM) from the config. */
  caCertificates(): string[];
  newChildId(): number;
  newSpi(): Buffer;
  /** Registers a (new or rekeyed) IKE SA under its own SPI. */
  register(sa: IkeSa): void;
  /** Creates an IKE SA object (not yet registered), with its task manager. */
  createIkeSa(initiator: boolean, spiI: Buffer, local: { address: string; port: number }, remote: { address: string; port: number }): IkeSa;
  /** IKE SAs other than `except` (for uniqueids, INITIAL_CONTACT). */
  ikeSas(): IkeSa[];
  /** The IKE SA is established (IKE_AUTH done, or a rekeyed SA took over). */
  ikeEstablished(sa: IkeSa, rekeyed?: IkeSa): void;
  /** Removes the IKE SA and its CHILD SAs (dataplane included). `reason` undefined = clean delete. */
  destroyIkeSa(sa: IkeSa, reason?: IkeFailure, opts?: { keepChildren?: boolean; noRestart?: boolean }): Promise<void>;
  /** A CHILD SA is installed (schedules its rekey/expiry). */
  childInstalled(sa: IkeSa, child: ChildSa, rekeyOf?: ChildSa): void;
  /** Removes a CHILD SA from the dataplane and the IKE SA. */
  removeChild(sa: IkeSa, child: ChildSa, why: string): Promise<void>;
  /** Negotiation failed: event, metric, log, keyingtries. */
  failed(sa: IkeSa | undefined, conn: ConnRuntime | undefined, err: IkeFailure): void;
  /** Records an event for the fleet (and the log). */
  event(kind: string, conn: string, message: string, code?: string): void;
  /** The connection is routed (its outbound policies become TRAP when no CHILD SA holds them). */
  isRouted(connection: string): boolean;
  /** Queues a task on an SA. */
  queue(sa: IkeSa, task: Task): void;
}
