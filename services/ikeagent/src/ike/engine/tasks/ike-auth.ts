/**
 * ike_auth (with ike_cert_pre/post and the first child_create): the IKE_AUTH exchange,
 * RFC 7296 §1.2, §2.15 (AUTH), RFC 7427 (signatures), §2.4 (INITIAL_CONTACT).
 *
 *   HDR, SK {IDi, [CERT,] [CERTREQ,] [IDr,] AUTH, [N(INITIAL_CONTACT),] SA, TSi, TSr} -->
 *                                     <-- HDR, SK {IDr, [CERT,] AUTH, SA, TSi, TSr}
 *
 * The responder narrows its connection choice by identity ("no suitable connection"),
 * then by traffic selectors (the most specific connection wins).
 */
import { X509Certificate, createPrivateKey } from "node:crypto";
import { fleet } from "@fleetswan/proto";
import { defaultSchemeFor, signAuthData, verifyPskAuth, verifySignatureAuthData, certReqHash } from "../../crypto/auth.js";
import { AuthMethod, CertEncoding, ExchangeType, IdType, NotifyType, PayloadType, idPayloadBody, nameOf, type AuthPayload, type IdPayload, type Payload } from "../../wire/index.js";
import { ChildInitiator, configuredTs, deleteFailedChild, errorNotify, find, findNotify, respondChild } from "../child.js";
import { identityMatches, identityText, parseIdentity, type ConnRuntime, type Identity } from "../conn.js";
import type { EngineCore } from "../context.js";
import { IkeFailure, Reason } from "../failure.js";
import type { IkeSa } from "../sa.js";
import { ChildCreate } from "./child-create.js";
import { notify, type Response, type Task } from "../task-manager.js";
import { fromWire, narrow, tsSize, type Ts } from "../ts.js";

/** Our identity on this SA (configured, or our address). */
function localIdentity(conn: ConnRuntime, sa: IkeSa): Identity {
  return conn.localId ?? parseIdentity(sa.local.address);
}

function idPayload(type: typeof PayloadType.IDi | typeof PayloadType.IDr, id: Identity): IdPayload {
  return { type, idType: id.type, data: id.data };
}

/** Builds our AUTH (and CERT payloads) over `octets`. */
function buildAuth(conn: ConnRuntime, sa: IkeSa, octets: Buffer): Payload[] {
  const secret = conn.secret;
  if (!secret) throw new IkeFailure(Reason.NO_SECRET, `connection ${conn.name} has no secret (secret_ref "${conn.def.secretRef}" not found)`);
  if (conn.localAuth === fleet.AuthMethod.AUTH_METHOD_PUBKEY) {
    if (secret.kind !== "private-key") throw new IkeFailure(Reason.NO_SECRET, `connection ${conn.name} authenticates with a certificate but its secret is a PSK`);
    const key = createPrivateKey(secret.current.reveal().toString("utf8"));
    const data = signAuthData(defaultSchemeFor(key), key, octets);
    const certs: Payload[] = conn.certChain.map((der) => ({ type: PayloadType.CERT, encoding: CertEncoding.X509_SIGNATURE, data: der }));
    return [...certs, { type: PayloadType.AUTH, method: AuthMethod.DIGITAL_SIGNATURE, data } as AuthPayload];
  }
  if (secret.kind !== "psk") throw new IkeFailure(Reason.NO_SECRET, `connection ${conn.name} uses a PSK but its secret is a private key`);
  return [{ type: PayloadType.AUTH, method: AuthMethod.SHARED_KEY_MIC, data: sa.keymat!.pskAuth(secret.current.reveal(), octets) } as AuthPayload];
}

