/**
 * ike_delete: deleting the IKE SA (and with it all its CHILD SAs), RFC 7296 §1.4.1.
 *
 *   HDR, SK {D(IKE)} -->
 *                             <-- HDR, SK {}
 */
import { ExchangeType, PayloadType, ProtocolId, type DeletePayload, type Payload } from "../../wire/index.js";
import type { EngineCore } from "../context.js";
import type { IkeFailure } from "../failure.js";
import type { IkeSa } from "../sa.js";
import type { Task } from "../task-manager.js";

export class IkeDelete implements Task {
  readonly type = "ike_delete" as const;
  readonly exchange = ExchangeType.INFORMATIONAL;

  /** `keepChildren`: the CHILD SAs moved to a rekeyed IKE SA and must stay. */
  constructor(
    private readonly core: EngineCore,
    private readonly opts: { keepChildren?: boolean; noRestart?: boolean } = {},
  ) {}

  /** Shorter retransmission: a delete should not hold a dying SA for minutes. */
  readonly deadlineMs = 20_000;

  async build(sa: IkeSa): Promise<Payload[]> {
    if (sa.state !== "rekeying") sa.state = "deleting";
    return [{ type: PayloadType.DELETE, protocol: ProtocolId.IKE, spiSize: 0, spis: [] } as DeletePayload];
  }

  async process(sa: IkeSa): Promise<"done"> {
    await this.core.destroyIkeSa(sa, undefined, { ...this.opts, noRestart: true });
    return "done";
  }

  async failed(sa: IkeSa): Promise<void> {
    await this.core.destroyIkeSa(sa, undefined, { ...this.opts, noRestart: true });
  }
}
