/**
 * One worker of `fleetswan bench ike`: a lean IKEv2 initiator that runs handshakes
 * (IKE_SA_INIT + IKE_AUTH with PSK and one CHILD SA, RFC 7296 §1.2) from its own UDP socket,
 * `concurrency` of them in flight, and reports the latency of each.
 *
 * It does what an initiator must and nothing else: no engine, no task manager, no timers
 * per SA, no state kept after a handshake completes (the SA is abandoned; the responder
 * keeps it). Per handshake: an X25519 key pair and the shared secret, SKEYSEED and prf+
 * (§2.14), AUTH (§2.15) over our IKE_SA_INIT request, one AES-GCM seal and one open, and
 * the check of the responder's AUTH (so a responder that skips work is caught).
 */
import { createSocket } from "node:dgram";
import { randomBytes } from "node:crypto";
import { createKeyExchange, type KeyExchange } from "../ike/crypto/dh.js";
import { parentPort, workerData } from "node:worker_threads";
import { deriveInitialIkeKeys, prf } from "../ike/crypto/prf.js";
import { ikeSaCiphers } from "../ike/crypto/sk.js";
import { natDetectionHash } from "../ike/crypto/natd.js";
import { KEY_PAD } from "../ike/crypto/auth.js";
import { algorithmsOf, parseProposals } from "../ike/proposal.js";
import { parseIdentity } from "../ike/engine/conn.js";
import { parseTs, toWire } from "../ike/engine/ts.js";
import {
  AuthMethod,
  ExchangeType,
  NotifyType,
  PayloadType,
  decodeMessage,
  encodeMessage,
  idPayloadBody,
  openMessage,
  sealMessage,
  type AuthPayload,
  type IdPayload,
  type KePayload,
  type NotifyPayload,
  type Payload,
  type SaPayload,
  type SkCipher,
  type TsPayload,
} from "../ike/wire/index.js";

export interface WorkerParams {
  index: number;
  host: string;
  port: number;
  /** Local address to send from ("" = any). */
  local: string;
  count: number;
  concurrency: number;
  psk: string;
  /** Our identity; "%d" is replaced by the handshake number (many identities). */
  id: string;
  ike: string;
  esp: string;
  tsi: string;
  tsr: string;
  timeoutMs: number;
  tries: number;
}

export interface WorkerResult {
  index: number;
  done: number;
  failed: number;
  retransmits: number;
  errors: Record<string, number>;
  /** Latency of each completed handshake, ms. */
  latencies: Float64Array;
  startedAt: number;
  endedAt: number;
}

const ZERO_SPI = Buffer.alloc(8);

interface Hs {
  n: number;
  spiI: Buffer;
  key: string;
  kex: KeyExchange;
  ni: Buffer;
  spiR: Buffer;
  init?: Buffer;
  out?: SkCipher;
  in?: SkCipher;
  skPr?: Buffer;
  nr?: Buffer;
  prf?: number;
  initResponse?: Buffer;
  stage: 0 | 1;
  packet: Buffer;
  sentAt: number;
  startedAt: number;
  tries: number;
  timer?: NodeJS.Timeout;
  cookie?: Buffer;
}

/** What the lean initiator needs around it: a way to send, and to report. */
export interface InitiatorIo {
  send(packet: Buffer): void;
  /** Our address and port as the responder sees them (for NAT-D). */
  local(): { address: string; port: number };
  /** All handshakes finished (done + failed = count). */
  finished(r: WorkerResult): void;
}

/**
 * The lean initiator without its socket: `start()` sends the first `concurrency` IKE_SA_INIT
 * requests, `receive(datagram)` handles a response. Also used in-process by
 * bench/ike/engine-profile.mjs to profile the responder engine without UDP.
 */