/** Verifies the peer's AUTH (and certificate chain) with the connection's settings. Throws IkeFailure. */
function verifyAuth(conn: ConnRuntime, sa: IkeSa, ps: Payload[], idP: IdPayload, octets: Buffer): void {
  const auth = find(ps, PayloadType.AUTH);
  if (!auth) throw new IkeFailure(Reason.INVALID_SYNTAX, "IKE_AUTH without AUTH payload");
  const who = identityText(idP.idType, idP.data);
  if (conn.remoteAuth === fleet.AuthMethod.AUTH_METHOD_PUBKEY) {
    if (auth.method !== AuthMethod.DIGITAL_SIGNATURE) {
      throw new IkeFailure(Reason.AUTH_FAILED, `peer '${who}' used auth method ${nameOf(AuthMethod, auth.method)}, connection ${conn.name} expects a digital signature (RFC 7427)`);
    }
    const certs = ps.filter((p): p is Extract<Payload, { type: 37 }> => p.type === PayloadType.CERT && (p as { encoding: number }).encoding === CertEncoding.X509_SIGNATURE).map((p) => p.data);
    const leaf = verifyChain(conn, certs, idP);
    try {
      verifySignatureAuthData(auth.data, leaf.publicKey, octets);
    } catch (err) {
      throw new IkeFailure(Reason.AUTH_FAILED, `signature of peer '${who}' does not verify: ${(err as Error).message}`);
    }
    return;
  }
  if (auth.method !== AuthMethod.SHARED_KEY_MIC) {
    throw new IkeFailure(Reason.AUTH_FAILED, `peer '${who}' used auth method ${nameOf(AuthMethod, auth.method)}, connection ${conn.name} expects a pre-shared key`);
  }
  const secret = conn.secret;
  if (!secret || secret.kind !== "psk") throw new IkeFailure(Reason.NO_SECRET, `connection ${conn.name} has no PSK (secret_ref "${conn.def.secretRef}")`);
  const prfId = sa.alg!.prf;
  if (verifyPskAuth(prfId, secret.current.reveal(), octets, auth.data)) return;
  // During a rotation window the previous PSK is still accepted.
  if (secret.previous && (!secret.previousValidUntil || secret.previousValidUntil.getTime() > Date.now()) && verifyPskAuth(prfId, secret.previous.reveal(), octets, auth.data)) return;
  throw new IkeFailure(Reason.AUTH_FAILED, `authentication of peer '${who}' with pre-shared key failed (connection ${conn.name}): the PSKs differ; check ipsec.secrets / secret_ref on both ends`);
}

/**
 * Validates the peer's certificate chain against the connection's CAs (RFC 5280 path,
 * simplified: signatures, validity, CA flag) and matches its identity to the leaf's SAN
 * (or subject DN for DN identities). Returns the leaf.
 */
export function verifyChain(conn: ConnRuntime, certsDer: Buffer[], idP: IdPayload): X509Certificate {
  const who = identityText(idP.idType, idP.data);
  if (!certsDer.length) throw new IkeFailure(Reason.CERT_INVALID, `peer '${who}' sent no certificate`);
  let certs: X509Certificate[];
  try {
    certs = certsDer.map((d) => new X509Certificate(d));
  } catch (err) {
    throw new IkeFailure(Reason.CERT_INVALID, `peer '${who}' sent an unparsable certificate: ${(err as Error).message}`);
  }
  const now = Date.now();
  const leaf = certs[0]!;
  let cur = leaf;
  const pool = certs.slice(1);
  for (let depth = 0; depth < 8; depth++) {
    if (Date.parse(cur.validFrom) > now || Date.parse(cur.validTo) < now) throw new IkeFailure(Reason.CERT_INVALID, `certificate "${cur.subject.replace(/\n/g, ", ")}" is not valid now (${cur.validFrom} .. ${cur.validTo})`);
    const anchor = conn.remoteCas.find((ca) => cur.checkIssued(ca) && cur.verify(ca.publicKey));
    if (anchor) {
      if (Date.parse(anchor.validTo) < now) throw new IkeFailure(Reason.CERT_INVALID, `CA "${anchor.subject.replace(/\n/g, ", ")}" expired`);
      return checkIdentity(leaf, idP, who);
    }
    const next = pool.find((c) => c.ca && cur.checkIssued(c) && cur.verify(c.publicKey));
    if (!next) break;
    cur = next;
  }
  throw new IkeFailure(Reason.CERT_INVALID, `certificate of peer '${who}' ("${leaf.subject.replace(/\n/g, ", ")}", issuer "${leaf.issuer.replace(/\n/g, ", ")}") does not chain to a trusted CA of connection ${conn.name}`);
}

