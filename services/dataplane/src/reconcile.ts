/**
 * The dataplane service core: a desired-state table (what the agent asked for) applied
 * to a Backend, idempotently, and kept there.
 *
 * - Repeats are harmless: an add equal to the desired entry changes nothing in the backend.
 * - "Not found" on delete is success (existed=false).
 * - Ownership (proto: "Owned range: 1..0x7fffffff"): every SA, and every PROTECT/TRAP
 *   policy, whose reqid lies in the owned range belongs to fleetswan; reconcile prunes
 *   those that are not in the table, whoever installed them (a previous run, a lost state
 *   file, a crashed agent). Policies without a template (bypass, drop) are pruned only when
 *   we installed their key ourselves (`knownPolicies`). Reqid 0 and reqids above
 *   0x7fffffff are a stranger's and never touched. So no other IKE daemon may install XFRM
 *   state with reqids in 1..0x7fffffff in the same network namespace.
 * - Drift: reconcile() (at start and every driftIntervalMs) dumps the backend and diffs;
 *   missing or changed objects are re-installed and reported as Drift events.
 * - Restart: the table is persisted (stateFile, atomically, mode 0600 because it holds SA
 *   keys); a restart loads it and reconciles, which changes nothing when the kernel still
 *   has everything. Nothing is ever flushed.
 */
import { mkdirSync, openSync, writeSync, fsyncSync, closeSync, renameSync, readFileSync, existsSync, chmodSync } from "node:fs";
import { dirname } from "node:path";
import { dataplane } from "@fleetswan/proto";
import { ConfigError, FleetswanError, type Logger } from "@fleetswan/common";
import {
  type Backend,
  type BackendEvent,
  type Policy,
  type PolicyKey,
  type PolicyState,
  type SaId,
  type SaState,
  type SecurityAssociation,
  DEFAULT_SPI_MAX,
  DEFAULT_SPI_MIN,
  describePolicyKey,
  describeSaId,
  isOwnedReqid,
  policyKeyString,
  saKey,
} from "./backend.js";
import { canonicalAddress } from "./xfrm/addr.js";
import { policyToXfrm, saToXfrm } from "./xfrm/translate.js";
import { BYPASS_IKE_PRIORITY, effectivePriority } from "./priority.js";

export interface DataplaneOptions {
  backend: Backend;
  /** Where the desired state is persisted (mode 0600). Undefined = memory only (tests). */
  stateFile?: string;
  logger?: Logger;
  /** Periodic drift check; 0 = off (default 10 s). */
  driftIntervalMs?: number;
  /** Events kept while no client watches (default 1024). */
  eventBacklog?: number;
  /** Install IKE bypass policies (UDP 500/4500, in and out, IPv4 and IPv6) at start (default true). */
  ikeBypass?: boolean;
}

/** Counters of what reconcile() did, for tests and logs. */
export interface ReconcileResult {
  repaired: number;
  pruned: number;
  unchanged: number;
}

type EventListener = (e: dataplane.Event) => void;

interface PersistedState {
  version: 1;
  sas: unknown[];
  policies: unknown[];
  knownReqids: number[];
  knownPolicies: unknown[];
}

/** The IKE bypass policies (RFC 7296 §2.23 ports) installed at start. */
export function ikeBypassPolicies(): Policy[] {
  const out: Policy[] = [];
  for (const [any, len] of [["0.0.0.0", 0], ["::", 0]] as const) {
    for (const port of [500, 4500]) {
      for (const [direction, srcPort, dstPort] of [
        [dataplane.Direction.DIRECTION_OUT, port, 0],
        [dataplane.Direction.DIRECTION_IN, 0, port],
      ] as const) {
        out.push({
          selector: { src: { address: any, length: len }, dst: { address: any, length: len }, protocol: 17, srcPort, dstPort },
          direction,
          action: dataplane.PolicyAction.POLICY_ACTION_BYPASS,
          priority: BYPASS_IKE_PRIORITY,
          template: undefined,
          mark: 0,
          ifId: 0,
          connection: "ike-bypass",
        });
      }
    }
  }
  return out;
}

