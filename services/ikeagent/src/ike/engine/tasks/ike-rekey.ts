/**
 * ike_rekey: rekeying the IKE SA with CREATE_CHILD_SA (RFC 7296 §1.3.2, §2.18), either side.
 *
 *   HDR, SK {SA (IKE, new SPIi), Ni, KEi} -->
 *                             <-- HDR, SK {SA (IKE, new SPIr), Nr, KEr}
 *   (old SA) HDR, SK {D(IKE)} -->
 *                             <-- HDR, SK {}
 *
 * SKEYSEED = prf(SK_d (old), g^ir (new) | Ni | Nr). The CHILD SAs move to the new IKE SA,
 * which is usable at once; the old one is deleted by the rekey initiator. Message IDs of
 * the new SA start at 0.
 *
 * Collisions (§2.8.1): the new IKE SA with the lowest of the four nonces is redundant and
 * is deleted by its initiator; the CHILD SAs end on the surviving one, and the winner
 * deletes the old IKE SA.
 */
import { randomBytes } from "node:crypto";
import { createKeyExchange, type KeyExchange } from "../../crypto/dh.js";
import { algorithmsOf, formatProposal, formatProposals, formatSelectionReport, selectProposal } from "../../proposal.js";
import { ExchangeType, NotifyType, PayloadType, ProtocolId, type KePayload, type Payload, type SaPayload } from "../../wire/index.js";
import { dhName, errorNotify, find, findNotify } from "../child.js";
import type { EngineCore } from "../context.js";
import { IkeFailure, Reason } from "../failure.js";
import type { IkeSa } from "../sa.js";
import { notify, type Response, type Task } from "../task-manager.js";
import { IkeDelete } from "./ike-delete.js";

/** How long the winner of a collision waits for the peer to delete its redundant IKE SA. */
export const REDUNDANT_WAIT_MS = 5000;

const lowest = (xs: Buffer[]): Buffer => xs.reduce((a, b) => (Buffer.compare(a, b) <= 0 ? a : b));

/** Copies what a rekeyed IKE SA inherits and moves the CHILD SAs to it. */
function inherit(from: IkeSa, to: IkeSa): void {
  to.conn = from.conn;
  to.candidates = from.candidates;
  to.natLocal = from.natLocal;
  to.natRemote = from.natRemote;
  to.natT = from.natT;
  to.remoteIdText = from.remoteIdText;
  to.localIdText = from.localIdText;
  to.peerHashes = from.peerHashes;
  to.tm.fragmentation = from.tm.fragmentation; // RFC 7383 §2.3: negotiated once per IKE SA chain
}
function moveChildren(from: IkeSa, to: IkeSa): void {
  for (const [id, c] of from.children) to.children.set(id, c);
  from.children.clear();
}

export class IkeRekey implements Task {
  readonly type = "ike_rekey" as const;
  readonly exchange = ExchangeType.CREATE_CHILD_SA;
  #spi: Buffer = Buffer.alloc(0);
  #nonce: Buffer = randomBytes(32);
  #ke?: KeyExchange;
  #started = 0;
  #group = 0;

  constructor(private readonly core: EngineCore) {}

