/**
 * The boundary between the IKEv2 engine (services/ikeagent/src/ike, src/daemon) and the
 * code that feeds it definitions and secrets (src/fleet for NATS, src/standalone for
 * local files) and reports its state. Both sides code against this file only.
 */
import type { EventEmitter } from "node:events";
import type { Secret } from "@fleetswan/common";
import type { fleet, ikeagent } from "@fleetswan/proto";

/** A secret the engine may use: PSK bytes or a private key (PKCS#8 PEM) with its chain. */
export interface EngineSecret {
  kind: "psk" | "private-key";
  current: Secret;
  /** During a rotation window the previous value is still accepted from peers (RFC-wise: a second PSK to verify AUTH with). */
  previous?: Secret;
  previousValidUntil?: Date;
  /** For private keys: the certificate chain, leaf first (PEM). */
  certificateChainPem?: string;
}

/** Secrets by ConnectionDef.secret_ref. */
export type SecretLookup = (secretRef: string) => EngineSecret | undefined;

/** What a gateway should run: the view's content (a local file yields the same shape). */
export interface EngineConfig {
  /** Spec revision (0 for local files). */
  revision: bigint;
  self?: fleet.GatewaySelf;
  connections: fleet.ConnectionDef[];
  policyGroups: fleet.PolicyGroup[];
  /** Trusted CA certificates (PEM). */
  caCertificates: string[];
}

/** Something the engine wants the world to know (published as fleet AgentEvent). */
export interface EngineEvent {
  time: Date;
  /** "ike_up" | "ike_down" | "child_up" | "child_down" | "rekey" | "auth_failed" | "dpd_dead" | "negotiation_failed" | "apply" */
  kind: string;
  connection: string;
  /** Stable reason code for failures (e.g. NO_PROPOSAL_CHOSEN, AUTH_FAILED, TS_UNACCEPTABLE, PEER_DEAD). */
  code?: string;
  message: string;
}

/**
 * The engine. apply() is idempotent and touches only connections whose definition changed
 * (FAQ: "reload connection info without restarting"): unchanged ones keep their SAs.
 * Emits "event" (EngineEvent) and "change" (no payload: SAs or connection states changed).
 */
export interface Engine extends EventEmitter {
  apply(config: EngineConfig, secrets: SecretLookup): Promise<ikeagent.ReloadConfigResponse>;
  initiate(cmd: ikeagent.ConnectionCommand): Promise<ikeagent.CommandResult>;
  terminate(cmd: ikeagent.ConnectionCommand): Promise<ikeagent.CommandResult>;
  route(cmd: ikeagent.ConnectionCommand): Promise<ikeagent.CommandResult>;
  unroute(cmd: ikeagent.ConnectionCommand): Promise<ikeagent.CommandResult>;
  listSas(req: ikeagent.ListSasRequest): ikeagent.ListSasResponse;
  listConnections(): ikeagent.ListConnectionsResponse;
  /** Connections whose policies were found missing in the dataplane (status is not "up" for them). */
  policiesMissing?(): ReadonlySet<string>;
  /** Redacted diagnostics (view JSON, SAs, dataplane listings, recent logs, metrics). */
  diagnostics(req: ikeagent.GetDiagnosticsRequest): Promise<ikeagent.Diagnostics>;
  /** Stop: with keepSas the kernel SAs stay (agent restart must not drop traffic). */
  stop(opts?: { keepSas?: boolean }): Promise<void>;
}
