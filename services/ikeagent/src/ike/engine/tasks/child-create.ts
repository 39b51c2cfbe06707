/**
 * child_create: a further CHILD SA with CREATE_CHILD_SA (RFC 7296 §1.3.1).
 *
 *   HDR, SK {SA, Ni, [KEi,] TSi, TSr} -->
 *                             <-- HDR, SK {SA, Nr, [KEr,] TSi, TSr}
 */
import { randomBytes } from "node:crypto";
import { ExchangeType, NotifyType, PayloadType, type Payload } from "../../wire/index.js";
import { ChildInitiator, deleteFailedChild, find, respondChild } from "../child.js";
import type { ConnRuntime } from "../conn.js";
import type { EngineCore } from "../context.js";
import { IkeFailure, Reason } from "../failure.js";
import type { IkeSa } from "../sa.js";
import { notify, type Response, type Task } from "../task-manager.js";
import type { Ts } from "../ts.js";

export class ChildCreate implements Task {
  readonly type = "child_create" as const;
  readonly exchange = ExchangeType.CREATE_CHILD_SA;
  #child?: ChildInitiator;

  constructor(
    private readonly core: EngineCore,
    private readonly conn: ConnRuntime,
    private readonly trigger?: { src: Ts; dst: Ts },
  ) {}

  async build(sa: IkeSa): Promise<Payload[]> {
    this.#child = new ChildInitiator(this.core, sa, this.conn, { inIkeAuth: false, trigger: this.trigger });
    return this.#child.build();
  }

  async process(sa: IkeSa, ps: Payload[]): Promise<"done"> {
    try {
      const child = await this.#child!.process(ps);
      this.core.childInstalled(sa, child);
    } catch (err) {
      await this.core.dp.deleteSa({ dst: sa.local.address, spi: this.#child!.child.spiIn, protocol: 50 }).catch(() => undefined);
      deleteFailedChild(this.core, sa, this.#child!.child, err);
      throw err;
    }
    return "done";
  }

  async failed(sa: IkeSa, err: IkeFailure): Promise<void> {
    this.core.failed(sa, this.conn, err);
    if (err.reason === Reason.TIMEOUT) await this.core.destroyIkeSa(sa, err);
  }
}

/** Responder of a CREATE_CHILD_SA that makes a new CHILD SA (no REKEY_SA, ESP proposals). */
export async function respondChildCreate(core: EngineCore, sa: IkeSa, ps: Payload[]): Promise<Response> {
  const ni = find(ps, PayloadType.NONCE);
  if (!ni) return { payloads: [notify(NotifyType.INVALID_SYNTAX)] };
  if (sa.state !== "established") return { payloads: [notify(NotifyType.TEMPORARY_FAILURE)] };
  const conn = sa.conn!;
  const r = await respondChild(core, sa, conn, ps, { inIkeAuth: false, nonces: [ni.nonce, randomBytes(32)] });
  if (r.failure) core.failed(sa, conn, r.failure);
  return { payloads: r.payloads, after: async () => (r.child ? core.childInstalled(sa, r.child) : undefined) };
}
