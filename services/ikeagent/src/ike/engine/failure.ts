/**
 * Failure reason codes of the engine. Each is stable (tests, metrics labels
 * `fleetswan_ike_failures_total{reason}`, CommandResult.code, AgentEvent.code) and comes
 * with a message that says what to check, after the FreeS/WAN FAQ's model
 * ("no connection has been authorized", "no suitable connection", ...).
 */
import { FleetswanError } from "@fleetswan/common";

export const Reason = {
  /** IKE_SA_INIT from an address no connection accepts (Pluto: "no connection has been authorized"). */
  NO_CONNECTION_AUTHORIZED: "NO_CONNECTION_AUTHORIZED",
  /** IKE_AUTH: no connection for the peer's identity (Pluto: "no suitable connection"). */
  NO_SUITABLE_CONNECTION: "NO_SUITABLE_CONNECTION",
  /** CHILD SA: no connection for the traffic selectors (Pluto: "no connection is known"). */
  TS_UNACCEPTABLE: "TS_UNACCEPTABLE",
  /** No acceptable transform (we refused, or the peer answered NO_PROPOSAL_CHOSEN). */
  NO_PROPOSAL_CHOSEN: "NO_PROPOSAL_CHOSEN",
  /** The peer's AUTH did not verify, or the peer refused ours. */
  AUTH_FAILED: "AUTH_FAILED",
  /** The peer's certificate chain does not lead to a configured CA, or its SAN does not match. */
  CERT_INVALID: "CERT_INVALID",
  /** Retransmissions exhausted. */
  TIMEOUT: "TIMEOUT",
  /** DPD: the peer stopped answering. */
  PEER_DEAD: "PEER_DEAD",
  /** The peer asked for a DH group we do not offer. */
  INVALID_KE: "INVALID_KE",
  /** Malformed message from the peer. */
  INVALID_SYNTAX: "INVALID_SYNTAX",
  /** No secret (PSK / private key) configured for the connection. */
  NO_SECRET: "NO_SECRET",
  /** The dataplane refused or could not be reached. */
  DATAPLANE_ERROR: "DATAPLANE_ERROR",
  /** The peer answered with an error notify we do not handle otherwise. */
  PEER_ERROR: "PEER_ERROR",
  /** The peer is busy (TEMPORARY_FAILURE) or a collision lost. */
  TEMPORARY_FAILURE: "TEMPORARY_FAILURE",
  /** The connection is unknown. */
  NOT_FOUND: "NOT_FOUND",
  /** Stopped by an operator (down/unroute/config change). */
  CANCELLED: "CANCELLED",
} as const;
export type ReasonCode = (typeof Reason)[keyof typeof Reason];

/** A negotiation failure with a stable reason code. */
export class IkeFailure extends FleetswanError {
  constructor(readonly reason: ReasonCode, message: string, details: Record<string, unknown> = {}) {
    super(reason, message, details);
  }
}
