/**
 * The production backend: Linux XFRM programmed over NETLINK_XFRM (src/xfrm/codec.ts for
 * the bytes, netlink.ts for the socket). Like strongSwan's kernel-netlink, but only the
 * subset fleetswan uses: ESP, tunnel and transport mode, AEAD or CBC+HMAC, ESP-in-UDP.
 *
 * Kernel quirks written down where they matter:
 * - NEWSA on an existing (dst, spi, proto) is EEXIST, also for the larval SA that
 *   ALLOCSPI left; UPDSA fills a larval SA but on a live SA only updates lifetimes and
 *   encap, never keys. So addSa = NEWSA; on EEXIST, UPDSA if we allocated the SPI, else
 *   DELSA + NEWSA.
 * - UPDPOLICY inserts or replaces, so addPolicy always uses it.
 * - Deleting what is not there is ESRCH (SAs) or ENOENT (policies): reported as false.
 * - PROTECT and TRAP policies are the same thing in XFRM (a template; no SA -> ACQUIRE).
 */
import { readFileSync } from "node:fs";
import { release } from "node:os";
import { dataplane } from "@fleetswan/proto";
import { KernelError, type Logger } from "@fleetswan/common";
import {
  type AllocateSpiParams,
  type Backend,
  type BackendEventListener,
  type Capabilities,
  type NattSocket,
  type NattSocketOptions,
  type Policy,
  type PolicyKey,
  type PolicyState,
  type SaId,
  type SaState,
  type SecurityAssociation,
  describePolicyKey,
  describeSaId,
  isOwnedReqid,
  saKey,
} from "../backend.js";
import { addressBytes, familyOf } from "./addr.js";
import { IPPROTO_ESP, XFRMNLGRP, XFRM_MSG } from "./constants.js";
import type { XfrmMessage } from "./codec.js";
import { XfrmSocket, errnoName, isExists, isNotFound } from "./netlink.js";
import { requests } from "./requests.js";
import { RouteManager } from "./routes.js";
import { acquireFromXfrm, policyFromXfrm, saFromXfrm } from "./translate.js";
import { EncapNattSocket } from "./natt.js";
import type { FsespAddon } from "../userspace/native.js";

export const NO_ESP_NOTE = "kernel lacks ESP (CONFIG_INET_ESP); use --backend userspace";

export interface XfrmBackendOptions {
  logger?: Logger;
  /** Install routes for remote subnets in table 220 (default true). */
  routes?: boolean | RouteManager;
  /** Netlink request timeout. */
  timeoutMs?: number;
  /** For tests: the fsesp addon that opens the NAT-T socket (default: the built one). */
  addon?: FsespAddon;
}

/** Probes wait longer than ordinary requests: the kernel may be loading crypto modules. */
const PROBE_TIMEOUT_MS = 30_000;

export class XfrmBackend implements Backend {
  readonly kind = dataplane.Backend.BACKEND_XFRM;
  readonly sock: XfrmSocket;
  readonly events: XfrmSocket;
  private readonly listeners = new Set<BackendEventListener>();
  /** SPIs we allocated and not yet filled (saKey). */
  private readonly larval = new Set<string>();
  private caps: Capabilities | undefined;
  private readonly routes: RouteManager | undefined;
  /** Routes we installed, by policy key string of the OUT policy -> dst prefix. */
  private readonly installedRoutes = new Map<string, string>();
  private natt: EncapNattSocket | undefined;

  constructor(private readonly opts: XfrmBackendOptions = {}) {
    this.sock = new XfrmSocket({ timeoutMs: opts.timeoutMs });
    this.events = new XfrmSocket({
      groups: [XFRMNLGRP.ACQUIRE, XFRMNLGRP.EXPIRE],
      onNotification: (m) => this.notification(m),
      onDecodeError: (e) => opts.logger?.warn({ err: e.message }, "undecodable XFRM notification"),
    });
    this.events.ref();
    this.routes = opts.routes === false ? undefined : opts.routes instanceof RouteManager ? opts.routes : new RouteManager();
  }