function checkIdentity(leaf: X509Certificate, idP: IdPayload, who: string): X509Certificate {
  let ok = false;
  switch (idP.idType) {
    case IdType.FQDN:
      ok = (leaf.subjectAltName ?? "").split(/,\s*/).some((s) => s.toLowerCase() === `dns:${who.toLowerCase()}`);
      break;
    case IdType.IPV4_ADDR:
    case IdType.IPV6_ADDR:
      ok = leaf.checkIP(who) !== undefined;
      break;
    case IdType.RFC822_ADDR:
      ok = leaf.checkEmail(who, { subject: "never" }) !== undefined;
      break;
    case IdType.DER_ASN1_DN: {
      const norm = (s: string) => s.replace(/\n/g, ",").split(/\s*,\s*/).map((x) => x.toLowerCase().replace(/\s*=\s*/, "=")).sort().join(",");
      ok = norm(leaf.subject) === norm(who);
      break;
    }
  }
  if (!ok) throw new IkeFailure(Reason.CERT_INVALID, `identity '${who}' does not match the certificate (subject "${leaf.subject.replace(/\n/g, ", ")}", SAN "${leaf.subjectAltName ?? ""}")`);
  return leaf;
}

/** Does `conn` expect the peer identity in `idP`? 2 = exact, 1 = wildcard (%any), 0 = no. */
function remoteIdRank(conn: ConnRuntime, sa: IkeSa, idP: IdPayload): number {
  if (conn.remoteId === "%any") return 1;
  const want = conn.remoteId ?? parseIdentity(sa.remote.address);
  return identityMatches(want, idP.idType, idP.data) ? 2 : 0;
}

/** Initiator of IKE_AUTH (with the first CHILD SA). */
export class IkeAuth implements Task {
  readonly type = "ike_auth" as const;
  readonly exchange = ExchangeType.IKE_AUTH;
  #child?: ChildInitiator;
  #started = Date.now();

  constructor(
    private readonly core: EngineCore,
    private readonly conn: ConnRuntime,
    private readonly trigger?: { src: Ts; dst: Ts },
  ) {}