export class Dataplane {
  readonly backend: Backend;
  private readonly sas = new Map<string, SecurityAssociation>();
  private readonly policies = new Map<string, Policy>();
  private readonly knownReqids = new Set<number>();
  private readonly knownPolicies = new Map<string, PolicyKey>();
  private readonly listeners = new Set<EventListener>();
  private readonly backlog: dataplane.Event[] = [];
  private overflowed = 0;
  private timer: NodeJS.Timeout | undefined;
  private unsubscribe: (() => void) | undefined;
  private reconciling: Promise<ReconcileResult> | undefined;
  /** Serialises mutations so the table and the backend never disagree mid-way. */
  private chain: Promise<unknown> = Promise.resolve();
  readonly stats = { driftRepaired: 0, eventsDropped: 0, reconcileErrors: 0 };

  constructor(private readonly opts: DataplaneOptions) {
    this.backend = opts.backend;
  }

  /** Load persisted state, subscribe to backend events, install bypass, reconcile, start the drift timer. */
  async start(): Promise<ReconcileResult> {
    this.load();
    this.unsubscribe = this.backend.onEvent((e) => this.onBackendEvent(e));
    const r = await this.reconcile();
    // IKE bypass (first start: installed like any policy; later starts: already in the table).
    if (this.opts.ikeBypass !== false) for (const p of ikeBypassPolicies()) await this.addPolicy(p);
    this.persist();
    const every = this.opts.driftIntervalMs ?? 10_000;
    if (every > 0) {
      this.timer = setInterval(() => {
        this.reconcile().catch((e: Error) => {
          this.stats.reconcileErrors++;
          this.opts.logger?.warn({ err: e.message }, "drift check failed");
        });
      }, every);
      this.timer.unref();
    }
    return r;
  }

  async stop(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.unsubscribe?.();
    await this.chain.catch(() => undefined);
  }

  // ------------------------------------------------------------------ API --

  async capabilities(): Promise<dataplane.Capabilities> {
    return this.backend.capabilities();
  }

  allocateSpi(req: dataplane.AllocateSpiRequest): Promise<number> {
    const min = req.min || req.max ? req.min : DEFAULT_SPI_MIN;
    const max = req.min || req.max ? req.max : DEFAULT_SPI_MAX;
    if (min < 256 || max < min) throw new ConfigError(`SPI range 0x${min.toString(16)}..0x${max.toString(16)} is empty or reserved`, "AllocateSpiRequest.min/max");
    if (!isOwnedReqid(req.reqid)) throw new ConfigError(`reqid ${req.reqid} outside the owned range 1..0x7fffffff`, "AllocateSpiRequest.reqid");
    return this.serial(() => this.backend.allocateSpi({ src: canonicalAddress(req.src), dst: canonicalAddress(req.dst), reqid: req.reqid, min, max }));
  }

  /** Install or replace an SA; no backend call when the desired entry is already equal. */
  addSa(input: SecurityAssociation): Promise<void> {
    const sa = normalizeSa(input);
    return this.serial(async () => {
      const k = saKey(sa.id!);
      const cur = this.sas.get(k);
      if (cur && saEqual(cur, sa)) return;
      await this.backend.addSa(sa);
      this.sas.set(k, sa);
      this.knownReqids.add(sa.reqid);
      this.persist();
    });
  }

  deleteSa(id: SaId, src = ""): Promise<boolean> {
    const nid = { dst: canonicalAddress(id.dst), spi: id.spi >>> 0, protocol: id.protocol || 50 };
    return this.serial(async () => {
      const existed = await this.backend.deleteSa(nid, src ? canonicalAddress(src) : undefined);
      const had = this.sas.delete(saKey(nid));
      this.persist();
      return existed || had;
    });
  }

  /** Install or replace a policy; resolves to the effective priority. */
  addPolicy(input: Policy): Promise<number> {
    const p = normalizePolicy(input);
    return this.serial(async () => {
      const k = policyKeyString(keyOf(p));
      const cur = this.policies.get(k);
      if (!(cur && policyEqual(cur, p))) {
        await this.backend.addPolicy(p);
        this.policies.set(k, p);
        this.knownPolicies.set(k, keyOf(p));
        if (p.template) this.knownReqids.add(p.template.reqid);
        this.persist();
      }
      return p.priority;
    });
  }

