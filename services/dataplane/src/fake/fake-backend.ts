/**
 * An in-memory Backend for unit tests: carries no traffic, keeps SAs and policies in
 * maps, lets a test raise events (acquire, expire) and change state behind the service's
 * back (drift), and records every call so tests can assert "changed nothing".
 */
import { dataplane } from "@fleetswan/proto";
import { KernelError } from "@fleetswan/common";
import {
  type AllocateSpiParams,
  type Backend,
  type BackendEvent,
  type BackendEventListener,
  type Capabilities,
  type PolicyKey,
  type Policy,
  type PolicyState,
  type SaId,
  type SaState,
  type SecurityAssociation,
  describePolicyKey,
  describeSaId,
  isOwnedReqid,
  policyKeyString,
  saKey,
} from "../backend.js";

/** One recorded call, for assertions. */
export interface FakeCall {
  op: "allocateSpi" | "addSa" | "deleteSa" | "addPolicy" | "deletePolicy";
  /** describeSaId / describePolicyKey of the object. */
  object: string;
}

export interface FakeBackendOptions {
  /** Capabilities to report (default: everything). */
  capabilities?: Partial<Capabilities>;
  /** First SPI handed out by allocateSpi when free (default: params.min). */
  firstSpi?: number;
}

interface FakeSa {
  sa: SecurityAssociation;
  counters: dataplane.SaCounters;
}

interface FakePolicy {
  policy: Policy;
  addedAt: Date;
}

export class FakeBackend implements Backend {
  readonly kind = dataplane.Backend.BACKEND_FAKE;
  /** SAs by saKey, keys included (the fake is the "kernel"). */
  readonly sas = new Map<string, FakeSa>();
  readonly policies = new Map<string, FakePolicy>();
  /** Larval SPIs from allocateSpi, by saKey. */
  readonly larval = new Set<string>();
  readonly calls: FakeCall[] = [];
  /** When set, the next call with this op fails with a KernelError carrying this errno. */
  failNext: { op: FakeCall["op"]; errno: number } | undefined;
  closed = false;
  private readonly listeners = new Set<BackendEventListener>();
  private readonly caps: Capabilities;
  private nextSpi: number | undefined;

  constructor(opts: FakeBackendOptions = {}) {
    this.caps = {
      backend: dataplane.Backend.BACKEND_FAKE,
      encryption: [dataplane.Encryption.ENCRYPTION_AES_GCM_16, dataplane.Encryption.ENCRYPTION_CHACHA20_POLY1305, dataplane.Encryption.ENCRYPTION_AES_CBC],
      integrity: [dataplane.Integrity.INTEGRITY_HMAC_SHA2_256_128, dataplane.Integrity.INTEGRITY_HMAC_SHA2_384_192, dataplane.Integrity.INTEGRITY_HMAC_SHA2_512_256],
      esn: true,
      udpEncap: true,
      notes: ["fake backend: carries no traffic"],
      kernel: "fake",
      ...opts.capabilities,
    };
    this.nextSpi = opts.firstSpi;
  }

  async capabilities(): Promise<Capabilities> {
    return structuredClone(this.caps);
  }

  async allocateSpi(p: AllocateSpiParams): Promise<number> {
    this.check("allocateSpi", `${p.dst}/esp/alloc`);
    let spi = Math.max(this.nextSpi ?? p.min, p.min) >>> 0;
    while (spi <= p.max) {
      const k = saKey({ dst: p.dst, spi, protocol: 50 });
      if (!this.sas.has(k) && !this.larval.has(k)) {
        this.larval.add(k);
        this.nextSpi = spi + 1;
        this.calls.push({ op: "allocateSpi", object: describeSaId({ dst: p.dst, spi, protocol: 50 }) });
        return spi;
      }
      spi++;
    }
    throw new KernelError("no free SPI in range", 28 /* ENOSPC */, `allocating an SPI for ${p.src}->${p.dst}`);
  }

