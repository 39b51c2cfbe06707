/**
 * ike_init (with ike_natd): the IKE_SA_INIT exchange, RFC 7296 §1.2, §2.6 (COOKIE),
 * §1.3 / §3.10.1 (INVALID_KE_PAYLOAD retry), §2.23 (NAT detection).
 *
 *   Initiator                         Responder
 *   HDR, SA, KEi, Ni, N(NAT_D_S), N(NAT_D_D) -->
 *                    <-- HDR, SA, KEr, Nr, N(NAT_D_S), N(NAT_D_D), [CERTREQ]
 * or                 <-- HDR, N(COOKIE)            : again with N(COOKIE) first
 * or                 <-- HDR, N(INVALID_KE_PAYLOAD) : again with KEi of the group asked for
 */
import { randomBytes } from "node:crypto";
import { createKeyExchange } from "../../crypto/dh.js";
import { randomPublic } from "../../crypto/random.js";
import { LOCAL_SIGNATURE_HASHES, certReqHash, decodeSignatureHashAlgorithms, encodeSignatureHashAlgorithms } from "../../crypto/auth.js";
import { algorithmsOf, formatProposal, formatProposals, formatSelectionReport, selectProposal } from "../../proposal.js";
import { fleet } from "@fleetswan/proto";
import {
  CertEncoding,
  encodeMessage,
  ExchangeType,
  NotifyType,
  PayloadType,
  TransformType,
  nameOf,
  type DecodedMessage,
  type KePayload,
  type NotifyPayload,
  type Payload,
  type Proposal,
  type SaPayload,
} from "../../wire/index.js";
import { find, findNotify, errorNotify, dhName } from "../child.js";
import type { ConnRuntime } from "../conn.js";
import type { EngineCore } from "../context.js";
import { IkeFailure, Reason } from "../failure.js";
import { Keymat, natdHash } from "../keymat.js";
import type { IkeSa } from "../sa.js";
import { notify, summarize, type Task } from "../task-manager.js";
import { IkeAuth } from "./ike-auth.js";
import type { Ts } from "../ts.js";

const ZERO_SPI = Buffer.alloc(8);

/** N(NAT_DETECTION_SOURCE_IP), N(NAT_DETECTION_DESTINATION_IP) (§2.23). With forced encapsulation the source hash is random, so the peer sees a "NAT" and both ends use UDP 4500 (as strongSwan's encap=yes does). */
export function natdPayloads(sa: IkeSa, spiR: Buffer, force: boolean): Payload[] {
  const src = force ? randomBytes(20) : natdHash(sa.spiI, spiR, sa.local.address, sa.local.port);
  const dst = natdHash(sa.spiI, spiR, sa.remote.address, sa.remote.port);
  return [notify(NotifyType.NAT_DETECTION_SOURCE_IP, src), notify(NotifyType.NAT_DETECTION_DESTINATION_IP, dst)];
}

/** Evaluates the peer's NAT-D notifies (§2.23); true if it sent any. */
export function processNatd(sa: IkeSa, ps: Payload[], spiR: Buffer): boolean {
  const srcs = ps.filter((p): p is NotifyPayload => p.type === PayloadType.NOTIFY && (p as NotifyPayload).notifyType === NotifyType.NAT_DETECTION_SOURCE_IP);
  const dst = findNotify(ps, NotifyType.NAT_DETECTION_DESTINATION_IP);
  if (!srcs.length || !dst) return false;
  const peerHash = natdHash(sa.spiI, spiR, sa.remote.address, sa.remote.port);
  sa.natRemote = !srcs.some((s) => s.data.equals(peerHash));
  sa.natLocal = !dst.data.equals(natdHash(sa.spiI, spiR, sa.local.address, sa.local.port));
  return true;
}

/** The DH group to send first: the first proposal's first group. */
function firstGroup(ps: Proposal[]): number {
  return ps[0]?.transforms.find((t) => t.type === TransformType.DH)?.id ?? 0;
}

/** Initiator of IKE_SA_INIT. On success it queues ike_auth. */
export class IkeInit implements Task {
  readonly type = "ike_init" as const;
  readonly exchange = ExchangeType.IKE_SA_INIT;
  #cookie?: Buffer;
  #group: number;
  #retries = 0;

