/**
 * child_rekey: rekeying a CHILD SA with CREATE_CHILD_SA (RFC 7296 §1.3.3, §2.8), either side.
 *
 *   HDR, SK {N(REKEY_SA), SA, Ni, [KEi,] TSi, TSr} -->
 *                             <-- HDR, SK {SA, Nr, [KEr,] TSi, TSr}
 *   HDR, SK {D(ESP, old inbound SPI)} -->
 *                             <-- HDR, SK {D(ESP, old inbound SPI)}
 *
 * Make-before-break: the initiator installs both new SAs on the response, then deletes
 * the old ones; the responder installs the new inbound SA before answering and the new
 * outbound SA when the old one is deleted, so no packet is sent on an SA the other end
 * cannot yet decrypt.
 *
 * Collisions (§2.8.1): when both ends rekey the same CHILD SA at once, two new SAs exist;
 * "the SA created with the lowest of the four nonces" is redundant and is deleted by the
 * end that initiated it; the other end deletes the old SA.
 */
import { randomBytes } from "node:crypto";
import { ExchangeType, NotifyType, PayloadType, ProtocolId, type Payload } from "../../wire/index.js";
import { ChildInitiator, deleteFailedChild, find, findNotify, respondChild } from "../child.js";
import type { EngineCore } from "../context.js";
import { IkeFailure, Reason } from "../failure.js";
import type { ChildSa, IkeSa } from "../sa.js";
import { notify, type Response, type Task } from "../task-manager.js";
import { ChildDelete } from "./child-delete.js";

/** The lowest of a list of nonces (§2.8.1 compares them as octet strings). */
const lowest = (xs: Buffer[]): Buffer => xs.reduce((a, b) => (Buffer.compare(a, b) <= 0 ? a : b));

export class ChildRekey implements Task {
  readonly type = "child_rekey" as const;
  readonly exchange = ExchangeType.CREATE_CHILD_SA;
  #init?: ChildInitiator;
  #started = 0;

  constructor(
    private readonly core: EngineCore,
    readonly old: ChildSa,
  ) {}

  async build(sa: IkeSa): Promise<Payload[]> {
    const old = this.old;
    if (old.state !== "installed" || !sa.children.has(old.id)) throw new IkeFailure(Reason.CANCELLED, `CHILD SA #${old.id} is ${old.state}, not rekeying it`);
    old.state = "rekeying";
    old.rekeying = true;
    this.#started = Date.now();
    this.#init = new ChildInitiator(this.core, sa, old.conn, { inIkeAuth: false, rekeyOf: old });
    return this.#init.build();
  }