  /**
   * Probe once: add a scratch SA per algorithm (198.51.100.253 -> .254, reqid 0, never
   * owned) and delete it again. EPROTONOSUPPORT means no ESP at all.
   */
  async capabilities(): Promise<Capabilities> {
    if (this.caps) return structuredClone(this.caps);
    const E = dataplane.Encryption;
    const I = dataplane.Integrity;
    const notes: string[] = [];
    let noEsp = false;
    let spi = 0x100;
    const probe = async (o: Partial<SecurityAssociation>): Promise<boolean> => {
      const sa: SecurityAssociation = {
        id: { dst: "198.51.100.254", spi: spi++, protocol: IPPROTO_ESP },
        src: "198.51.100.253",
        mode: dataplane.Mode.MODE_TUNNEL,
        reqid: 0,
        encryption: E.ENCRYPTION_AES_GCM_16,
        encryptionKey: Buffer.alloc(36),
        integrity: I.INTEGRITY_NONE,
        integrityKey: Buffer.alloc(0),
        encap: undefined,
        replayWindow: 32,
        esn: false,
        lifetime: undefined,
        direction: dataplane.Direction.DIRECTION_IN,
        selector: undefined,
        mark: 0,
        ifId: 0,
        connection: "probe",
        childId: 0n,
        ...o,
      };
      let added = true;
      try {
        // The first add of an algorithm may load kernel modules: slow on a busy or emulated host.
        await this.sock.request(requests.addSa(sa, 0), `probing ${describeSaId(sa.id!)}`, PROBE_TIMEOUT_MS);
        return true;
      } catch (e) {
        if (e instanceof KernelError) {
          added = false;
          if (errnoName(e.errno) === "EPROTONOSUPPORT") noEsp = true;
        }
        return false;
      } finally {
        // Also after a timeout: the kernel may have added it after we stopped waiting.
        if (added) await this.deleteProbeSa(sa);
      }
    };
    const encryption: dataplane.Encryption[] = [];
    const integrity: dataplane.Integrity[] = [];
    if (await probe({})) encryption.push(E.ENCRYPTION_AES_GCM_16);
    if (await probe({ encryption: E.ENCRYPTION_CHACHA20_POLY1305 })) encryption.push(E.ENCRYPTION_CHACHA20_POLY1305);
    const cbc = (i: dataplane.Integrity, n: number) => probe({ encryption: E.ENCRYPTION_AES_CBC, encryptionKey: Buffer.alloc(32), integrity: i, integrityKey: Buffer.alloc(n) });
    for (const [i, n] of [[I.INTEGRITY_HMAC_SHA2_256_128, 32], [I.INTEGRITY_HMAC_SHA2_384_192, 48], [I.INTEGRITY_HMAC_SHA2_512_256, 64]] as const) {
      if (await cbc(i, n)) integrity.push(i);
    }
    if (integrity.length > 0) encryption.push(E.ENCRYPTION_AES_CBC);
    const base: Partial<SecurityAssociation> = encryption.includes(E.ENCRYPTION_AES_GCM_16) ? {} : { encryption: E.ENCRYPTION_AES_CBC, encryptionKey: Buffer.alloc(32), integrity: I.INTEGRITY_HMAC_SHA2_256_128, integrityKey: Buffer.alloc(32) };
    const esn = encryption.length > 0 && (await probe({ ...base, esn: true, replayWindow: 1024 }));
    const udpEncap = encryption.length > 0 && (await probe({ ...base, encap: { srcPort: 4500, dstPort: 4500 } }));
    if (noEsp) notes.push(NO_ESP_NOTE);
    else if (encryption.length === 0) notes.push("no ESP algorithm could be installed (crypto modules missing?)");
    this.caps = { backend: this.kind, encryption, integrity, esn, udpEncap, notes, kernel: release() };
    return structuredClone(this.caps);
  }

