/**
 * ike_dpd: liveness check (RFC 7296 §2.4), an empty INFORMATIONAL.
 *
 *   HDR, SK {} -->
 *                             <-- HDR, SK {}
 *
 * No answer within the retransmission schedule or dpd_timeout: the peer is dead, and the
 * connection's dpd_action (clear | trap | restart) is carried out by the engine.
 */
import { ExchangeType, type Payload } from "../../wire/index.js";
import type { EngineCore } from "../context.js";
import { IkeFailure, Reason } from "../failure.js";
import type { IkeSa } from "../sa.js";
import type { Task } from "../task-manager.js";

export class IkeDpd implements Task {
  readonly type = "ike_dpd" as const;
  readonly exchange = ExchangeType.INFORMATIONAL;
  readonly deadlineMs: number;

  constructor(
    private readonly core: EngineCore,
    timeoutSeconds: number,
  ) {
    this.deadlineMs = timeoutSeconds * 1000;
  }

  async build(): Promise<Payload[]> {
    return [];
  }

  async process(): Promise<"done"> {
    this.core.metrics.dpd.inc({ outcome: "alive" });
    return "done";
  }

  async failed(sa: IkeSa, err: IkeFailure): Promise<void> {
    this.core.metrics.dpd.inc({ outcome: "dead" });
    const dead = new IkeFailure(Reason.PEER_DEAD, `peer ${sa.remote.address} (${sa.remoteIdText}) did not answer liveness checks for ${Math.round(this.deadlineMs / 1000)} s: declared dead (${err.reason})`);
    this.core.failed(sa, sa.conn, dead);
    await this.core.destroyIkeSa(sa, dead);
  }
}