export function createInitiator(p: WorkerParams, io: InitiatorIo): { start(): void; receive(raw: Buffer): void } {
  const ikeProposals = parseProposals(p.ike, "ike");
  const group = ikeProposals[0]!.transforms.find((t) => t.type === 4)!.id;
  const espProposals = parseProposals(p.esp, "esp");
  const pskPad = (prfId: number) => prf(prfId, Buffer.from(p.psk), KEY_PAD);
  const padCache = new Map<number, Buffer>();
  const tsi: TsPayload = { type: PayloadType.TSi, selectors: p.tsi.split(",").map((s) => toWire(parseTs(s))) };
  const tsr: TsPayload = { type: PayloadType.TSr, selectors: p.tsr.split(",").map((s) => toWire(parseTs(s))) };
  const fixedId = p.id.includes("%d") ? undefined : parseIdentity(p.id);

  const inflight = new Map<string, Hs>();
  const latencies = new Float64Array(p.count);
  const errors: Record<string, number> = {};
  let started = 0;
  let done = 0;
  let failed = 0;
  let retransmits = 0;
  let startedAt = 0;

  const finish = (): void => {
    if (done + failed < p.count) return;
    io.finished({ index: p.index, done, failed, retransmits, errors, latencies: latencies.slice(0, done), startedAt, endedAt: performance.timeOrigin + performance.now() });
  };

  const fail = (hs: Hs, why: string): void => {
    if (hs.timer) clearTimeout(hs.timer);
    inflight.delete(hs.key);
    failed++;
    errors[why] = (errors[why] ?? 0) + 1;
    next();
    finish();
  };

  const send = (hs: Hs): void => {
    hs.sentAt = performance.now();
    io.send(hs.packet);
    if (hs.timer) clearTimeout(hs.timer);
    hs.timer = setTimeout(() => {
      if (++hs.tries > p.tries) return fail(hs, hs.stage === 0 ? "IKE_SA_INIT timeout" : "IKE_AUTH timeout");
      retransmits++;
      send(hs);
    }, p.timeoutMs * 2 ** (hs.tries));
  };

  const buildInit = (hs: Hs): Buffer => {
    const out: Payload[] = [];
    if (hs.cookie) out.push(notify(NotifyType.COOKIE, hs.cookie));
    out.push({ type: PayloadType.SA, proposals: ikeProposals } as SaPayload);
    out.push({ type: PayloadType.KE, group, data: hs.kex.publicValue } as KePayload);
    out.push({ type: PayloadType.NONCE, nonce: hs.ni });
    const me = io.local();
    out.push(notify(NotifyType.NAT_DETECTION_SOURCE_IP, natDetectionHash(hs.spiI, ZERO_SPI, me.address, me.port)));
    out.push(notify(NotifyType.NAT_DETECTION_DESTINATION_IP, natDetectionHash(hs.spiI, ZERO_SPI, p.host, p.port)));
    return encodeMessage({ spiI: hs.spiI, spiR: ZERO_SPI, exchangeType: ExchangeType.IKE_SA_INIT, messageId: 0, initiator: true, response: false }, out);
  };

  const next = (): void => {
    if (started >= p.count) return;
    const n = started++;
    const spiI = randomBytes(8);
    const hs: Hs = { n: p.index * 1e9 + n, spiI, key: spiI.toString("hex"), kex: createKeyExchange(group), ni: randomBytes(32), spiR: ZERO_SPI, stage: 0, packet: ZERO_SPI, sentAt: 0, startedAt: performance.now(), tries: 0 };
    hs.packet = hs.init = buildInit(hs);
    inflight.set(hs.key, hs);
    send(hs);
  };

  const onInitResponse = (hs: Hs, raw: Buffer): void => {
    const msg = decodeMessage(raw);
    const ps = msg.payloads;
    const cookie = findNotify(ps, NotifyType.COOKIE);
    if (cookie) {
      hs.cookie = cookie.data;
      hs.packet = hs.init = buildInit(hs);
      hs.tries = 0;
      return send(hs);
    }
    const errN = ps.find((x): x is NotifyPayload => x.type === PayloadType.NOTIFY && (x as NotifyPayload).notifyType < 16384);
    if (errN) return fail(hs, `IKE_SA_INIT: notify ${errN.notifyType}`);
    const saP = ps.find((x) => x.type === PayloadType.SA) as SaPayload | undefined;
    const ke = ps.find((x) => x.type === PayloadType.KE) as KePayload | undefined;
    const nr = ps.find((x) => x.type === PayloadType.NONCE) as { nonce: Buffer } | undefined;
    if (!saP || !ke || !nr || saP.proposals.length !== 1) return fail(hs, "IKE_SA_INIT: response lacks SA, KE or Nr");
    const alg = algorithmsOf(saP.proposals[0]!);
    const shared = hs.kex.computeSharedSecret(ke.data);
    hs.spiR = msg.header.spiR;
    hs.nr = nr.nonce;
    hs.prf = alg.prf;
    hs.initResponse = msg.raw;
    // SKEYSEED and prf+ (§2.14) in one HKDF call, as the responder does
    const keys = deriveInitialIkeKeys(alg, shared, hs.ni, nr.nonce, hs.spiI, hs.spiR);
    const c = ikeSaCiphers({ encr: alg.encr, encrKeyBits: alg.encrKeyBits, integ: alg.integ }, keys, true);
    hs.out = c.out;
    hs.in = c.in;
    hs.skPr = keys.skPr;
    // IKE_AUTH request: IDi, AUTH, SA, TSi, TSr (§1.2); no INITIAL_CONTACT (it would make a
    // responder with unique ids replace the previous SAs of this identity).
    const id = fixedId ?? parseIdentity(p.id.replace("%d", String(hs.n)));
    const idi: IdPayload = { type: PayloadType.IDi, idType: id.type, data: id.data };
    const octets = Buffer.concat([hs.init!, nr.nonce, prf(alg.prf, keys.skPi, idPayloadBody(idi))]);
    let pad = padCache.get(alg.prf);
    if (!pad) padCache.set(alg.prf, (pad = pskPad(alg.prf)));
    const auth: AuthPayload = { type: PayloadType.AUTH, method: AuthMethod.SHARED_KEY_MIC, data: prf(alg.prf, pad, octets) } as AuthPayload;
    const spi = randomBytes(4);
    const sa: SaPayload = { type: PayloadType.SA, proposals: espProposals.map((x) => ({ ...x, spi })) };
    hs.packet = sealMessage({ spiI: hs.spiI, spiR: hs.spiR, exchangeType: ExchangeType.IKE_AUTH, messageId: 1, initiator: true, response: false }, [idi, auth, sa, tsi, tsr], hs.out);
    hs.stage = 1;
    hs.tries = 0;
    send(hs);
  };

  const onAuthResponse = (hs: Hs, raw: Buffer): void => {
    const msg = decodeMessage(raw);
    const ps = openMessage(msg, hs.in!);
    const idr = ps.find((x) => x.type === PayloadType.IDr) as IdPayload | undefined;
    const auth = ps.find((x) => x.type === PayloadType.AUTH) as AuthPayload | undefined;
    if (!idr || !auth) {
      const n = ps.find((x): x is NotifyPayload => x.type === PayloadType.NOTIFY);
      return fail(hs, `IKE_AUTH: ${n ? `notify ${n.notifyType}` : "no IDr/AUTH"}`);
    }
    const octets = Buffer.concat([hs.initResponse!, hs.ni, prf(hs.prf!, hs.skPr!, idPayloadBody(idr))]);
    const want = prf(hs.prf!, padCache.get(hs.prf!)!, octets);
    if (!want.equals(auth.data)) return fail(hs, "IKE_AUTH: responder AUTH does not verify");
    if (!ps.some((x) => x.type === PayloadType.SA) || !ps.some((x) => x.type === PayloadType.TSr)) return fail(hs, "IKE_AUTH: no CHILD SA");
    if (hs.timer) clearTimeout(hs.timer);
    inflight.delete(hs.key);
    latencies[done++] = performance.now() - hs.startedAt;
    next();
    finish();
  };

  return {
    start(): void {
      startedAt = performance.timeOrigin + performance.now();
      for (let i = 0; i < p.concurrency && i < p.count; i++) next();
      if (p.count === 0) finish();
    },
    receive(raw: Buffer): void {
      if (raw.length < 28) return;
      const hs = inflight.get(raw.toString("hex", 0, 8));
      if (!hs) return;
      const exchange = raw[18];
      try {
        if (hs.stage === 0 && exchange === ExchangeType.IKE_SA_INIT) onInitResponse(hs, raw);
        else if (hs.stage === 1 && exchange === ExchangeType.IKE_AUTH) onAuthResponse(hs, raw);
      } catch (err) {
        fail(hs, `${hs.stage === 0 ? "IKE_SA_INIT" : "IKE_AUTH"}: ${(err as Error).message}`);
      }
    },
  };
}

