/**
 * child_delete: deleting CHILD SAs with INFORMATIONAL (RFC 7296 §1.4.1).
 *
 *   HDR, SK {D(ESP, our inbound SPIs)} -->
 *                             <-- HDR, SK {D(ESP, its inbound SPIs)}
 *
 * "Normally, the response in the INFORMATIONAL exchange will contain Delete payloads for
 * the paired SAs going in the other direction." When both ends delete the same CHILD SA
 * at once, each leaves it out of its response (§1.4.1).
 */
import { ExchangeType, PayloadType, ProtocolId, type DeletePayload, type Payload } from "../../wire/index.js";
import type { EngineCore } from "../context.js";
import type { IkeFailure } from "../failure.js";
import type { ChildSa, IkeSa } from "../sa.js";
import type { Response, Task } from "../task-manager.js";

const spiBuf = (spi: number): Buffer => {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(spi >>> 0);
  return b;
};

export class ChildDelete implements Task {
  readonly type = "child_delete" as const;
  readonly exchange = ExchangeType.INFORMATIONAL;

  constructor(
    private readonly core: EngineCore,
    readonly child: ChildSa,
    private readonly why: string,
  ) {}

  async build(): Promise<Payload[]> {
    // (A CHILD SA that failed to install is already "destroyed" here: it stays so.)
    if (this.child.state !== "rekeyed" && this.child.state !== "destroyed") this.child.state = "deleting";
    return [{ type: PayloadType.DELETE, protocol: ProtocolId.ESP, spiSize: 4, spis: [spiBuf(this.child.spiIn)] } as DeletePayload];
  }

  async process(sa: IkeSa): Promise<"done"> {
    await this.core.removeChild(sa, this.child, this.why);
    return "done";
  }

  async failed(sa: IkeSa, err: IkeFailure): Promise<void> {
    await this.core.removeChild(sa, this.child, `${this.why} (delete unanswered: ${err.reason})`);
  }
}

/**
 * Responder of an INFORMATIONAL with Delete payloads for ESP SAs. Returns the Delete for
 * our paired SAs; the SAs go after the response is sent. When the deleted SA was rekeyed
 * by the peer, the new SA's outbound half is installed first (make-before-break).
 */
export async function respondChildDelete(core: EngineCore, sa: IkeSa, deletes: DeletePayload[]): Promise<Response> {
  const ours: Buffer[] = [];
  const gone: ChildSa[] = [];
  for (const d of deletes) {
    if (d.protocol !== ProtocolId.ESP && d.protocol !== ProtocolId.AH) continue;
    for (const spi of d.spis) {
      if (spi.length !== 4) continue;
      const v = spi.readUInt32BE(0);
      const child = [...sa.children.values()].find((c) => c.spiOut === v);
      if (!child) continue;
      // §1.4.1: a CHILD SA we are deleting ourselves is not listed again.
      if (child.state !== "deleting") ours.push(spiBuf(child.spiIn));
      gone.push(child);
    }
  }
  for (const child of gone) {
    const next = child.replacedBy;
    if (next?.pendingOutbound) {
      await next.pendingOutbound();
      next.pendingOutbound = undefined;
    }
  }
  return {
    payloads: ours.length ? [{ type: PayloadType.DELETE, protocol: ProtocolId.ESP, spiSize: 4, spis: ours } as DeletePayload] : [],
    after: async () => {
      for (const child of gone) await core.removeChild(sa, child, child.replacedBy ? "rekeyed" : "deleted by peer");
    },
  };
}
