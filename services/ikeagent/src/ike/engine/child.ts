/**
 * CHILD SA negotiation shared by IKE_AUTH (first CHILD SA), CREATE_CHILD_SA (more CHILD
 * SAs) and CHILD SA rekeying — strongSwan's child_create task — plus installing and
 * removing the result in the dataplane (SAs in both directions, policies out/in/fwd, trap
 * policies for auto=route).
 */
import { randomBytes } from "node:crypto";
import { dataplane } from "@fleetswan/proto";
import { createKeyExchange, type KeyExchange } from "../crypto/dh.js";
import type { ChildSaKeys } from "../crypto/prf.js";
import { algorithmsOf, formatProposal, formatProposals, formatSelectionReport, selectProposal, type NegotiatedAlgorithms } from "../proposal.js";
import { EncrId, IntegId, NotifyType, PayloadType, ProtocolId, TransformType, nameOf, type KePayload, type NotifyPayload, type Payload, type Proposal, type SaPayload, type TsPayload, type IdPayload } from "../wire/index.js";
import type { ConnRuntime } from "./conn.js";
import type { EngineCore } from "./context.js";
import { IkeFailure, Reason } from "./failure.js";
import { ChildSa, type IkeSa } from "./sa.js";
import { notify } from "./task-manager.js";
import { ChildDelete } from "./tasks/child-delete.js";
import { contains, fromWire, hostTs, narrow, toSelectors, toWire, tsToString, type Ts } from "./ts.js";

// ------------------------------------------------------------------ helpers --

/** Payload type -> payload interface, for find(). */
type ByType<T extends number> = Extract<Payload, { type: T }>;
export function find<T extends number>(ps: readonly Payload[], type: T): PayloadOf<T> | undefined {
  return ps.find((p) => p.type === type) as PayloadOf<T> | undefined;
}
/** The payload interface for a type number (TSi/TSr and IDi/IDr share one). */
export type PayloadOf<T extends number> = T extends 44 | 45 ? TsPayload : T extends 35 | 36 ? IdPayload : ByType<T>;
export const findNotify = (ps: readonly Payload[], type: number): NotifyPayload | undefined =>
  ps.find((p): p is NotifyPayload => p.type === PayloadType.NOTIFY && (p as NotifyPayload).notifyType === type);
/** The first error notify (type < 16384), if any. */
export const errorNotify = (ps: readonly Payload[]): NotifyPayload | undefined =>
  ps.find((p): p is NotifyPayload => p.type === PayloadType.NOTIFY && (p as NotifyPayload).notifyType < 16384);

const spiBuf = (spi: number): Buffer => {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(spi >>> 0);
  return b;
};

/** Our TS for one end: configured subnets, or the host address (FreeS/WAN: no subnet = the gateway itself). */
export function configuredTs(conn: ConnRuntime, end: "local" | "remote", sa: IkeSa): Ts[] {
  const list = end === "local" ? conn.localTs : conn.remoteTs;
  if (list.length) return list;
  return [hostTs(end === "local" ? sa.local.address : sa.remote.address)];
}

/** The configured ESP proposals, with or without their DH groups (IKE_AUTH carries no KE: §1.2). */
function espProposals(conn: ConnRuntime, spi: number, withDh: boolean): Proposal[] {
  return conn.espProposals.map((p, i) => ({
    ...p,
    num: i + 1,
    spi: spiBuf(spi),
    transforms: p.transforms.filter((t) => withDh || t.type !== TransformType.DH),
  }));
}

const ENCR: Record<number, dataplane.Encryption> = {
  [EncrId.AES_GCM_16]: dataplane.Encryption.ENCRYPTION_AES_GCM_16,
  [EncrId.CHACHA20_POLY1305]: dataplane.Encryption.ENCRYPTION_CHACHA20_POLY1305,
  [EncrId.AES_CBC]: dataplane.Encryption.ENCRYPTION_AES_CBC,
};
const INTEG: Record<number, dataplane.Integrity> = {
  [IntegId.NONE]: dataplane.Integrity.INTEGRITY_NONE,
  [IntegId.HMAC_SHA2_256_128]: dataplane.Integrity.INTEGRITY_HMAC_SHA2_256_128,
  [IntegId.HMAC_SHA2_384_192]: dataplane.Integrity.INTEGRITY_HMAC_SHA2_384_192,
  [IntegId.HMAC_SHA2_512_256]: dataplane.Integrity.INTEGRITY_HMAC_SHA2_512_256,
};