  constructor(
    private readonly core: EngineCore,
    private readonly conn: ConnRuntime,
    private readonly trigger?: { src: Ts; dst: Ts },
  ) {
    this.#group = firstGroup(conn.ikeProposals);
  }

  async build(sa: IkeSa): Promise<Payload[]> {
    if (sa.ni.length === 0) sa.ni = randomBytes(32);
    if (!sa.ke || sa.ke.group !== this.#group) sa.ke = createKeyExchange(this.#group);
    const out: Payload[] = [];
    // §2.6: the COOKIE notify goes first, everything else unchanged.
    if (this.#cookie) out.push(notify(NotifyType.COOKIE, this.#cookie));
    out.push({ type: PayloadType.SA, proposals: this.conn.ikeProposals } as SaPayload);
    out.push({ type: PayloadType.KE, group: this.#group, data: sa.ke.publicValue } as KePayload);
    out.push({ type: PayloadType.NONCE, nonce: sa.ni });
    out.push(...natdPayloads(sa, ZERO_SPI, this.conn.def.forceEncap));
    out.push(notify(NotifyType.SIGNATURE_HASH_ALGORITHMS, encodeSignatureHashAlgorithms(LOCAL_SIGNATURE_HASHES)));
    out.push(notify(NotifyType.IKEV2_FRAGMENTATION_SUPPORTED)); // RFC 7383 §2.3
    // The request as sent is RealMessage1 of the initiator's AUTH (§2.15).
    sa.initRequest = encodeMessage({ spiI: sa.spiI, spiR: ZERO_SPI, exchangeType: this.exchange, messageId: 0, initiator: true, response: false }, out);
    return out;
  }

  async process(sa: IkeSa, ps: Payload[], msg: DecodedMessage): Promise<"done" | "retry"> {
    const cookie = findNotify(ps, NotifyType.COOKIE);
    if (cookie) {
      if (++this.#retries > 3) throw new IkeFailure(Reason.TEMPORARY_FAILURE, "peer keeps asking for a COOKIE");
      this.core.log.info({ conn: this.conn.name, peer: sa.remote.address }, "peer asked for a COOKIE (it is under load): retrying IKE_SA_INIT with it");
      this.#cookie = cookie.data;
      return "retry";
    }
    const invalidKe = findNotify(ps, NotifyType.INVALID_KE_PAYLOAD);
    if (invalidKe) {
      const group = invalidKe.data.length >= 2 ? invalidKe.data.readUInt16BE(0) : 0;
      const offered = this.conn.ikeProposals.some((p) => p.transforms.some((t) => t.type === TransformType.DH && t.id === group));
      if (!offered || group === this.#group || ++this.#retries > 3) {
        throw new IkeFailure(Reason.INVALID_KE, `peer asked for DH group ${dhName(group)}, which we do not offer (${formatProposals(this.conn.ikeProposals)}); compare ike= on both ends`);
      }
      this.core.log.info({ conn: this.conn.name }, `peer prefers DH group ${dhName(group)}: retrying IKE_SA_INIT with it`);
      this.#group = group;
      return "retry";
    }
    const err = errorNotify(ps);
    if (err) {
      if (err.notifyType === NotifyType.NO_PROPOSAL_CHOSEN) {
        throw new IkeFailure(Reason.NO_PROPOSAL_CHOSEN, `no acceptable transform: peer ${sa.remote.address} refused our IKE proposals ${formatProposals(this.conn.ikeProposals)} (NO_PROPOSAL_CHOSEN); compare ike= on both ends, or the peer has no connection for our address`);
      }
      throw new IkeFailure(Reason.PEER_ERROR, `peer answered IKE_SA_INIT with ${nameOf(NotifyType, err.notifyType)}`);
    }
    const saP = find(ps, PayloadType.SA);
    const ke = find(ps, PayloadType.KE);
    const nr = find(ps, PayloadType.NONCE);
    if (!saP || !ke || !nr) throw new IkeFailure(Reason.INVALID_SYNTAX, `IKE_SA_INIT response lacks SA, KE or Nr (got ${summarize(ps)})`);
    const chosen = saP.proposals[0];
    if (!chosen || saP.proposals.length !== 1) throw new IkeFailure(Reason.INVALID_SYNTAX, "IKE_SA_INIT response must carry exactly one proposal");
    const check = selectProposal([chosen], this.conn.ikeProposals);
    if (!check.chosen) throw new IkeFailure(Reason.NO_PROPOSAL_CHOSEN, `peer chose ${formatProposal(chosen)}, which we did not offer`);
    const alg = algorithmsOf(chosen);
    if (ke.group !== alg.dh || ke.group !== sa.ke!.group) throw new IkeFailure(Reason.INVALID_KE, `peer's KE group ${dhName(ke.group)} does not match the chosen ${dhName(alg.dh)}`);
    sa.spiR = Buffer.from(msg.header.spiR);
    sa.nr = Buffer.from(nr.nonce);
    sa.initResponse = msg.raw;
    sa.alg = alg;
    const shared = sa.ke!.computeSharedSecret(ke.data);
    sa.keymat = Keymat.initial(alg, shared, sa.ni, sa.nr, sa.spiI, sa.spiR, true);
    shared.fill(0);
    sa.ke = undefined;
    const sig = findNotify(ps, NotifyType.SIGNATURE_HASH_ALGORITHMS);
    if (sig) sa.peerHashes = decodeSignatureHashAlgorithms(sig.data);
    // RFC 7383 §2.3: both ends announced it: IKE_AUTH and later may be fragmented.
    sa.tm.fragmentation = !!findNotify(ps, NotifyType.IKEV2_FRAGMENTATION_SUPPORTED);
    const natd = processNatd(sa, ps, sa.spiR);
    // §2.23: with a NAT (or forced encapsulation) move to UDP 4500 from IKE_AUTH on.
    if (natd && (sa.natLocal || sa.natRemote || this.conn.def.forceEncap)) {
      sa.natT = true;
      sa.local = { ...sa.local, port: 4500 };
      if (sa.remote.port === 500) sa.remote = { ...sa.remote, port: 4500 };
    }
    this.core.log.info({ conn: this.conn.name, peer: sa.remote.address, natLocal: sa.natLocal, natRemote: sa.natRemote },
      `IKE_SA_INIT done with ${sa.remote.address}: ${formatProposal(chosen)}${sa.natLocal ? ", local host is behind NAT" : ""}${sa.natRemote ? ", remote host is behind NAT" : ""}`);
    sa.tm.queue(new IkeAuth(this.core, this.conn, this.trigger), true);
    return "done";
  }

  async failed(sa: IkeSa, err: IkeFailure): Promise<void> {
    this.core.failed(sa, this.conn, err);
    await this.core.destroyIkeSa(sa, err);
  }
}

/**
 * Result of the synchronous part of the responder's IKE_SA_INIT: a stateless reply, nothing,
 * or a new half-open IKE SA whose response follows once its keys are computed.
 */
export type InitResponse = { kind: "reply"; packet: Buffer } | { kind: "sa"; sa: IkeSa; response: Promise<InitKeyed> } | { kind: "drop" };
/** The response to send: the IKE_SA_INIT response, or (ok false: the SA goes) INVALID_SYNTAX for bad KE data. */
export type InitKeyed = { ok: boolean; packet: Buffer };

/**
 * Responder of IKE_SA_INIT: connection candidates by address (the first narrowing step,
 * "no connection has been authorized" when none), cookie check, proposal selection
 * ("no acceptable transform"), KE group check, then a new half-open IKE SA.
 */
export function respondIkeInit(core: EngineCore & { cookieRequired(): boolean }, local: { address: string; port: number }, remote: { address: string; port: number }, msg: DecodedMessage): InitResponse {
  const ps = msg.payloads;
  const h = msg.header;
  const replyPacket = (payloads: Payload[]): Buffer => encodeMessage({ spiI: h.spiI, spiR: ZERO_SPI, exchangeType: ExchangeType.IKE_SA_INIT, messageId: 0, initiator: false, response: true }, payloads);
  const reply = (payloads: Payload[]): InitResponse => ({ kind: "reply", packet: replyPacket(payloads) });
  const saP = find(ps, PayloadType.SA);
  const ke = find(ps, PayloadType.KE);
  const ni = find(ps, PayloadType.NONCE);
  if (!saP || !ke || !ni) {
    core.log.info({ peer: remote.address }, `dropping IKE_SA_INIT without SA, KE or Ni (got ${summarize(ps)})`);
    return { kind: "drop" };
  }
  // 1. Address: which connections may this peer use?
  const candidates = selectByAddress(core.connections(), local.address, remote.address);
  if (!candidates.length) {
    const msgText = `no connection has been authorized for ${remote.address} (to ${local.address}): no connection lists it as remote address or %any; check right=/remote.addresses`;
    core.log.warn({ peer: remote.address }, msgText);
    core.failed(undefined, undefined, new IkeFailure(Reason.NO_CONNECTION_AUTHORIZED, msgText));
    return reply([notify(NotifyType.NO_PROPOSAL_CHOSEN)]);
  }
  // 2. Cookie (§2.6), only when under load.
  if (core.cookieRequired()) {
    const c = findNotify(ps, NotifyType.COOKIE);
    if (!c || !core.cookies.verify(c.data, ni.nonce, remote.address, h.spiI)) {
      return reply([notify(NotifyType.COOKIE, core.cookies.make(ni.nonce, remote.address, h.spiI))]);
    }
  }
  // 3. Proposal: the first candidate whose proposals match.
  let sel: ReturnType<typeof selectProposal> | undefined;
  let matching = candidates.filter((c) => selectProposal(saP.proposals, c.ikeProposals).chosen);
  if (!matching.length) {
    sel = selectProposal(saP.proposals, candidates[0]!.ikeProposals);
    const msgText = `no acceptable transform: ${remote.address} offered ${formatProposals(saP.proposals)}, refused because ${formatSelectionReport(saP.proposals, sel)}`;
    core.log.warn({ peer: remote.address, conn: candidates[0]!.name }, msgText);
    core.failed(undefined, candidates[0], new IkeFailure(Reason.NO_PROPOSAL_CHOSEN, msgText));
    return reply([notify(NotifyType.NO_PROPOSAL_CHOSEN)]);
  }
  sel = selectProposal(saP.proposals, matching[0]!.ikeProposals);
  const chosen = sel.chosen!;
  const alg = algorithmsOf(chosen);
  // Keep only candidates that accept the same proposal (the IKE SA is bound to it).
  matching = matching.filter((c) => selectProposal([chosen], c.ikeProposals).chosen);
  // 4. KE group (§1.3: INVALID_KE_PAYLOAD names the group we want).
  if (ke.group !== alg.dh) {
    const d = Buffer.alloc(2);
    d.writeUInt16BE(alg.dh);
    core.log.info({ peer: remote.address }, `peer's KE group ${dhName(ke.group)} is not the chosen ${dhName(alg.dh)}: answering INVALID_KE_PAYLOAD`);
    return reply([notify(NotifyType.INVALID_KE_PAYLOAD, d)]);
  }
  // 5. A new half-open IKE SA. Its keys come from the key exchange runner (crypto worker
  // threads in the daemon): KEr, g^ir (the initiator's KE data validated, RFC 6989) and the
  // IKE SA keys (§2.14); the response is built when they are there.
  // SPIi in a buffer of its own (not a slice of the shared pool: it lives as long as the SA)
  const spiI = Buffer.allocUnsafeSlow(8);
  h.spiI.copy(spiI);
  const sa = core.createIkeSa(false, spiI, { ...local }, { ...remote });
  sa.spiR = core.newSpi();
  sa.candidates = matching;
  sa.conn = matching[0];
  sa.alg = alg;
  sa.ni = Buffer.from(ni.nonce);
  sa.nr = randomPublic(32);
  sa.initRequest = msg.raw;
  const keyed = core.keyExchange.responder({ group: alg.dh, peerPublic: ke.data, ni: sa.ni, nr: sa.nr, spiI: sa.spiI, spiR: sa.spiR, alg });
  const response = keyed.then((k): InitKeyed => {
    if (!k.ok) {
      core.log.info({ peer: remote.address, err: k.invalid }, "invalid KE public value");
      return { ok: false, packet: replyPacket([notify(NotifyType.INVALID_SYNTAX)]) };
    }
    sa.keymat = Keymat.fromKeys(alg, k.keys, false);
    return { ok: true, packet: buildInitResponse(core, sa, ps, chosen, matching, k.publicValue) };
  });
  return { kind: "sa", sa, response };
}

/** The responder's IKE_SA_INIT response (§1.2: SA, KEr, Nr, NAT-D §2.23, [CERTREQ], RFC 7427 §4, RFC 7383 §2.3), accounted as message 0. */
function buildInitResponse(core: EngineCore, sa: IkeSa, ps: Payload[], chosen: Proposal, matching: ConnRuntime[], kePublic: Buffer): Buffer {
  const sig = findNotify(ps, NotifyType.SIGNATURE_HASH_ALGORITHMS);
  if (sig) sa.peerHashes = decodeSignatureHashAlgorithms(sig.data);
  const natd = processNatd(sa, ps, ZERO_SPI);
  const force = matching.some((c) => c.def.forceEncap);
  if (natd && (sa.natLocal || sa.natRemote || force)) sa.natT = true;
  const out: Payload[] = [
    { type: PayloadType.SA, proposals: [chosen] } as SaPayload,
    { type: PayloadType.KE, group: sa.alg!.dh, data: kePublic } as KePayload,
    { type: PayloadType.NONCE, nonce: sa.nr },
  ];
  if (natd) out.push(...natdPayloads(sa, sa.spiR, force));
  const wantsCert = matching.some((c) => c.remoteAuth === fleet.AuthMethod.AUTH_METHOD_PUBKEY && c.remoteCas.length);
  if (wantsCert) {
    const hashes = matching.flatMap((c) => c.remoteCas.map((ca) => certReqHash(ca.publicKey.export({ type: "spki", format: "der" }))));
    out.push({ type: PayloadType.CERTREQ, encoding: CertEncoding.X509_SIGNATURE, data: Buffer.concat(hashes) });
  }
  if (sig) out.push(notify(NotifyType.SIGNATURE_HASH_ALGORITHMS, encodeSignatureHashAlgorithms(LOCAL_SIGNATURE_HASHES)));
  // RFC 7383 §2.3: answer the initiator's IKEV2_FRAGMENTATION_SUPPORTED with ours.
  if (findNotify(ps, NotifyType.IKEV2_FRAGMENTATION_SUPPORTED)) {
    out.push(notify(NotifyType.IKEV2_FRAGMENTATION_SUPPORTED));
    sa.tm.fragmentation = true;
  }
  const packet = encodeMessage({ spiI: sa.spiI, spiR: sa.spiR, exchangeType: ExchangeType.IKE_SA_INIT, messageId: 0, initiator: false, response: true }, out);
  sa.initResponse = packet;
  sa.tm.initResponded(packet);
  // debug, not info: per handshake, and the ike_up event says the same once the SA is up
  if (core.log.isLevelEnabled("debug")) core.log.debug({ peer: sa.remote.address, conn: sa.conn!.name, candidates: matching.map((c) => c.name) }, `IKE_SA_INIT from ${sa.remote.address}: ${formatProposal(chosen)}${sa.natLocal ? ", local host is behind NAT" : ""}${sa.natRemote ? ", remote host is behind NAT" : ""}`);
  return packet;
}

/**
 * First narrowing step (address): connections whose remote addresses contain the peer's
 * (exact first) or %any, and whose local addresses contain ours (or are empty).
 */
export function selectByAddress(conns: ConnRuntime[], local: string, remote: string): ConnRuntime[] {
  const ok = conns.filter((c) => (c.localAddrs.length === 0 || c.localAddrs.includes(local)) && (c.remoteAddrs.includes(remote) || c.remoteAddrs.includes("%any")));
  const exact = ok.filter((c) => c.remoteAddrs.includes(remote));
  return [...exact, ...ok.filter((c) => !exact.includes(c))];
}