  deletePolicy(input: PolicyKey): Promise<boolean> {
    const key: PolicyKey = { selector: normalizeSelector(input.selector, "DeletePolicyRequest.selector"), direction: input.direction, mark: input.mark };
    return this.serial(async () => {
      const existed = await this.backend.deletePolicy(key);
      const had = this.policies.delete(policyKeyString(key));
      this.persist();
      return existed || had;
    });
  }

  /** Our SAs as the backend has them (counters), with the agent's metadata. */
  async listSas(connection = ""): Promise<SaState[]> {
    const kernel = await this.backend.listSas();
    const out: SaState[] = [];
    for (const s of kernel) {
      const want = this.sas.get(saKey(s.sa!.id!));
      if (!want) continue;
      if (connection && want.connection !== connection) continue;
      out.push({
        sa: { ...s.sa!, direction: want.direction, connection: want.connection, childId: want.childId, selector: want.selector ?? s.sa!.selector, encryptionKey: Buffer.alloc(0), integrityKey: Buffer.alloc(0) },
        counters: s.counters,
      });
    }
    return out;
  }

  async listPolicies(connection = ""): Promise<PolicyState[]> {
    const kernel = new Map((await this.backend.listPolicies()).map((p) => [policyKeyString(keyOf(p.policy!)), p]));
    const out: PolicyState[] = [];
    for (const [k, p] of this.policies) {
      if (connection && p.connection !== connection) continue;
      const have = kernel.get(k);
      if (!have) continue;
      out.push({ policy: structuredClone(p), counters: have.counters, effectivePriority: have.effectivePriority });
    }
    return out;
  }

  /** Number of desired SAs and policies (metrics). */
  sizes(): { sas: number; policies: number } {
    return { sas: this.sas.size, policies: this.policies.size };
  }

  // ------------------------------------------------------------- reconcile --

  /** Diff the backend against the table; repair what is missing or changed; prune our leftovers. */
  reconcile(): Promise<ReconcileResult> {
    if (this.reconciling) return this.reconciling;
    this.reconciling = this.serial(() => this.reconcileNow()).finally(() => (this.reconciling = undefined));
    return this.reconciling;
  }

  private async reconcileNow(): Promise<ReconcileResult> {
    const r: ReconcileResult = { repaired: 0, pruned: 0, unchanged: 0 };
    const kernelSas = new Map((await this.backend.listSas()).map((s) => [saKey(s.sa!.id!), s.sa!]));
    for (const [k, want] of this.sas) {
      const have = kernelSas.get(k);
      if (have && saMatchesKernel(want, have)) {
        r.unchanged++;
        continue;
      }
      await this.backend.addSa(want);
      r.repaired++;
      this.drift("sa", describeSaId(want.id!), have ? "changed" : "deleted", true);
    }
    for (const [k, have] of kernelSas) {
      if (this.sas.has(k) || !isOwnedReqid(have.reqid)) continue;
      await this.backend.deleteSa(have.id!, have.src);
      r.pruned++;
    }
    const kernelPolicies = new Map((await this.backend.listPolicies()).map((p) => [policyKeyString(keyOf(p.policy!)), p]));
    for (const [k, want] of this.policies) {
      const have = kernelPolicies.get(k);
      if (have && policyMatchesKernel(want, have)) {
        r.unchanged++;
        continue;
      }
      await this.backend.addPolicy(want);
      r.repaired++;
      this.drift("policy", describePolicyKey(keyOf(want)), have ? "changed" : "deleted", true);
    }
    for (const [k, have] of kernelPolicies) {
      if (this.policies.has(k)) continue;
      const p = have.policy!;
      const owned = p.template ? isOwnedReqid(p.template.reqid) : this.knownPolicies.has(k);
      if (!owned) continue;
      await this.backend.deletePolicy(keyOf(p));
      this.knownPolicies.delete(k);
      r.pruned++;
    }
    if (r.pruned) this.persist();
    return r;
  }

  // ----------------------------------------------------------------- events --