  async build(sa: IkeSa): Promise<Payload[]> {
    if (sa.state !== "established") throw new IkeFailure(Reason.CANCELLED, `IKE SA is ${sa.state}, not rekeying it`);
    sa.state = "rekeying";
    sa.rekeying = true;
    this.#started = Date.now();
    this.#spi = this.core.newSpi();
    this.#group ||= sa.alg!.dh;
    this.#ke = createKeyExchange(this.#group);
    const proposals = sa.conn!.ikeProposals.map((p) => ({ ...p, spi: this.#spi }));
    return [
      { type: PayloadType.SA, proposals } as SaPayload,
      { type: PayloadType.NONCE, nonce: this.#nonce },
      { type: PayloadType.KE, group: this.#group, data: this.#ke.publicValue } as KePayload,
    ];
  }

  async process(sa: IkeSa, ps: Payload[]): Promise<"done"> {
    sa.rekeying = false;
    const conn = sa.conn!;
    const retry = (ms: number, why: string): "done" => {
      if (sa.state === "rekeying") sa.state = "established";
      this.core.log.info({ conn: conn.name }, `IKE SA rekey: ${why}; retrying in ${(ms / 1000).toFixed(1)} s`);
      const t = setTimeout(() => sa.state === "established" && this.core.queue(sa, new IkeRekey(this.core)), ms);
      t.unref?.();
      sa.timers.push(t);
      return "done";
    };
    if (findNotify(ps, NotifyType.TEMPORARY_FAILURE)) return sa.peerRekey ? this.#adoptPeer(sa) : retry(2000 + Math.random() * 4000, "peer answered TEMPORARY_FAILURE");
    const invalidKe = findNotify(ps, NotifyType.INVALID_KE_PAYLOAD);
    if (invalidKe && invalidKe.data.length >= 2 && this.#group !== invalidKe.data.readUInt16BE(0)) {
      const next = new IkeRekey(this.core);
      next.#group = invalidKe.data.readUInt16BE(0);
      if (sa.state === "rekeying") sa.state = "established";
      sa.tm.queue(next, true);
      return "done";
    }
    const err = errorNotify(ps);
    if (err) {
      if (sa.state === "rekeying") sa.state = "established";
      throw new IkeFailure(err.notifyType === NotifyType.NO_PROPOSAL_CHOSEN ? Reason.NO_PROPOSAL_CHOSEN : Reason.PEER_ERROR, `peer refused the IKE SA rekey (${err.notifyType === NotifyType.NO_PROPOSAL_CHOSEN ? `NO_PROPOSAL_CHOSEN for ${formatProposals(conn.ikeProposals)}` : `notify ${err.notifyType}`})`);
    }
    const saP = find(ps, PayloadType.SA);
    const nr = find(ps, PayloadType.NONCE);
    const ke = find(ps, PayloadType.KE);
    const chosen = saP?.proposals[0];
    if (!saP || !nr || !ke || !chosen || chosen.spi.length !== 8 || chosen.protocol !== ProtocolId.IKE) throw new IkeFailure(Reason.INVALID_SYNTAX, "IKE rekey response lacks SA (IKE, 8-octet SPI), Nr or KEr");
    if (!selectProposal([chosen], conn.ikeProposals).chosen) throw new IkeFailure(Reason.NO_PROPOSAL_CHOSEN, `peer chose ${formatProposal(chosen)}, which we did not offer`);
    const alg = algorithmsOf(chosen);
    if (ke.group !== alg.dh || ke.group !== this.#group) throw new IkeFailure(Reason.INVALID_KE, `IKE rekey KE group ${dhName(ke.group)} does not match ${dhName(alg.dh)}`);
    const shared = this.#ke!.computeSharedSecret(ke.data);
    const fresh = this.core.createIkeSa(true, this.#spi, { ...sa.local }, { ...sa.remote });
    fresh.spiR = Buffer.from(chosen.spi);
    fresh.ni = this.#nonce;
    fresh.nr = Buffer.from(nr.nonce);
    fresh.alg = alg;
    fresh.keymat = sa.keymat!.rekeyed(alg, shared, fresh.ni, fresh.nr, fresh.spiI, fresh.spiR, true);
    shared.fill(0);
    inherit(sa, fresh);
    this.core.register(fresh);
    this.core.metrics.rekeySeconds.observe({ kind: "ike" }, (Date.now() - this.#started) / 1000);
    const collision = sa.peerRekey;
    if (collision) {
      const min = lowest([fresh.ni, fresh.nr, ...collision.nonces]);
      if (fresh.ni.equals(min) || fresh.nr.equals(min)) {
        this.core.log.info({ conn: conn.name }, "IKE SA rekey collision (§2.8.1): ours has the lowest nonce, deleting our redundant IKE SA");
        // The peer's new SA (which already holds the CHILD SAs) replaces both the old SA,
        // which the peer deletes, and our redundant one: neither going is an "IKE SA down".
        sa.replacedBy = collision.sa;
        fresh.replacedBy = collision.sa;
        fresh.state = "established";
        fresh.tm.queue(new IkeDelete(this.core, { noRestart: true }));
        return "done";
      }
      this.core.log.info({ conn: conn.name }, "IKE SA rekey collision (§2.8.1): the peer's new IKE SA is redundant, the peer deletes it");
      moveChildren(collision.sa, fresh);
      collision.sa.replacedBy = fresh;
      // The redundant SA gets no rekey or liveness checks of its own.
      collision.sa.clearTimers();
      moveChildren(sa, fresh);
      sa.replacedBy = fresh;
      this.core.ikeEstablished(fresh, sa);
      this.#deleteOldAfterRedundant(sa, collision.sa, fresh);
      return "done";
    }
    moveChildren(sa, fresh);
    sa.replacedBy = fresh;
    this.core.ikeEstablished(fresh, sa);
    sa.tm.queue(new IkeDelete(this.core, { keepChildren: true, noRestart: true }), true);
    return "done";
  }

  /**
   * We won a collision: delete the old IKE SA only once the peer has deleted its redundant
   * one (as strongSwan does: "waiting for delete for redundant IKE_SA"). Deleting the old SA
   * first races with the peer still processing our answer to its rekey: strongSwan then
   * decides we "did not notice the collision", drops its new SA without a delete, and ours
   * of it lingers (and later times out rekeying). If the peer has not deleted it within
   * REDUNDANT_WAIT_MS we delete both ourselves.
   */
  #deleteOldAfterRedundant(old: IkeSa, redundant: IkeSa, survivor: IkeSa): void {
    const deleteOld = (): void => {
      clearInterval(poll);
      clearTimeout(deadline);
      if (old.state !== "destroyed") old.tm.queue(new IkeDelete(this.core, { keepChildren: true, noRestart: true }), true);
    };
    const poll = setInterval(() => redundant.state === "destroyed" && deleteOld(), 50);
    const deadline = setTimeout(() => {
      if (redundant.state !== "destroyed") {
        this.core.log.info({ conn: old.name, sa: redundant.uniqueId }, "IKE SA rekey collision: the peer did not delete its redundant IKE SA; deleting it");
        redundant.tm.queue(new IkeDelete(this.core, { noRestart: true }));
      }
      deleteOld();
    }, REDUNDANT_WAIT_MS);
    poll.unref?.();
    deadline.unref?.();
    survivor.timers.push(poll, deadline);
  }

  /** Our rekey did not happen but the peer's did: the old SA waits for the peer's delete. */
  #adoptPeer(sa: IkeSa): "done" {
    sa.replacedBy = sa.peerRekey!.sa;
    return "done";
  }

  async failed(sa: IkeSa, err: IkeFailure): Promise<void> {
    sa.rekeying = false;
    if (sa.state === "rekeying" && !sa.peerRekey) sa.state = "established";
    if (err.reason === Reason.CANCELLED) return;
    this.core.failed(sa, sa.conn, err);
    if (err.reason === Reason.TIMEOUT) await this.core.destroyIkeSa(sa, err);
  }
}

/** Responder of an IKE SA rekey (CREATE_CHILD_SA with an IKE proposal). */
export async function respondIkeRekey(core: EngineCore, sa: IkeSa, ps: Payload[]): Promise<Response> {
  const conn = sa.conn!;
  // §2.25: not while we delete it, nor while a rekey of ours is done but not yet deleted.
  if (!(sa.state === "established" || (sa.state === "rekeying" && sa.rekeying))) return { payloads: [notify(NotifyType.TEMPORARY_FAILURE)] };
  const saP = find(ps, PayloadType.SA)!;
  const ni = find(ps, PayloadType.NONCE);
  const ke = find(ps, PayloadType.KE);
  if (!ni || !ke) return { payloads: [notify(NotifyType.INVALID_SYNTAX)] };
  const sel = selectProposal(saP.proposals, conn.ikeProposals);
  if (!sel.chosen || sel.chosen.spi.length !== 8) {
    core.log.warn({ conn: conn.name }, `no acceptable transform for IKE SA rekey: offered ${formatProposals(saP.proposals)} refused because ${formatSelectionReport(saP.proposals, sel)}`);
    return { payloads: [notify(NotifyType.NO_PROPOSAL_CHOSEN)] };
  }
  const alg = algorithmsOf(sel.chosen);
  if (ke.group !== alg.dh) {
    const d = Buffer.alloc(2);
    d.writeUInt16BE(alg.dh);
    return { payloads: [notify(NotifyType.INVALID_KE_PAYLOAD, d)] };
  }
  const kex = createKeyExchange(alg.dh);
  const shared = kex.computeSharedSecret(ke.data);
  const fresh = core.createIkeSa(false, Buffer.from(sel.chosen.spi), { ...sa.local }, { ...sa.remote });
  fresh.spiR = core.newSpi();
  fresh.ni = Buffer.from(ni.nonce);
  fresh.nr = randomBytes(32);
  fresh.alg = alg;
  fresh.keymat = sa.keymat!.rekeyed(alg, shared, fresh.ni, fresh.nr, fresh.spiI, fresh.spiR, false);
  shared.fill(0);
  inherit(sa, fresh);
  const collision = sa.rekeying;
  if (collision) sa.peerRekey = { sa: fresh, nonces: [fresh.ni, fresh.nr] };
  return {
    payloads: [
      { type: PayloadType.SA, proposals: [{ ...sel.chosen, spi: fresh.spiR }] } as SaPayload,
      { type: PayloadType.NONCE, nonce: fresh.nr },
      { type: PayloadType.KE, group: alg.dh, data: kex.publicValue } as KePayload,
    ],
    after: async () => {
      core.register(fresh);
      moveChildren(sa, fresh);
      // With a collision this is provisional: our own rekey's outcome decides (§2.8.1). If
      // the peer deletes the old SA first, its CHILD SAs already live on `fresh`.
      sa.replacedBy = fresh;
      if (!collision) sa.state = "rekeying";
      core.ikeEstablished(fresh, sa);
    },
  };
}