  async addSa(sa: SecurityAssociation): Promise<void> {
    const id = sa.id!;
    this.check("addSa", describeSaId(id));
    const k = saKey(id);
    this.larval.delete(k);
    const prev = this.sas.get(k);
    this.sas.set(k, {
      sa: { ...structuredClone(sa), encryptionKey: Buffer.from(sa.encryptionKey), integrityKey: Buffer.from(sa.integrityKey) },
      counters: prev?.counters ?? { bytes: 0n, packets: 0n, replayErrors: 0n, integrityErrors: 0n, addedAt: new Date(), usedAt: undefined },
    });
    this.calls.push({ op: "addSa", object: describeSaId(id) });
  }

  async deleteSa(id: SaId, src?: string): Promise<boolean> {
    this.check("deleteSa", describeSaId(id));
    const k = saKey(id);
    this.calls.push({ op: "deleteSa", object: describeSaId(id) });
    const cur = this.sas.get(k);
    if (this.larval.delete(k)) return true;
    if (!cur || (src && cur.sa.src !== src)) return false;
    this.sas.delete(k);
    return true;
  }

  async addPolicy(policy: Policy): Promise<void> {
    const key = keyOf(policy);
    this.check("addPolicy", describePolicyKey(key));
    if (!policy.priority) throw new Error("FakeBackend.addPolicy: priority must be derived before the backend (got 0)");
    const k = policyKeyString(key);
    const prev = this.policies.get(k);
    this.policies.set(k, { policy: structuredClone(policy), addedAt: prev?.addedAt ?? new Date() });
    this.calls.push({ op: "addPolicy", object: describePolicyKey(key) });
  }

  async deletePolicy(key: PolicyKey): Promise<boolean> {
    this.check("deletePolicy", describePolicyKey(key));
    this.calls.push({ op: "deletePolicy", object: describePolicyKey(key) });
    return this.policies.delete(policyKeyString(key));
  }

  async listSas(): Promise<SaState[]> {
    return [...this.sas.values()]
      .filter((s) => isOwnedReqid(s.sa.reqid))
      .map((s) => ({
        sa: { ...structuredClone(s.sa), encryptionKey: Buffer.alloc(0), integrityKey: Buffer.alloc(0) },
        counters: structuredClone(s.counters),
      }));
  }

  async listPolicies(): Promise<PolicyState[]> {
    return [...this.policies.values()].map((p) => ({
      policy: structuredClone(p.policy),
      counters: { addedAt: p.addedAt, usedAt: undefined },
      effectivePriority: p.policy.priority,
    }));
  }

  onEvent(listener: BackendEventListener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  async close(): Promise<void> {
    this.closed = true;
    this.listeners.clear();
  }

  // ------------------------------------------------------------ test hooks --

  /** Raise an event as the kernel would. */
  emit(event: BackendEvent): void {
    for (const l of this.listeners) l(event);
  }

  /** Pretend traffic flowed through an SA. */
  addTraffic(id: SaId, bytes: number, packets: number): void {
    const s = this.sas.get(saKey(id));
    if (!s) throw new Error(`FakeBackend.addTraffic: no SA ${describeSaId(id)}`);
    s.counters.bytes += BigInt(bytes);
    s.counters.packets += BigInt(packets);
    s.counters.usedAt = new Date();
  }

  /** Remove everything behind the service's back (like `ip xfrm state deleteall`). */
  flushBehindBack(): void {
    this.sas.clear();
    this.policies.clear();
  }

  /** Mutating calls so far (allocate, add, delete), and reset the record. */
  takeCalls(): FakeCall[] {
    return this.calls.splice(0, this.calls.length);
  }

  private check(op: FakeCall["op"], object: string): void {
    if (this.closed) throw new Error("FakeBackend: used after close()");
    if (this.failNext && this.failNext.op === op) {
      const { errno } = this.failNext;
      this.failNext = undefined;
      throw new KernelError("injected failure", errno, `${op} ${object}`);
    }
  }
}

function keyOf(p: Policy): PolicyKey {
  return { selector: p.selector!, direction: p.direction, mark: p.mark };
}