  /** Delete a probe SA; "not found" is fine, anything else is retried once and then reported. */
  private async deleteProbeSa(sa: SecurityAssociation): Promise<void> {
    for (let attempt = 1; ; attempt++) {
      try {
        await this.sock.request(requests.delSa(sa.id!, sa.src, 0), `deleting the probe SA ${describeSaId(sa.id!)}`, PROBE_TIMEOUT_MS);
        return;
      } catch (e) {
        if (isNotFound(e)) return;
        if (attempt >= 2) {
          this.opts.logger?.warn({ err: (e as Error).message }, "could not delete a capability-probe SA (src 198.51.100.253); remove it with ip xfrm state delete");
          return;
        }
      }
    }
  }

  async allocateSpi(p: AllocateSpiParams): Promise<number> {
    const r = await this.sock.request(requests.allocSpi(p, 0), `allocating an SPI for ${p.src}->${p.dst} reqid ${p.reqid}`);
    const m = r[0];
    if (!m || m.body.kind !== "sa") throw new KernelError("ALLOCSPI returned no SA", 0, `allocating an SPI for ${p.src}->${p.dst}`);
    const spi = m.body.info.id.spi;
    this.larval.add(saKey({ dst: p.dst, spi, protocol: IPPROTO_ESP }));
    return spi;
  }

  async addSa(sa: SecurityAssociation): Promise<void> {
    const id = sa.id!;
    const what = `adding SA ${describeSaId(id)} reqid ${sa.reqid}`;
    const k = saKey(id);
    try {
      await this.sock.request(requests.addSa(sa, 0), what);
    } catch (e) {
      if (!isExists(e)) throw e;
      if (this.larval.has(k)) {
        await this.sock.request(requests.addSa(sa, 0, true), `updating larval SA ${describeSaId(id)}`);
      } else {
        await this.sock.request(requests.delSa(id, "", 0), `replacing SA ${describeSaId(id)} (delete)`).catch((d) => {
          if (!isNotFound(d)) throw d;
        });
        await this.sock.request(requests.addSa(sa, 0), `replacing SA ${describeSaId(id)} (add)`);
      }
    }
    this.larval.delete(k);
  }

  async deleteSa(id: SaId, src?: string): Promise<boolean> {
    this.larval.delete(saKey(id));
    try {
      await this.sock.request(requests.delSa(id, src ?? "", 0), `deleting SA ${describeSaId(id)}`);
      return true;
    } catch (e) {
      if (isNotFound(e)) return false;
      throw e;
    }
  }

  async addPolicy(policy: Policy): Promise<void> {
    const key: PolicyKey = { selector: policy.selector!, direction: policy.direction, mark: policy.mark };
    await this.sock.request(requests.addPolicy(policy, 0), `installing policy ${describePolicyKey(key)} priority ${policy.priority}`);
    const tunnelOut =
      policy.direction === dataplane.Direction.DIRECTION_OUT &&
      (policy.action === dataplane.PolicyAction.POLICY_ACTION_PROTECT || policy.action === dataplane.PolicyAction.POLICY_ACTION_TRAP) &&
      policy.template?.mode !== dataplane.Mode.MODE_TRANSPORT &&
      !!policy.template?.dst;
    if (this.routes && tunnelOut) {
      const s = policy.selector!;
      const dst = `${s.dst!.address}/${s.dst!.length}`;
      const src = (await this.routes.localAddresses()).find((a) => inPrefix(a, s.src!.address, s.src!.length));
      await this.routes.install({ dst, peer: policy.template!.dst, src });
      this.installedRoutes.set(describePolicyKey(key), dst);
    }
  }

  async deletePolicy(key: PolicyKey): Promise<boolean> {
    let existed = true;
    try {
      await this.sock.request(requests.delPolicy(key, 0), `deleting policy ${describePolicyKey(key)}`);
    } catch (e) {
      if (!isNotFound(e)) throw e;
      existed = false;
    }
    const route = this.installedRoutes.get(describePolicyKey(key));
    if (route && this.routes) {
      await this.routes.remove(route);
      this.installedRoutes.delete(describePolicyKey(key));
    }
    return existed;
  }