  /**
   * Subscribe to events. Buffered events (raised while nobody listened) are delivered
   * first; an overflow is reported as one DataplaneError EVENT_OVERFLOW.
   */
  watch(listener: EventListener): () => void {
    if (this.overflowed > 0) {
      listener(this.stamp({ $case: "error", value: { code: "EVENT_OVERFLOW", message: `${this.overflowed} events dropped while no client was watching` } }));
      this.overflowed = 0;
    }
    for (const e of this.backlog.splice(0)) listener(e);
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  backlogSize(): number {
    return this.backlog.length;
  }

  private onBackendEvent(kind: BackendEvent): void {
    if (kind.$case === "expire") {
      const want = this.sas.get(saKey(kind.value.id!));
      if (!want) return; // not ours (any more)
      kind = { $case: "expire", value: { ...kind.value, childId: want.childId, connection: want.connection } };
      // A hard expire means the kernel deleted the SA: it is no longer desired.
      if (kind.value.hard) {
        this.sas.delete(saKey(want.id!));
        this.persist();
      }
    }
    this.publish(this.stamp(kind));
  }

  private drift(kind: string, object: string, change: string, repaired: boolean): void {
    this.stats.driftRepaired += repaired ? 1 : 0;
    this.opts.logger?.warn({ kind, object, change, repaired }, "drift: object changed behind our back");
    this.publish(this.stamp({ $case: "drift", value: { kind, object, change, repaired } }));
  }

  private stamp(kind: BackendEvent): dataplane.Event {
    return { time: new Date(), kind };
  }

  private publish(e: dataplane.Event): void {
    if (this.listeners.size > 0) {
      for (const l of this.listeners) l(e);
      return;
    }
    const max = this.opts.eventBacklog ?? 1024;
    if (this.backlog.length >= max) {
      this.backlog.shift();
      this.overflowed++;
      this.stats.eventsDropped++;
    }
    this.backlog.push(e);
  }

  // ------------------------------------------------------------ persistence --

  private serial<T>(fn: () => Promise<T>): Promise<T> {
    const next = this.chain.then(fn, fn);
    this.chain = next.catch(() => undefined);
    return next;
  }

  /** Write the table atomically (tmp file 0600, fsync, rename). It contains SA keys. */
  private persist(): void {
    const file = this.opts.stateFile;
    if (!file) return;
    const state: PersistedState = {
      version: 1,
      sas: [...this.sas.values()].map((s) => dataplane.SecurityAssociation.toJSON(s)),
      policies: [...this.policies.values()].map((p) => dataplane.Policy.toJSON(p)),
      knownReqids: [...this.knownReqids].sort((a, b) => a - b),
      knownPolicies: [...this.knownPolicies.values()].map((k) => ({ selector: dataplane.Selector.toJSON(k.selector), direction: k.direction, mark: k.mark })),
    };
    mkdirSync(dirname(file), { recursive: true, mode: 0o700 });
    const tmp = `${file}.tmp-${process.pid}`;
    const fd = openSync(tmp, "w", 0o600);
    try {
      writeSync(fd, JSON.stringify(state, null, 1));
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    chmodSync(tmp, 0o600);
    renameSync(tmp, file);
  }

  private load(): void {
    const file = this.opts.stateFile;
    if (!file || !existsSync(file)) return;
    let state: PersistedState;
    try {
      state = JSON.parse(readFileSync(file, "utf8")) as PersistedState;
    } catch (e) {
      throw new FleetswanError("STATE_FILE_INVALID", `cannot read dataplane state file ${file}: ${(e as Error).message}`, { file });
    }
    if (state.version !== 1) throw new FleetswanError("STATE_FILE_INVALID", `dataplane state file ${file} has version ${state.version}, expected 1`, { file });
    for (const j of state.sas) {
      const sa = dataplane.SecurityAssociation.fromJSON(j);
      this.sas.set(saKey(sa.id!), sa);
    }
    for (const j of state.policies) {
      const p = dataplane.Policy.fromJSON(j);
      this.policies.set(policyKeyString(keyOf(p)), p);
    }
    for (const r of state.knownReqids ?? []) this.knownReqids.add(r);
    for (const j of state.knownPolicies ?? []) {
      const o = j as { selector: unknown; direction: number; mark: number };
      const key = { selector: dataplane.Selector.fromJSON(o.selector), direction: o.direction, mark: o.mark };
      this.knownPolicies.set(policyKeyString(key), key);
    }
    this.opts.logger?.info({ file, sas: this.sas.size, policies: this.policies.size }, "loaded desired state");
  }
}

// ---------------------------------------------------------------- helpers --

function keyOf(p: Policy): PolicyKey {
  return { selector: p.selector!, direction: p.direction, mark: p.mark };
}

function normalizeSelector(s: dataplane.Selector | undefined, where: string): dataplane.Selector {
  if (!s?.src || !s.dst) throw new ConfigError("selector needs src and dst", where);
  return {
    src: { address: canonicalAddress(s.src.address), length: s.src.length },
    dst: { address: canonicalAddress(s.dst.address), length: s.dst.length },
    protocol: s.protocol,
    srcPort: s.srcPort,
    dstPort: s.dstPort,
  };
}

function normalizeSa(sa: SecurityAssociation): SecurityAssociation {
  if (!sa.id) throw new ConfigError("SA needs an id", "AddSaRequest.sa.id");
  if (!isOwnedReqid(sa.reqid)) throw new ConfigError(`reqid ${sa.reqid} outside the owned range 1..0x7fffffff`, "AddSaRequest.sa.reqid");
  const out: SecurityAssociation = {
    ...sa,
    id: { dst: canonicalAddress(sa.id.dst), spi: sa.id.spi >>> 0, protocol: sa.id.protocol || 50 },
    src: canonicalAddress(sa.src),
    selector: sa.selector?.src ? normalizeSelector(sa.selector, "AddSaRequest.sa.selector") : undefined,
  };
  // The API's rules are XFRM's (key sizes, algorithm pairs, replay window): one validator
  // for every backend. Throws ConfigError without key bytes.
  saToXfrm(out);
  return out;
}

function normalizePolicy(p: Policy): Policy {
  const selector = normalizeSelector(p.selector, "AddPolicyRequest.policy.selector");
  const t = p.template;
  if (t && !isOwnedReqid(t.reqid)) throw new ConfigError(`template reqid ${t.reqid} outside the owned range 1..0x7fffffff`, "AddPolicyRequest.policy.template.reqid");
  const out: Policy = {
    ...p,
    selector,
    template: t ? { ...t, src: t.src ? canonicalAddress(t.src) : "", dst: t.dst ? canonicalAddress(t.dst) : "", protocol: t.protocol || 50 } : undefined,
  };
  out.priority = effectivePriority(out);
  policyToXfrm(out);
  return out;
}

const json = (x: unknown): string => JSON.stringify(x, (_k, v) => (typeof v === "bigint" ? v.toString() : v instanceof Buffer ? v.toString("hex") : v));

function saEqual(a: SecurityAssociation, b: SecurityAssociation): boolean {
  return json(dataplane.SecurityAssociation.toJSON(a)) === json(dataplane.SecurityAssociation.toJSON(b));
}

function policyEqual(a: Policy, b: Policy): boolean {
  return json(dataplane.Policy.toJSON(a)) === json(dataplane.Policy.toJSON(b));
}

/** The kernel's view carries no keys; compare what it reports. */
function saMatchesKernel(want: SecurityAssociation, have: SecurityAssociation): boolean {
  return (
    want.src === have.src &&
    want.reqid === have.reqid &&
    want.mode === have.mode &&
    want.encryption === have.encryption &&
    want.integrity === have.integrity &&
    (want.encap?.srcPort ?? 0) === (have.encap?.srcPort ?? 0) &&
    (want.encap?.dstPort ?? 0) === (have.encap?.dstPort ?? 0) &&
    want.mark === have.mark &&
    want.ifId === have.ifId
  );
}

function policyMatchesKernel(want: Policy, have: PolicyState): boolean {
  const h = have.policy!;
  const cls = (a: dataplane.PolicyAction) => (a === dataplane.PolicyAction.POLICY_ACTION_TRAP ? dataplane.PolicyAction.POLICY_ACTION_PROTECT : a);
  return (
    have.effectivePriority === want.priority &&
    cls(h.action) === cls(want.action) &&
    (h.template?.reqid ?? 0) === (want.template?.reqid ?? 0) &&
    (h.template?.dst ?? "") === (want.template?.dst ?? "") &&
    (h.template?.src ?? "") === (want.template?.src ?? "") &&
    h.ifId === want.ifId
  );
}