/** The worker: one UDP socket (connected to the responder) around createInitiator(). */
function run(p: WorkerParams): void {
  const sock = createSocket({ type: p.host.includes(":") ? "udp6" : "udp4" });
  let local = { address: "", port: 0 };
  const ini = createInitiator(p, {
    send: (packet) => sock.send(packet),
    local: () => local,
    finished: (res) => {
      sock.close();
      parentPort!.postMessage({ kind: "result", result: res }, [res.latencies.buffer as ArrayBuffer]);
    },
  });
  sock.on("message", (raw: Buffer) => ini.receive(raw));
  sock.on("error", (err) => parentPort!.postMessage({ kind: "error", message: err.message }));
  sock.bind({ address: p.local || undefined, port: 0 }, () => {
    sock.connect(p.port, p.host, () => {
      local = sock.address();
      parentPort!.postMessage({ kind: "ready" });
    });
  });
  parentPort!.on("message", (m: { kind: string }) => {
    if (m.kind === "go") ini.start();
  });
}

function notify(type: number, data: Buffer): NotifyPayload {
  return { type: PayloadType.NOTIFY, protocol: 0, notifyType: type, spi: Buffer.alloc(0), data } as NotifyPayload;
}

function findNotify(ps: Payload[], type: number): NotifyPayload | undefined {
  return ps.find((x): x is NotifyPayload => x.type === PayloadType.NOTIFY && (x as NotifyPayload).notifyType === type);
}

if (parentPort && workerData) run(workerData as WorkerParams);