  async build(sa: IkeSa): Promise<Payload[]> {
    const conn = this.conn;
    const id = localIdentity(conn, sa);
    sa.localIdText = id.text;
    const idi = idPayload(PayloadType.IDi, id);
    // InitiatorSignedOctets = RealMessage1 | NonceRData | prf(SK_pi, IDi') (§2.15)
    const octets = sa.keymat!.authOctets(true, sa.initRequest!, sa.nr, idPayloadBody(idi));
    const out: Payload[] = [idi];
    const auth = buildAuth(conn, sa, octets);
    out.push(...auth.filter((p) => p.type === PayloadType.CERT));
    if (conn.remoteAuth === fleet.AuthMethod.AUTH_METHOD_PUBKEY && conn.remoteCas.length) {
      out.push({ type: PayloadType.CERTREQ, encoding: CertEncoding.X509_SIGNATURE, data: Buffer.concat(conn.remoteCas.map((ca) => certReqHash(ca.publicKey.export({ type: "spki", format: "der" })))) });
    }
    if (conn.remoteId && conn.remoteId !== "%any") out.push(idPayload(PayloadType.IDr, conn.remoteId));
    out.push(...auth.filter((p) => p.type === PayloadType.AUTH));
    // §2.4: INITIAL_CONTACT when we hold no other IKE SA with this peer.
    if (!this.core.ikeSas().some((o) => o !== sa && o.conn === conn && o.state === "established")) out.push(notify(NotifyType.INITIAL_CONTACT));
    this.#child = new ChildInitiator(this.core, sa, conn, { inIkeAuth: true, trigger: this.trigger });
    out.push(...(await this.#child.build()));
    return out;
  }

  async process(sa: IkeSa, ps: Payload[]): Promise<"done"> {
    const conn = this.conn;
    if (findNotify(ps, NotifyType.AUTHENTICATION_FAILED)) {
      throw new IkeFailure(Reason.AUTH_FAILED, `peer ${sa.remote.address} refused our authentication as '${sa.localIdText}' (AUTHENTICATION_FAILED): check the PSK/certificate and that the peer's rightid matches our leftid`);
    }
    const idr = find(ps, PayloadType.IDr);
    if (!idr || !find(ps, PayloadType.AUTH)) {
      const err = errorNotify(ps);
      throw new IkeFailure(err?.notifyType === NotifyType.NO_PROPOSAL_CHOSEN ? Reason.NO_PROPOSAL_CHOSEN : Reason.PEER_ERROR, `IKE_AUTH failed: peer answered ${err ? nameOf(NotifyType, err.notifyType) : "without IDr/AUTH"}`);
    }
    if (remoteIdRank(conn, sa, idr) === 0) {
      throw new IkeFailure(Reason.AUTH_FAILED, `peer identified as '${identityText(idr.idType, idr.data)}', connection ${conn.name} expects '${conn.remoteId === "%any" ? "%any" : (conn.remoteId?.text ?? sa.remote.address)}' (check rightid)`);
    }
    // ResponderSignedOctets = RealMessage2 | NonceIData | prf(SK_pr, IDr') (§2.15)
    verifyAuth(conn, sa, ps, idr, sa.keymat!.authOctets(false, sa.initResponse!, sa.ni, idPayloadBody(idr)));
    sa.remoteIdText = identityText(idr.idType, idr.data);
    this.core.metrics.handshakeSeconds.observe((Date.now() - sa.startedAt) / 1000);
    this.core.ikeEstablished(sa);
    try {
      const child = await this.#child!.process(ps);
      this.core.childInstalled(sa, child);
    } catch (err) {
      // The IKE SA stays up when only the CHILD SA failed (§1.2).
      const f = err instanceof IkeFailure ? err : new IkeFailure(Reason.DATAPLANE_ERROR, (err as Error).message);
      await this.core.dp.deleteSa({ dst: sa.local.address, spi: this.#child!.child.spiIn, protocol: 50 }).catch(() => undefined);
      deleteFailedChild(this.core, sa, this.#child!.child, err);
      this.core.failed(sa, conn, f);
      if (f.reason === Reason.TEMPORARY_FAILURE || f.reason === Reason.DATAPLANE_ERROR) {
        // Transient: the IKE SA stands; try the CHILD SA again shortly with CREATE_CHILD_SA.
        const delay = 1000 + Math.floor(Math.random() * 2000);
        this.core.log.info({ conn: conn.name }, `first CHILD SA failed (${f.reason}); creating it again in ${(delay / 1000).toFixed(1)} s`);
        const t = setTimeout(() => {
          if (sa.state === "established" && ![...sa.children.values()].some((c) => c.conn === conn && !c.removed)) this.core.queue(sa, new ChildCreate(this.core, conn, this.trigger));
        }, delay);
        t.unref?.();
        sa.timers.push(t);
      }
    }
    sa.authDone();
    void this.#started;
    return "done";
  }

  async failed(sa: IkeSa, err: IkeFailure): Promise<void> {
    this.core.failed(sa, this.conn, err);
    await this.core.destroyIkeSa(sa, err);
  }
}

/** Responder of IKE_AUTH. */
export async function respondIkeAuth(core: EngineCore, sa: IkeSa, ps: Payload[]): Promise<Response> {
  const idi = find(ps, PayloadType.IDi);
  const idr = find(ps, PayloadType.IDr);
  const fail = (err: IkeFailure, notifyType: number = NotifyType.AUTHENTICATION_FAILED): Response => {
    core.log.warn({ peer: sa.remote.address, code: err.reason }, err.message);
    core.failed(sa, sa.conn, err);
    return { payloads: [notify(notifyType)], after: () => core.destroyIkeSa(sa, err, { noRestart: true }) };
  };
  if (sa.state !== "connecting") return { payloads: [notify(NotifyType.INVALID_SYNTAX)] };
  if (!idi || !find(ps, PayloadType.AUTH)) return fail(new IkeFailure(Reason.INVALID_SYNTAX, "IKE_AUTH request without IDi or AUTH"), NotifyType.INVALID_SYNTAX);
  const who = identityText(idi.idType, idi.data);
  // 2. Identity: candidates (by address) whose remote id matches IDi, and whose local id matches IDr if sent.
  const ranked = sa.candidates
    .map((c) => ({ c, rank: remoteIdRank(c, sa, idi) }))
    .filter(({ c, rank }) => rank > 0 && (!idr || identityMatches(localIdentity(c, sa), idr.idType, idr.data)));
  if (!ranked.length) {
    return fail(new IkeFailure(Reason.NO_SUITABLE_CONNECTION,
      `no suitable connection for peer '${who}'${idr ? ` asking for '${identityText(idr.idType, idr.data)}'` : ""} from ${sa.remote.address}: candidates by address were ${sa.candidates.map((c) => `${c.name} (rightid ${c.remoteId === "%any" ? "%any" : (c.remoteId?.text ?? "= its address")})`).join(", ")}; check rightid/leftid`));
  }
  const best = Math.max(...ranked.map((r) => r.rank));
  let pool = ranked.filter((r) => r.rank === best).map((r) => r.c);
  // 3. Traffic selectors: the most specific connection whose selectors fit wins.
  const tsiP = find(ps, PayloadType.TSi);
  const tsrP = find(ps, PayloadType.TSr);
  if (tsiP && tsrP && pool.length > 1) {
    const offI = tsiP.selectors.map(fromWire).filter((t): t is Ts => !!t);
    const offR = tsrP.selectors.map(fromWire).filter((t): t is Ts => !!t);
    const fits = pool
      .map((c) => ({ c, ok: narrow(offI, configuredTs(c, "remote", sa)).length > 0 && narrow(offR, configuredTs(c, "local", sa)).length > 0, size: [...configuredTs(c, "remote", sa), ...configuredTs(c, "local", sa)].reduce((a, t) => a + tsSize(t), 0n) }))
      .filter((x) => x.ok)
      .sort((a, b) => (a.size < b.size ? -1 : a.size > b.size ? 1 : 0));
    if (fits.length) pool = fits.map((x) => x.c);
  }
  const conn = pool[0]!;
  sa.conn = conn;
  sa.candidates = pool;
  try {
    // InitiatorSignedOctets = RealMessage1 | NonceRData | prf(SK_pi, IDi')
    verifyAuth(conn, sa, ps, idi, sa.keymat!.authOctets(true, sa.initRequest!, sa.nr, idPayloadBody(idi)));
  } catch (err) {
    return fail(err instanceof IkeFailure ? err : new IkeFailure(Reason.AUTH_FAILED, (err as Error).message));
  }
  sa.remoteIdText = who;
  sa.initialContact = !!findNotify(ps, NotifyType.INITIAL_CONTACT);
  const id = localIdentity(conn, sa);
  sa.localIdText = id.text;
  const idrOut = idPayload(PayloadType.IDr, id);
  let auth: Payload[];
  try {
    // ResponderSignedOctets = RealMessage2 | NonceIData | prf(SK_pr, IDr')
    auth = buildAuth(conn, sa, sa.keymat!.authOctets(false, sa.initResponse!, sa.ni, idPayloadBody(idrOut)));
  } catch (err) {
    return fail(err instanceof IkeFailure ? err : new IkeFailure(Reason.NO_SECRET, (err as Error).message));
  }
  core.ikeEstablished(sa);
  const payloads: Payload[] = [idrOut, ...auth];
  let child: import("../sa.js").ChildSa | undefined;
  if (find(ps, PayloadType.SA)) {
    try {
      const r = await respondChild(core, sa, conn, ps, { inIkeAuth: true, nonces: [sa.ni, sa.nr] });
      payloads.push(...r.payloads);
      if (r.failure) core.failed(sa, conn, r.failure);
      child = r.child;
    } catch (err) {
      // The IKE SA is established (§1.2: a failed CHILD SA does not fail it); only the CHILD SA
      // failed, typically a dataplane call that timed out under load. Answering the whole
      // IKE_AUTH with TEMPORARY_FAILURE (what an exception became before) left this end with an
      // established IKE SA the initiator had given up on.
      const f = new IkeFailure(Reason.DATAPLANE_ERROR, `installing the first CHILD SA of ${conn.name} failed: ${(err as Error).message}`);
      core.log.error({ conn: conn.name, peer: sa.remote.address }, f.message);
      core.failed(sa, conn, f);
      payloads.push(notify(NotifyType.TEMPORARY_FAILURE));
    }
  }
  sa.authDone();
  return {
    payloads,
    after: async () => {
      if (child) core.childInstalled(sa, child);
    },
  };
}