/** "AES_GCM_16-256", "AES_CBC-256/HMAC_SHA2_256_128", plus "/CURVE_25519" with PFS (swanctl style). */
export function childAlgText(alg: NegotiatedAlgorithms | undefined, dh: number): string {
  if (!alg) return "";
  const e = `${nameOf(EncrId, alg.encr)}${alg.encr === EncrId.CHACHA20_POLY1305 ? "" : `-${alg.encrKeyBits}`}`;
  const i = alg.integ ? `/${nameOf(IntegId, alg.integ)}` : "";
  return `${e}${i}${dh ? `/${dhName(dh)}` : ""}${alg.esn ? "/ESN" : ""}`;
}
export function dhName(dh: number): string {
  return ({ 14: "MODP_2048", 15: "MODP_3072", 16: "MODP_4096", 19: "ECP_256", 20: "ECP_384", 21: "ECP_521", 31: "CURVE_25519" } as Record<number, string>)[dh] ?? `DH_${dh}`;
}

// ---------------------------------------------------------------- initiator --

export interface ChildInitOptions {
  /** The CHILD SA is negotiated in IKE_AUTH (nonces from IKE_SA_INIT, no KE). */
  inIkeAuth: boolean;
  rekeyOf?: ChildSa;
  /** Traffic that triggered an acquire (its addresses go first, §2.9). */
  trigger?: { src: Ts; dst: Ts };
}

/** Initiator half of a CHILD SA negotiation. */
export class ChildInitiator {
  readonly child: ChildSa;
  #ke?: KeyExchange;
  #nonce = randomBytes(32);
  #tsi: Ts[] = [];
  #tsr: Ts[] = [];
  #offered: Proposal[] = [];

  constructor(
    private readonly core: EngineCore,
    private readonly sa: IkeSa,
    readonly conn: ConnRuntime,
    readonly opts: ChildInitOptions,
  ) {
    this.child = new ChildSa(core.newChildId(), conn, conn.transport ? "transport" : "tunnel");
    this.child.replaces = opts.rekeyOf;
  }

  get nonce(): Buffer {
    return this.#nonce;
  }