  async listSas(): Promise<SaState[]> {
    const r = await this.sock.request(requests.dumpSas(0), "dumping SAs");
    const out: SaState[] = [];
    for (const m of r) {
      if (m.body.kind !== "sa") continue;
      const { info, attrs } = m.body;
      if (info.id.proto !== IPPROTO_ESP || !isOwnedReqid(info.reqid)) continue;
      // Larval SAs (ALLOCSPI, kernel acquires) carry no algorithm yet.
      if (!attrs.algAead && !attrs.algCrypt) continue;
      out.push(saFromXfrm(info, attrs));
    }
    return out;
  }

  async listPolicies(): Promise<PolicyState[]> {
    const r = await this.sock.request(requests.dumpPolicies(0), "dumping policies");
    const out: PolicyState[] = [];
    for (const m of r) {
      if (m.body.kind !== "policy") continue;
      const { info, attrs } = m.body;
      if (info.dir > 2) continue; // per-socket policies
      const t = attrs.tmpl?.[0];
      if (t && !isOwnedReqid(t.reqid)) continue;
      out.push(policyFromXfrm(info, attrs));
    }
    return out;
  }

  onEvent(listener: BackendEventListener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** Netlink counters for metrics. */
  netlinkStats(): { requests: number; decodeErrors: number; errorsByErrno: Map<string, number> } {
    const merged = new Map(this.sock.stats.errorsByErrno);
    return { requests: this.sock.stats.requests, decodeErrors: this.sock.stats.decodeErrors + this.events.stats.decodeErrors, errorsByErrno: merged };
  }

  /**
   * UDP 4500 with UDP_ENCAP_ESPINUDP (through the fsesp addon): the kernel decapsulates
   * ESP-in-UDP arriving on it; IKE (non-ESP marker) reaches onIke. Opened on the first call.
   */
  async nattSocket(opts: NattSocketOptions): Promise<NattSocket> {
    this.natt ??= EncapNattSocket.open(opts, this.opts.addon);
    return this.natt;
  }

  async close(): Promise<void> {
    await this.natt?.close();
    this.listeners.clear();
    this.sock.close();
    this.events.close();
  }

  private notification(m: XfrmMessage): void {
    const b = m.body;
    if (m.type === XFRM_MSG.ACQUIRE && b.kind === "acquire") {
      if (b.attrs.tmpl?.[0] && !isOwnedReqid(b.attrs.tmpl[0].reqid)) return;
      this.emit({ $case: "acquire", value: acquireFromXfrm(b.acquire, b.attrs) });
    } else if (m.type === XFRM_MSG.EXPIRE && b.kind === "expire") {
      if (!isOwnedReqid(b.info.reqid)) return;
      this.emit({ $case: "expire", value: { id: { dst: b.info.id.daddr, spi: b.info.id.spi, protocol: b.info.id.proto }, hard: b.hard, childId: 0n, connection: "" } });
    }
  }

  private emit(e: Parameters<BackendEventListener>[0]): void {
    for (const l of this.listeners) l(e);
  }
}

/** True when `addr` lies in `prefix`/`len` (same family). */
export function inPrefix(addr: string, prefix: string, len: number): boolean {
  try {
    if (familyOf(addr) !== familyOf(prefix)) return false;
  } catch {
    return false;
  }
  const a = addressBytes(addr);
  const p = addressBytes(prefix);
  for (let bit = 0; bit < len; bit++) if (((a[bit >> 3] ^ p[bit >> 3]) >> (7 - (bit & 7))) & 1) return false;
  return true;
}

/** /proc/net/xfrm_stat as name -> value (kernel mode error counters). Empty when absent. */
export function readXfrmStat(path = "/proc/net/xfrm_stat"): Map<string, number> {
  const out = new Map<string, number>();
  let text = "";
  try {
    text = readFileSync(path, "utf8");
  } catch {
    return out;
  }
  for (const line of text.split("\n")) {
    const m = /^(\w+)\s+(\d+)/.exec(line);
    if (m) out.set(m[1], Number(m[2]));
  }
  return out;
}