  async process(sa: IkeSa, ps: Payload[]): Promise<"done"> {
    const old = this.old;
    old.rekeying = false;
    if (findNotify(ps, NotifyType.CHILD_SA_NOT_FOUND)) {
      this.core.log.info({ conn: old.conn.name, child: old.id }, "peer no longer knows the CHILD SA we rekey (deleted or rekeyed by it meanwhile)");
      this.#adoptPeerRekey();
      await this.core.dp.deleteSa({ dst: sa.local.address, spi: this.#init!.child.spiIn, protocol: 50 }).catch(() => undefined);
      return "done";
    }
    if (findNotify(ps, NotifyType.TEMPORARY_FAILURE)) {
      old.state = "installed";
      if (this.#adoptPeerRekey()) return "done";
      await this.core.dp.deleteSa({ dst: sa.local.address, spi: this.#init!.child.spiIn, protocol: 50 }).catch(() => undefined);
      const delay = 2000 + Math.floor(Math.random() * 4000);
      this.core.log.info({ conn: old.conn.name, child: old.id }, `peer answered TEMPORARY_FAILURE to our CHILD SA rekey; retrying in ${(delay / 1000).toFixed(1)} s`);
      // The retry goes to whichever IKE SA holds the child then: the TEMPORARY_FAILURE is
      // typically the peer rekeying the IKE SA (§2.25), and the child moves to the new one.
      const t = setTimeout(() => {
        const owner = this.core.ikeSas().find((s) => s.children.get(old.id) === old);
        if (owner?.state === "established" && old.state === "installed") this.core.queue(owner, new ChildRekey(this.core, old));
      }, delay);
      t.unref?.();
      old.timers.push(t);
      return "done";
    }
    let fresh: ChildSa;
    try {
      fresh = await this.#init!.process(ps);
    } catch (err) {
      old.state = "installed";
      await this.core.dp.deleteSa({ dst: sa.local.address, spi: this.#init!.child.spiIn, protocol: 50 }).catch(() => undefined);
      deleteFailedChild(this.core, sa, this.#init!.child, err);
      throw err;
    }
    this.core.metrics.rekeySeconds.observe({ kind: "child" }, (Date.now() - this.#started) / 1000);
    const collision = old.peerRekey;
    if (collision) {
      const ours = [this.#init!.nonce, this.#init!.peerNonce!];
      const min = lowest([...ours, ...collision.nonces]);
      if (ours.some((n) => n.equals(min))) {
        // Our new SA is redundant: we delete it; the peer deletes the old one.
        this.core.log.info({ conn: old.conn.name, child: old.id }, "CHILD SA rekey collision (§2.8.1): ours has the lowest nonce, deleting our redundant SA");
        old.replacedBy = collision.child;
        old.state = "rekeyed";
        this.core.childInstalled(sa, fresh);
        sa.tm.queue(new ChildDelete(this.core, fresh, "redundant after rekey collision"), true);
        return "done";
      }
      this.core.log.info({ conn: old.conn.name, child: old.id }, "CHILD SA rekey collision (§2.8.1): the peer's SA is redundant, the peer deletes it");
    }
    old.replacedBy = fresh;
    old.state = "rekeyed";
    this.core.childInstalled(sa, fresh, old);
    sa.tm.queue(new ChildDelete(this.core, old, "rekeyed"), true);
    return "done";
  }

  /** Our rekey did not happen but the peer's did: its new SA replaces the old one. */
  #adoptPeerRekey(): boolean {
    const old = this.old;
    if (!old.peerRekey) return false;
    old.replacedBy = old.peerRekey.child;
    old.state = "rekeyed";
    return true;
  }

  async failed(sa: IkeSa, err: IkeFailure): Promise<void> {
    this.old.rekeying = false;
    if (this.old.state === "rekeying") this.old.state = "installed";
    this.#adoptPeerRekey();
    if (err.reason === Reason.CANCELLED) return;
    this.core.failed(sa, this.old.conn, err);
    if (err.reason === Reason.TIMEOUT) await this.core.destroyIkeSa(sa, err);
  }
}

/** Responder of a CHILD SA rekey (CREATE_CHILD_SA with N(REKEY_SA)). */
export async function respondChildRekey(core: EngineCore, sa: IkeSa, ps: Payload[]): Promise<Response> {
  const n = findNotify(ps, NotifyType.REKEY_SA)!;
  const ni = find(ps, PayloadType.NONCE);
  if (!ni || n.spi.length !== 4) return { payloads: [notify(NotifyType.INVALID_SYNTAX)] };
  const spi = n.spi.readUInt32BE(0);
  const old = [...sa.children.values()].find((c) => c.spiOut === spi);
  if (!old || old.state === "rekeyed" || old.state === "deleting" || old.state === "destroyed") {
    return { payloads: [notify(NotifyType.CHILD_SA_NOT_FOUND, Buffer.alloc(0), ProtocolId.ESP, n.spi)] };
  }
  // §2.25: while the IKE SA itself is being rekeyed or deleted, CHILD SAs wait.
  if (sa.state !== "established") return { payloads: [notify(NotifyType.TEMPORARY_FAILURE)] };
  const nr = randomBytes(32);
  const r = await respondChild(core, sa, old.conn, ps, { inIkeAuth: false, nonces: [ni.nonce, nr], rekeyOf: old });
  if (r.failure || !r.child) {
    if (r.failure) core.failed(sa, old.conn, r.failure);
    return { payloads: r.payloads };
  }
  const fresh = r.child;
  if (old.rekeying) {
    old.peerRekey = { child: fresh, nonces: [ni.nonce, nr] };
  } else {
    old.replacedBy = fresh;
    old.state = "rekeyed";
  }
  return { payloads: r.payloads, after: async () => core.childInstalled(sa, fresh, old) };
}