  /** SA, [Ni, KEi], TSi, TSr, [N(USE_TRANSPORT_MODE)] — N(REKEY_SA) goes first when rekeying. */
  async build(): Promise<Payload[]> {
    const sa = this.sa;
    this.child.spiIn = await this.core.dp.allocateSpi({ src: sa.remote.address, dst: sa.local.address, reqid: this.conn.reqid });
    const old = this.opts.rekeyOf;
    this.#tsi = old ? old.localTs : configuredTs(this.conn, "local", sa);
    this.#tsr = old ? old.remoteTs : configuredTs(this.conn, "remote", sa);
    if (this.opts.trigger && !old) {
      this.#tsi = [this.opts.trigger.src, ...this.#tsi];
      this.#tsr = [this.opts.trigger.dst, ...this.#tsr];
    }
    this.#offered = espProposals(this.conn, this.child.spiIn, !this.opts.inIkeAuth);
    const out: Payload[] = [];
    if (old) out.push(notify(NotifyType.REKEY_SA, Buffer.alloc(0), ProtocolId.ESP, spiBuf(old.spiIn)));
    if (this.conn.transport) out.push(notify(NotifyType.USE_TRANSPORT_MODE));
    out.push({ type: PayloadType.SA, proposals: this.#offered } as SaPayload);
    if (!this.opts.inIkeAuth) {
      out.push({ type: PayloadType.NONCE, nonce: this.#nonce });
      const dh = this.#offered[0]!.transforms.find((t) => t.type === TransformType.DH)?.id ?? 0;
      if (dh) {
        this.#ke ??= createKeyExchange(dh);
        out.push({ type: PayloadType.KE, group: dh, data: this.#ke.publicValue } as KePayload);
      }
    }
    out.push({ type: PayloadType.TSi, selectors: this.#tsi.map(toWire) } as TsPayload, { type: PayloadType.TSr, selectors: this.#tsr.map(toWire) } as TsPayload);
    return out;
  }

  /** Processes the response part for the CHILD SA and installs it. Throws IkeFailure. */
  async process(ps: Payload[]): Promise<ChildSa> {
    const err = errorNotify(ps);
    if (err) throw childNotifyFailure(err, this.conn, this.#offered);
    const saP = find(ps, PayloadType.SA);
    const tsi = find(ps, PayloadType.TSi);
    const tsr = find(ps, PayloadType.TSr);
    if (!saP || !tsi || !tsr) throw new IkeFailure(Reason.INVALID_SYNTAX, "CHILD SA response lacks SA, TSi or TSr");
    const chosen = saP.proposals[0];
    if (!chosen || saP.proposals.length !== 1 || chosen.spi.length !== 4) throw new IkeFailure(Reason.INVALID_SYNTAX, "CHILD SA response must have exactly one proposal with a 4-octet SPI");
    // The responder must choose from what we offered (§2.7).
    const check = selectProposal([chosen], this.#offered);
    if (!check.chosen) throw new IkeFailure(Reason.NO_PROPOSAL_CHOSEN, `peer chose ESP proposal ${formatProposal(chosen)} which we did not offer`);
    const alg = algorithmsOf(chosen);
    // §2.9: the responder may only narrow.
    const gotI = tsi.selectors.map(fromWire).filter((t): t is Ts => !!t);
    const gotR = tsr.selectors.map(fromWire).filter((t): t is Ts => !!t);
    if (!gotI.length || !gotR.length || !gotI.every((t) => this.#tsi.some((o) => contains(o, t))) || !gotR.every((t) => this.#tsr.some((o) => contains(o, t)))) {
      throw new IkeFailure(Reason.TS_UNACCEPTABLE, `peer answered traffic selectors ${gotI.map(tsToString)} === ${gotR.map(tsToString)} outside what we proposed`);
    }
    const transport = !!findNotify(ps, NotifyType.USE_TRANSPORT_MODE);
    if (this.conn.transport && !transport) throw new IkeFailure(Reason.NO_PROPOSAL_CHOSEN, "peer refused transport mode (check type=transport on both ends)");
    let shared: Buffer | undefined;
    let nonceI = this.sa.ni;
    let nonceR = this.sa.nr;
    if (!this.opts.inIkeAuth) {
      const nr = find(ps, PayloadType.NONCE);
      if (!nr) throw new IkeFailure(Reason.INVALID_SYNTAX, "CREATE_CHILD_SA response without a nonce");
      // In CREATE_CHILD_SA, Ni/Nr are the exchange's nonces; our side is the "initiator" of it.
      nonceI = this.#nonce;
      nonceR = nr.nonce;
      this.peerNonce = nr.nonce;
      if (alg.dh) {
        const ke = find(ps, PayloadType.KE);
        if (!ke || !this.#ke || ke.group !== alg.dh) throw new IkeFailure(Reason.INVALID_KE, `PFS group ${dhName(alg.dh)} chosen but no matching KE payload`);
        shared = this.#ke.computeSharedSecret(ke.data);
      }
    }
    const child = this.child;
    child.spiOut = chosen.spi.readUInt32BE(0);
    child.alg = alg;
    child.dh = alg.dh;
    child.localTs = gotI;
    child.remoteTs = gotR;
    const keys = this.sa.keymat!.childKeys(alg, nonceI, nonceR, shared);
    shared?.fill(0);
    // We are the initiator of this exchange: inbound uses the responder->initiator keys.
    await installChild(this.core, this.sa, child, keys, "initiator", { outbound: true });
    return child;
  }

  peerNonce?: Buffer;
}

function childNotifyFailure(n: NotifyPayload, conn: ConnRuntime, offered: Proposal[]): IkeFailure {
  const name = nameOf(NotifyType, n.notifyType);
  switch (n.notifyType) {
    case NotifyType.NO_PROPOSAL_CHOSEN:
      return new IkeFailure(Reason.NO_PROPOSAL_CHOSEN, `no acceptable transform: peer refused our ESP proposals ${formatProposals(offered)} (NO_PROPOSAL_CHOSEN); compare esp= on both ends`);
    case NotifyType.TS_UNACCEPTABLE:
      return new IkeFailure(Reason.TS_UNACCEPTABLE, `peer knows no connection for ${conn.localTs.map(tsToString).join(",") || "our address"} === ${conn.remoteTs.map(tsToString).join(",") || "its address"} (TS_UNACCEPTABLE); compare leftsubnet/rightsubnet on both ends`);
    case NotifyType.TEMPORARY_FAILURE:
      return new IkeFailure(Reason.TEMPORARY_FAILURE, "peer answered TEMPORARY_FAILURE (busy rekeying); retrying later");
    case NotifyType.INVALID_KE_PAYLOAD:
      return new IkeFailure(Reason.INVALID_KE, `peer wants PFS group ${n.data.length >= 2 ? dhName(n.data.readUInt16BE(0)) : "?"}; compare the DH groups in esp= on both ends`);
    default:
      return new IkeFailure(Reason.PEER_ERROR, `peer answered ${name}`);
  }
}

// ---------------------------------------------------------------- responder --

export interface ChildRespondResult {
  payloads: Payload[];
  child?: ChildSa;
  failure?: IkeFailure;
}

/**
 * Responder half: select an ESP proposal, narrow the traffic selectors (§2.9), allocate an
 * SPI, derive keys and install. On failure returns the notify to answer with.
 * `nonces` are (Ni, Nr) for KEYMAT; for CREATE_CHILD_SA the caller makes Nr and adds it.
 */
export async function respondChild(
  core: EngineCore,
  sa: IkeSa,
  conn: ConnRuntime,
  ps: Payload[],
  opts: { inIkeAuth: boolean; nonces: [Buffer, Buffer]; rekeyOf?: ChildSa },
): Promise<ChildRespondResult> {
  const saP = find(ps, PayloadType.SA);
  const tsiP = find(ps, PayloadType.TSi);
  const tsrP = find(ps, PayloadType.TSr);
  if (!saP || !tsiP || !tsrP) return { payloads: [notify(NotifyType.INVALID_SYNTAX)], failure: new IkeFailure(Reason.INVALID_SYNTAX, "CHILD SA request lacks SA, TSi or TSr") };
  // IKE_AUTH carries no KE: ignore DH transforms on both sides there (§1.2).
  const offered = saP.proposals.map((p) => (opts.inIkeAuth ? { ...p, transforms: p.transforms.filter((t) => t.type !== TransformType.DH) } : p));
  const local = espProposals(conn, 0, !opts.inIkeAuth);
  const sel = selectProposal(offered, local);
  if (!sel.chosen) {
    const msg = `no acceptable transform for CHILD SA of ${conn.name}: offered ${formatProposals(offered)} refused because ${formatSelectionReport(offered, sel)}`;
    core.log.warn({ conn: conn.name, peer: sa.remote.address }, msg);
    return { payloads: [notify(NotifyType.NO_PROPOSAL_CHOSEN)], failure: new IkeFailure(Reason.NO_PROPOSAL_CHOSEN, msg) };
  }
  const chosen = sel.chosen;
  if (chosen.spi.length !== 4) return { payloads: [notify(NotifyType.INVALID_SYNTAX)], failure: new IkeFailure(Reason.INVALID_SYNTAX, "ESP proposal SPI is not 4 octets") };
  const alg = algorithmsOf(chosen);
  let ke: KeyExchange | undefined;
  let shared: Buffer | undefined;
  if (alg.dh && !opts.inIkeAuth) {
    const kei = find(ps, PayloadType.KE);
    if (!kei || kei.group !== alg.dh) {
      const d = Buffer.alloc(2);
      d.writeUInt16BE(alg.dh);
      core.log.info({ conn: conn.name }, `CHILD SA KE group ${kei ? dhName(kei.group) : "none"} does not match the chosen PFS group ${dhName(alg.dh)}: asking for ${dhName(alg.dh)}`);
      return { payloads: [notify(NotifyType.INVALID_KE_PAYLOAD, d)], failure: new IkeFailure(Reason.INVALID_KE, "peer's CHILD SA KE group mismatch") };
    }
    ke = createKeyExchange(alg.dh);
    shared = ke.computeSharedSecret(kei.data);
  }
  const offI = tsiP.selectors.map(fromWire).filter((t): t is Ts => !!t);
  const offR = tsrP.selectors.map(fromWire).filter((t): t is Ts => !!t);
  const tsi = opts.rekeyOf ? opts.rekeyOf.remoteTs.filter((t) => offI.some((o) => contains(o, t))) : narrow(offI, configuredTs(conn, "remote", sa));
  const tsr = opts.rekeyOf ? opts.rekeyOf.localTs.filter((t) => offR.some((o) => contains(o, t))) : narrow(offR, configuredTs(conn, "local", sa));
  if (!tsi.length || !tsr.length) {
    const msg = `no connection is known for ${offI.map(tsToString).join(",")} === ${offR.map(tsToString).join(",")} (conn ${conn.name} allows ${configuredTs(conn, "remote", sa).map(tsToString).join(",")} === ${configuredTs(conn, "local", sa).map(tsToString).join(",")})`;
    core.log.warn({ conn: conn.name, peer: sa.remote.address }, msg);
    return { payloads: [notify(NotifyType.TS_UNACCEPTABLE)], failure: new IkeFailure(Reason.TS_UNACCEPTABLE, msg) };
  }
  const transport = !!findNotify(ps, NotifyType.USE_TRANSPORT_MODE) && conn.transport;
  const child = new ChildSa(core.newChildId(), conn, transport ? "transport" : "tunnel");
  child.replaces = opts.rekeyOf;
  child.spiIn = await core.dp.allocateSpi({ src: sa.remote.address, dst: sa.local.address, reqid: conn.reqid });
  child.spiOut = chosen.spi.readUInt32BE(0);
  child.alg = alg;
  child.dh = alg.dh;
  child.localTs = tsr;
  child.remoteTs = tsi;
  const keys = sa.keymat!.childKeys(alg, opts.nonces[0], opts.nonces[1], shared);
  shared?.fill(0);
  // Make-before-break (§2.8): the responder of a rekey installs the new outbound SA only
  // when the initiator deletes the old one; until then both keep sending on the old SA.
  await installChild(core, sa, child, keys, "responder", { outbound: !opts.rekeyOf });
  const out: Payload[] = [];
  if (transport) out.push(notify(NotifyType.USE_TRANSPORT_MODE));
  out.push({ type: PayloadType.SA, proposals: [{ ...chosen, spi: spiBuf(child.spiIn) }] } as SaPayload);
  if (!opts.inIkeAuth) {
    out.push({ type: PayloadType.NONCE, nonce: opts.nonces[1] });
    if (ke) out.push({ type: PayloadType.KE, group: alg.dh, data: ke.publicValue } as KePayload);
  }
  out.push({ type: PayloadType.TSi, selectors: tsi.map(toWire) } as TsPayload, { type: PayloadType.TSr, selectors: tsr.map(toWire) } as TsPayload);
  return { payloads: out, child };
}

// ---------------------------------------------------------------- dataplane --

function useEncap(sa: IkeSa): boolean {
  return sa.natT && (sa.natLocal || sa.natRemote || !!sa.conn?.def.forceEncap || sa.remote.port !== 500);
}

/**
 * Installs a CHILD SA: inbound SA, outbound SA (now or later), and policies.
 * `role` is our role in the exchange that created it (KEYMAT direction, §2.17).
 */
export async function installChild(core: EngineCore, sa: IkeSa, child: ChildSa, keys: ChildSaKeys, role: "initiator" | "responder", opts: { outbound: boolean }): Promise<void> {
  const conn = child.conn;
  const alg = child.alg!;
  child.encap = useEncap(sa);
  const inKeys = role === "initiator" ? { e: keys.encrR, i: keys.integR } : { e: keys.encrI, i: keys.integI };
  const outKeys = role === "initiator" ? { e: keys.encrI, i: keys.integI } : { e: keys.encrR, i: keys.integR };
  const life = (): dataplane.Lifetime => ({
    softBytes: conn.def.childLifetimeBytes ? (conn.def.childLifetimeBytes * 9n) / 10n : 0n,
    hardBytes: conn.def.childLifetimeBytes,
    softPackets: conn.def.childLifetimePackets ? (conn.def.childLifetimePackets * 9n) / 10n : 0n,
    hardPackets: conn.def.childLifetimePackets,
    softAddSeconds: 0n,
    hardAddSeconds: BigInt(conn.childLifetime + 30),
  });
  const mode = child.mode === "transport" ? dataplane.Mode.MODE_TRANSPORT : dataplane.Mode.MODE_TUNNEL;
  const sel = (src: Ts[], dst: Ts[]): dataplane.Selector => toSelectors(src[0]!, dst[0]!)[0]!;
  const base = {
    mode,
    reqid: conn.reqid,
    encryption: ENCR[alg.encr] ?? dataplane.Encryption.ENCRYPTION_UNSPECIFIED,
    integrity: INTEG[alg.integ] ?? dataplane.Integrity.INTEGRITY_NONE,
    replayWindow: conn.replayWindow,
    esn: alg.esn,
    mark: conn.def.mark,
    ifId: 0,
    connection: conn.name,
    childId: BigInt(child.id),
  };
  const inbound: dataplane.SecurityAssociation = {
    ...base,
    id: { dst: sa.local.address, spi: child.spiIn, protocol: 50 },
    src: sa.remote.address,
    encryptionKey: inKeys.e,
    integrityKey: inKeys.i,
    encap: child.encap ? { srcPort: sa.remote.port, dstPort: sa.local.port } : undefined,
    lifetime: life(),
    direction: dataplane.Direction.DIRECTION_IN,
    selector: sel(child.remoteTs, child.localTs),
  };
  const outbound: dataplane.SecurityAssociation = {
    ...base,
    id: { dst: sa.remote.address, spi: child.spiOut, protocol: 50 },
    src: sa.local.address,
    encryptionKey: outKeys.e,
    integrityKey: outKeys.i,
    encap: child.encap ? { srcPort: sa.local.port, dstPort: sa.remote.port } : undefined,
    lifetime: life(),
    direction: dataplane.Direction.DIRECTION_OUT,
    selector: sel(child.localTs, child.remoteTs),
  };
  const addOut = async (): Promise<void> => {
    if (child.outboundInstalled || child.removed) return;
    // Marked before the call: a call that times out may still be carried out, and removing
    // the CHILD SA must then delete it ("not found" on delete is success).
    child.outboundInstalled = true;
    await core.dp.addSa(outbound);
    outKeys.e.fill(0);
    outKeys.i.fill(0);
  };
  try {
    await core.dp.addSa(inbound);
    if (opts.outbound) await addOut();
    else child.pendingOutbound = addOut;
    await installPolicies(core, sa, child);
  } catch (err) {
    await rollBackChild(core, sa, child);
    throw err;
  } finally {
    inKeys.e.fill(0);
    inKeys.i.fill(0);
  }
  child.state = "installed";
  child.installedAt = new Date();
}

/**
 * A CHILD SA whose installation failed part-way (typically a dataplane call that timed out
 * under load, which the dataplane may still carry out): take out everything it may have put
 * in the dataplane, so no stale SA or policy reference outlives it. The caller reports the
 * failure; an initiator also tells the peer (deleteFailedChild).
 */
async function rollBackChild(core: EngineCore, sa: IkeSa, child: ChildSa): Promise<void> {
  child.pendingOutbound = undefined;
  try {
    await uninstallChild(core, sa, child, core.isRouted(child.conn.name));
  } catch (err) {
    core.log.warn({ conn: child.conn.name, child: child.id, err: (err as Error).message }, "removing a CHILD SA whose installation failed also failed; the dataplane's reconcile will prune it");
  }
  child.state = "destroyed";
}

/**
 * Our end could not install a CHILD SA the peer has created (its response carried an SA):
 * delete it at the peer (§1.4.1) so the peer does not keep a half with no partner here. The
 * retry, if any, makes a new one.
 */
export function deleteFailedChild(core: EngineCore, sa: IkeSa, child: ChildSa, err: unknown): void {
  if (err instanceof IkeFailure || !child.spiIn || !child.spiOut || child.state !== "destroyed" || sa.state === "destroyed") return;
  sa.tm.queue(new ChildDelete(core, child, "its installation here failed"), true);
}

/** Policies out (local -> remote), in and fwd (remote -> local; fwd only in tunnel mode), action PROTECT. */
async function installPolicies(core: EngineCore, sa: IkeSa, child: ChildSa): Promise<void> {
  // Owned by the connection, referenced by this CHILD SA (policies.ts): a superseded CHILD SA's removal never takes them away.
  await core.policies.acquire(child.id, policiesFor(child.conn, child.localTs, child.remoteTs, sa.local.address, sa.remote.address, child.mode, dataplane.PolicyAction.POLICY_ACTION_PROTECT));
}

export function policiesFor(conn: ConnRuntime, localTs: Ts[], remoteTs: Ts[], localAddr: string, remoteAddr: string, mode: "tunnel" | "transport", action: dataplane.PolicyAction, outOnly = false): dataplane.Policy[] {
  const out: dataplane.Policy[] = [];
  const m = mode === "transport" ? dataplane.Mode.MODE_TRANSPORT : dataplane.Mode.MODE_TUNNEL;
  const tmpl = (src: string, dst: string): dataplane.PolicyTemplate => ({ src: mode === "tunnel" ? src : "", dst: mode === "tunnel" ? dst : "", mode: m, reqid: conn.reqid, protocol: 50 });
  for (const l of localTs) {
    for (const r of remoteTs) {
      if (l.v6 !== r.v6) continue;
      for (const s of toSelectors(l, r)) out.push({ selector: s, direction: dataplane.Direction.DIRECTION_OUT, action, priority: 0, template: tmpl(localAddr, remoteAddr), mark: conn.def.mark, ifId: 0, connection: conn.name });
      if (outOnly) continue;
      for (const s of toSelectors(r, l)) {
        out.push({ selector: s, direction: dataplane.Direction.DIRECTION_IN, action, priority: 0, template: tmpl(remoteAddr, localAddr), mark: conn.def.mark, ifId: 0, connection: conn.name });
        if (mode === "tunnel") out.push({ selector: s, direction: dataplane.Direction.DIRECTION_FWD, action, priority: 0, template: tmpl(remoteAddr, localAddr), mark: conn.def.mark, ifId: 0, connection: conn.name });
      }
    }
  }
  return out;
}

/**
 * Removes a CHILD SA's SAs and drops its references on the connection's policies: they stay
 * while another CHILD SA of the connection holds them (a rekey, a duplicate IKE SA);
 * otherwise they are removed, or turned back into trap policies when the connection is routed.
 */
export async function uninstallChild(core: EngineCore, sa: IkeSa, child: ChildSa, routed: boolean, opts: { inboundDelayMs?: number } = {}): Promise<void> {
  if (child.removed) return;
  child.removed = true;
  try {
    if (child.outboundInstalled) await core.dp.deleteSa({ dst: sa.remote.address, spi: child.spiOut, protocol: 50 }, sa.local.address);
    const inbound = { dst: sa.local.address, spi: child.spiIn, protocol: 50 };
    if (opts.inboundDelayMs) {
      // A rekeyed SA's inbound half outlives the delete exchange a little: packets the peer
      // sealed with it just before switching may still be on their way (strongSwan's
      // delete_rekeyed_delay). Nothing is sent on it any more.
      const t = setTimeout(() => void core.dp.deleteSa(inbound, sa.remote.address).catch((err) => core.log.warn({ err: (err as Error).message, spi: child.spiIn }, "removing a rekeyed inbound SA failed")), opts.inboundDelayMs);
      t.unref?.();
    } else await core.dp.deleteSa(inbound, sa.remote.address);
  } finally {
    if (child.localTs.length) {
      const pols = policiesFor(child.conn, child.localTs, child.remoteTs, sa.local.address, sa.remote.address, child.mode, dataplane.PolicyAction.POLICY_ACTION_PROTECT);
      await core.policies.release(child.id, pols, routed ? (p) => (p.direction === dataplane.Direction.DIRECTION_OUT ? { ...p, action: dataplane.PolicyAction.POLICY_ACTION_TRAP } : undefined) : undefined);
    }
  }
}
