import { createHash, randomBytes } from "node:crypto";
import { lookup } from "node:dns/promises";
import { createInbox, headers as natsHeaders, type KV, type Msg, type NatsConnection, type Subscription } from "nats";
import { ConflictError, FleetswanError, KeyWatcher, NotFoundError, Secret, UnavailableError, type KvChange, type Logger } from "@fleetswan/common";
import { Counter, Gauge, Histogram, type Registry } from "prom-client";
import { controller as api, fleet, keymgr } from "@fleetswan/proto";
import { compileSpec, pskFingerprint, SpecInvalidError, type CompiledFleet, type Resolver } from "./spec/compile.js";
import { buildViews, EMPTY_STATE, nextState, renderGateways, resolveState, secretRefFor, type RenderedGateway, type RenderState } from "./render.js";
import { BUCKET, CONTROLLER_QUEUE, SPEC_KEY, subjects, type CertRecord, type EnrollTicket, type SpecRecord } from "./layout.js";
import { isHostName, isIpLiteral } from "./net.js";

export interface ControllerOptions {
  nc: NatsConnection;
  log: Logger;
  registry?: Registry;
  /** Host name resolution at apply time (default: the system resolver, 5 s timeout). */
  resolve?: Resolver;
  /** Wait this long for keymgr (default 5000 ms). */
  keymgrTimeoutMs?: number;
  /** Re-check that views match the current spec this often (default 30 s; 0 = never). */
  reconcileIntervalMs?: number;
  /** A gateway is "up" when its last status is newer than this (default 30 s). */
  staleAfterMs?: number;
  /** KV replicas for the buckets the controller creates (default 1; 3 in a cluster). */
  replicas?: number;
  /**
   * Make sure keymgr holds every secret of the current spec, sealed to both ends, this
   * often (default 30 s; 0 = only at start and after applies). While secrets are pending
   * the next attempt comes after min(this, 5 s).
   */
  secretReconcileIntervalMs?: number;
  /** Validity of gateway certificates requested from keymgr (default 90 days). */
  certValidDays?: number;
  /**
   * Renew a gateway certificate when less than this fraction of its validity is left
   * (default 0.5: before keymgr's own renewal at 1/3, so the controller knows every
   * certificate it puts into views).
   */
  certRenewFraction?: number;
  /**
   * Secrets the spec no longer uses (psk.<connection>, cert.<gateway>) are deleted from
   * keymgr (record and sealed blobs) this long after a pass first found them orphaned
   * (default 24 h); a revision that uses one again before then cancels its deletion.
   */
  orphanGraceMs?: number;
  now?: () => Date;
}

const enc = new TextEncoder();
/** Agent statuses are stored in fleet-status in batches at most this far apart. */
const STATUS_FLUSH_MS = 20;
/** The controller's KV watches: a lost consumer (dead NATS node) is replaced within 3 heartbeats. */
const WATCH_HEARTBEAT_MS = 2000;
const WATCH_SYNC_TIMEOUT_MS = 30_000;
const dec = new TextDecoder();
const jsonOf = <T>(c: KvChange): T => JSON.parse(dec.decode(c.value)) as T;

export const defaultResolver: Resolver = async (host) => {
  const res = await Promise.race([
    lookup(host, { all: true, verbatim: true }),
    new Promise<never>((_, reject) => setTimeout(() => reject(new Error("timed out after 5 s")), 5000).unref()),
  ]);
  return res.map((r) => r.address);
};

const isWrongSequence = (e: unknown): boolean => /wrong last sequence|key exists/i.test(String((e as Error)?.message ?? e));

function apiError(e: unknown): api.ApiError {
  if (e instanceof SpecInvalidError) return { code: e.code, message: e.message, locations: e.errors };
  if (e instanceof FleetswanError) return { code: e.code, message: e.message, locations: [] };
  return { code: "INTERNAL", message: String((e as Error)?.message ?? e), locations: [] };
}

/** Run `fn` over items with at most `limit` in flight. */
async function parallel<T>(items: T[], limit: number, fn: (t: T) => Promise<void>): Promise<void> {
  let next = 0;
  const workers = Array.from({ length: Math.min(limit, items.length) }, async () => {
    while (next < items.length) await fn(items[next++]!);
  });
  await Promise.all(workers);
}

/**
 * GatewayView.revision (field 2, uint64) read straight from the encoding, without decoding
 * the view: protobuf fields are skipped by wire type until field 2 is found (0 if absent,
 * as decode would say). Throws on a truncated or malformed encoding, like decode.
 */
export function peekViewRevision(b: Uint8Array): bigint {
  let i = 0;
  const varint = (): bigint => {
    let v = 0n;
    for (let shift = 0n; ; shift += 7n) {
      if (i >= b.length || shift > 63n) throw new Error("malformed varint in GatewayView");
      const x = b[i++]!;
      v |= BigInt(x & 0x7f) << shift;
      if (x < 0x80) return v;
    }
  };
  let revision = 0n;
  while (i < b.length) {
    const tag = Number(varint());
    const field = tag >>> 3;
    const wire = tag & 7;
    if (field === 2 && wire === 0) revision = BigInt.asUintN(64, varint()); // the last one wins, as in decode
    else if (wire === 0) varint();
    else if (wire === 1) i += 8;
    else if (wire === 2) {
      const len = Number(varint()); // read before `i +=` reads i
      i += len;
    }
    else if (wire === 5) i += 4;
    else throw new Error(`GatewayView: unsupported wire type ${wire}`);
    if (i > b.length) throw new Error("truncated GatewayView");
  }
  return revision;
}

/** The spec revision inside a cached view's bytes (read once, on demand). */
function viewRevisionOf(c: { value: Uint8Array; viewRevision?: bigint }): bigint {
  return (c.viewRevision ??= peekViewRevision(c.value));
}

const compiledKey = (yaml: string, resolved: Record<string, string[]>): string => createHash("sha256").update(yaml).update("\0").update(JSON.stringify(resolved)).digest("hex");

/** Value of fleet-orphans/<secret>: when a pass first found the secret unused. */
interface OrphanRecord { secret: string; since: string; revision: number }

interface EventRecord { [connection: string]: { code: string; message: string; kind: string; time: string } }

/**
 * The controller: stores spec revisions, renders views, serves the Controller API, keeps
 * agent status and routes commands. Stateless: everything it knows is in NATS KV; any
 * number of replicas may run (API and agent messages are consumed in queue group
 * "controller", KV writes use compare-and-set).
 */
export class Controller {
  readonly #o: Required<Omit<ControllerOptions, "registry">> & { registry?: Registry };
  #spec!: KV;
  #views!: KV;
  #status!: KV;
  #events!: KV;
  #enroll!: KV;
  #certs!: KV;
  #orphans!: KV;
  readonly #certCache = new Map<string, { rec: CertRecord; revision: number }>();
  /** Something outside the spec that views contain (certificates) changed: re-render. */
  #viewsDirty = false;
  readonly #replicaId = randomBytes(6).toString("hex");
  #subs: Subscription[] = [];
  #timers: NodeJS.Timeout[] = [];
  #stopped = false;
  /** Last spec revision whose views this replica checked/wrote. */
  #reconciled = 0;
  #reconciling: Promise<void> | undefined;
  #secretsRun: Promise<string[]> | undefined;
  /** "name|gw,gw" of secrets keymgr confirmed for those gateways (a hint for the apply path). */
  readonly #secretsOk = new Set<string>();
  readonly #orphansLogged = new Set<string>();
  #secretsPendingCount = 0;
  /** Caches fed by KV watches (read-only copies of NATS state). */
  /** Latest AgentStatus per gateway as stored (bytes), decoded when first asked for. */
  readonly #statusCache = new Map<string, { value: Uint8Array; decoded?: fleet.AgentStatus | null }>();
  /** Statuses to store in fleet-status, written together every STATUS_FLUSH_MS (latest per gateway). */
  readonly #statusOut = new Map<string, Uint8Array>();
  #statusTimer: NodeJS.Timeout | undefined;
  readonly #eventCache = new Map<string, EventRecord>();
  /** KV revision and bytes of each view as last seen (a hint: writes still compare-and-set). */
  readonly #viewCache = new Map<string, { revision: number; value: Uint8Array; viewRevision?: bigint }>();
  /** Compiled fleets by hash of (YAML, resolved names): a revision is parsed once per replica. */
  readonly #compiled = new Map<string, CompiledFleet>();
  #current: { revision: number; record: SpecRecord; fleet: CompiledFleet } | undefined;
  #ready = false;
  readonly #m: {
    applies: Counter<"outcome">;
    commandDuration: Histogram<"verb">;
    viewWrites: Counter<"result">;
    secretReconciles: Counter<"outcome">;
    secretsPending: Gauge;
    secretsOrphaned: Gauge;
    secretsDeleted: Counter;
  };

  constructor(opts: ControllerOptions) {
    this.#o = {
      resolve: defaultResolver,
      keymgrTimeoutMs: 5000,
      reconcileIntervalMs: 30_000,
      staleAfterMs: 30_000,
      replicas: 1,
      secretReconcileIntervalMs: 30_000,
      certValidDays: 90,
      certRenewFraction: 0.5,
      orphanGraceMs: 86_400_000,
      now: () => new Date(),
      ...opts,
    };
    const registers = opts.registry ? [opts.registry] : [];
    this.#m = {
      applies: new Counter({ name: "fleetswan_controller_applies_total", help: "Spec applies by outcome (ok, invalid, conflict, error).", labelNames: ["outcome"], registers }),
      commandDuration: new Histogram({ name: "fleetswan_controller_command_duration_seconds", help: "Time from an operator command to the agents' replies.", labelNames: ["verb"], buckets: [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30], registers }),
      viewWrites: new Counter({ name: "fleetswan_controller_view_writes_total", help: "Gateway view writes by result (written, unchanged, deleted, superseded).", labelNames: ["result"], registers }),
      secretReconciles: new Counter({ name: "fleetswan_controller_secret_reconciles_total", help: "Passes that made sure keymgr holds every secret of the spec, by outcome (ok, pending, keymgr_unavailable, cached).", labelNames: ["outcome"], registers }),
      secretsPending: new Gauge({ name: "fleetswan_controller_secrets_pending", help: "Secrets the current spec needs that keymgr does not hold (or not for both ends) as of the last pass.", registers }),
      secretsOrphaned: new Gauge({ name: "fleetswan_controller_secrets_orphaned", help: "Secrets keymgr holds (psk.*, cert.*) that the current spec no longer uses (deleted after the grace period).", registers }),
      secretsDeleted: new Counter({ name: "fleetswan_controller_secrets_deleted_total", help: "Orphaned secrets deleted from keymgr after the grace period.", registers }),
    };
    const self = this;
    new Gauge({
      name: "fleetswan_controller_gateways", help: "Gateways of the current spec by state (up: status within 30 s, stale, never-seen).", labelNames: ["state"], registers,
      collect() {
        const counts: Record<string, number> = { up: 0, stale: 0, "never-seen": 0 };
        for (const g of self.fleetStatus().gateways) counts[g.state] = (counts[g.state] ?? 0) + 1;
        for (const [k, v] of Object.entries(counts)) this.set({ state: k }, v);
      },
    });
    new Gauge({
      name: "fleetswan_controller_connections", help: "Connection ends: desired (in the spec) and by reported state (up = established, connecting, routed, down, unknown).", labelNames: ["state"], registers,
      collect() {
        const st = self.fleetStatus();
        const counts: Record<string, number> = { desired: st.connections.length, up: 0, connecting: 0, routed: 0, down: 0, unknown: 0 };
        for (const c of st.connections) counts[c.state] = (counts[c.state] ?? 0) + 1;
        for (const [k, v] of Object.entries(counts)) this.set({ state: k }, v);
      },
    });
    new Gauge({
      name: "fleetswan_controller_revision_lag", help: "Spec revisions the gateway's applied view is behind (one series per gateway of the spec: bounded by the fleet size).", labelNames: ["gateway"], registers,
      collect() {
        this.reset();
        for (const g of self.fleetStatus().gateways) this.set({ gateway: g.name }, Number(g.revisionLag));
      },
    });
    new Gauge({
      name: "fleetswan_controller_spec_revision", help: "Current spec revision (KV revision of fleet-spec/spec).", registers,
      collect() { this.set(self.#current?.revision ?? 0); },
    });
  }

  get ready(): boolean {
    return this.#ready && !this.#o.nc.isClosed();
  }

  async start(): Promise<void> {
    const js = this.#o.nc.jetstream();
    const r = this.#o.replicas;
    this.#spec = await js.views.kv(BUCKET.spec, { history: 64, replicas: r });
    this.#views = await js.views.kv(BUCKET.views, { history: 2, replicas: r });
    this.#status = await js.views.kv(BUCKET.status, { history: 1, replicas: r });
    this.#events = await js.views.kv(BUCKET.events, { history: 1, replicas: r });
    this.#enroll = await js.views.kv(BUCKET.enroll, { history: 1, replicas: r });
    this.#certs = await js.views.kv(BUCKET.certs, { history: 2, replicas: r });
    this.#orphans = await js.views.kv(BUCKET.orphans, { history: 1, replicas: r });
    let certsInitialised = false;
    await this.#watchInto(BUCKET.certs, (e) => {
      const before = this.#certCache.get(e.key)?.rec.certificatePem;
      if (e.op === "PUT") this.#certCache.set(e.key, { rec: jsonOf<CertRecord>(e), revision: e.revision });
      else this.#certCache.delete(e.key);
      if (certsInitialised && this.#certCache.get(e.key)?.rec.certificatePem !== before) {
        // A certificate changed (this or another replica renewed it): views follow.
        this.#viewsDirty = true;
        void this.reconcile().catch((err) => this.#o.log.warn({ err }, "reconcile after certificate change failed"));
      }
    });
    certsInitialised = true;
    await this.#watchInto(BUCKET.status, (e) => {
      // Decoded on demand (#statusOf): a convergence of 1,000 gateways stores 1,000 statuses.
      if (e.op === "PUT") this.#statusCache.set(e.key, { value: e.value });
      else this.#statusCache.delete(e.key);
    });
    await this.#watchInto(BUCKET.events, (e) => {
      if (e.op === "PUT") this.#eventCache.set(e.key, jsonOf<EventRecord>(e));
      else this.#eventCache.delete(e.key);
    });
    await this.#watchInto(BUCKET.views, (e) => {
      // The view's own revision is read only when needed (#viewRevisionOf): an apply of
      // 1,000 views echoes 1,000 entries through this watch. The echo of a write of ours
      // is what the cache holds already (with its revision known): kept as it is.
      if (e.op === "PUT") {
        if (this.#viewCache.get(e.key)?.revision !== e.revision) this.#viewCache.set(e.key, { revision: e.revision, value: e.value });
      } else this.#viewCache.delete(e.key);
    });
    await this.#watchInto(BUCKET.spec, (e) => {
      if (e.op !== "PUT") return;
      void this.#loadCurrent(e.revision, jsonOf<SpecRecord>(e)).catch((err) => this.#o.log.error({ err, revision: e.revision }, "cannot load spec revision"));
    });
    this.#subs.push(this.#o.nc.subscribe(subjects.controllerApiAll, { queue: CONTROLLER_QUEUE, callback: (err, msg) => { if (!err) void this.#serve(msg); } }));
    this.#subs.push(this.#o.nc.subscribe(subjects.statusAll, { queue: CONTROLLER_QUEUE, callback: (err, msg) => { if (!err) void this.#onStatus(msg).catch((e) => this.#o.log.warn({ err: e, subject: msg.subject }, "status not stored")); } }));
    this.#subs.push(this.#o.nc.subscribe(subjects.eventsAll, { queue: CONTROLLER_QUEUE, callback: (err, msg) => { if (!err) void this.#onEvent(msg).catch((e) => this.#o.log.warn({ err: e, subject: msg.subject }, "event not stored")); } }));
    await this.#o.nc.flush();
    await this.reconcile();
    if (this.#o.reconcileIntervalMs > 0) {
      const t = setInterval(() => void this.reconcile().catch((err) => this.#o.log.warn({ err }, "reconcile failed")), this.#o.reconcileIntervalMs);
      t.unref();
      this.#timers.push(t);
    }
    await this.reconcileSecrets().catch((err) => this.#o.log.warn({ err }, "secret reconcile failed"));
    this.#scheduleSecrets();
    this.#ready = true;
    this.#o.log.info({ revision: this.#current?.revision ?? 0 }, "controller started");
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    this.#ready = false;
    for (const t of this.#timers) clearInterval(t);
    for (const s of this.#subs) s.unsubscribe();
    if (this.#statusTimer) {
      clearTimeout(this.#statusTimer);
      this.#flushStatuses();
    }
    await this.#reconciling?.catch(() => undefined);
    await this.#secretsRun?.catch(() => undefined);
  }

  /** Watch a whole bucket into memory (kept through NATS node losses); resolves once the initial values are in. */
  async #watchInto(bucket: string, apply: (e: KvChange) => void): Promise<void> {
    const w = new KeyWatcher({ nc: this.#o.nc, bucket, key: ">", onChange: apply, log: this.#o.log, heartbeatMs: WATCH_HEARTBEAT_MS });
    this.#subs.push({ unsubscribe: () => w.stop() } as unknown as Subscription);
    w.start();
    await w.waitSynced(WATCH_SYNC_TIMEOUT_MS);
  }

  async #loadCurrent(revision: number, record: SpecRecord): Promise<void> {
    if (this.#current && this.#current.revision >= revision) return;
    const f = await this.#compileRecord(record);
    if (!this.#current || this.#current.revision < revision) this.#current = { revision, record, fleet: f };
  }

  async #compileRecord(record: SpecRecord): Promise<CompiledFleet> {
    const key = compiledKey(record.yaml, record.resolved);
    const hit = this.#compiled.get(key);
    if (hit) return hit;
    const f = await compileSpec(record.yaml, record.source, async (h) => {
      const r = record.resolved[h];
      if (!r) throw new Error("not resolved when this revision was applied");
      return r;
    });
    this.#remember(key, f);
    return f;
  }

  #remember(key: string, f: CompiledFleet): void {
    this.#compiled.delete(key);
    this.#compiled.set(key, f);
    while (this.#compiled.size > 4) this.#compiled.delete(this.#compiled.keys().next().value!);
  }

  async #currentRecord(): Promise<{ revision: number; record?: SpecRecord }> {
    const e = await this.#spec.get(SPEC_KEY);
    if (!e || e.operation !== "PUT") return { revision: e?.revision ?? 0 };
    return { revision: e.revision, record: e.json<SpecRecord>() };
  }

  // ------------------------------------------------------------- apply / diff

  /** ApplySpec (dryRun = DiffSpec). Throws SpecInvalidError, ConflictError, UnavailableError. */
  async apply(req: api.ApplySpecRequest, dryRun = false): Promise<api.ApplySpecResponse> {
    const source = req.sourceName || "fleet.yaml";
    for (let attempt = 0; ; attempt++) {
      const t0 = performance.now();
      const c0 = process.cpuUsage();
      const lap = (what: string) => {
        if (!this.#o.log.isLevelEnabled("debug")) return;
        const c = process.cpuUsage(c0);
        this.#o.log.debug({ ms: Math.round(performance.now() - t0), cpuMs: Math.round((c.user + c.system) / 1000) }, `apply: ${what}`);
      };
      const cur = await this.#currentRecord();
      const base = Number(req.baseRevision);
      if (!req.force && !dryRun && base !== cur.revision) {
        throw new ConflictError(`the spec is at revision ${cur.revision} but this change is based on revision ${base}; review \`fleetswan diff\` and apply again with --base-revision ${cur.revision}`, { current: cur.revision, base });
      }
      const compiled = await compileSpec(req.specYaml, source, this.#o.resolve);
      lap("compiled");
      const prev: RenderState = cur.record ? resolveState(cur.record.state, cur.revision) : EMPTY_STATE;
      const rendered = renderGateways(compiled);
      const now = this.#o.now();
      const { state, changes } = nextState(rendered, prev, 0, now);
      const warnings = [...compiled.warnings];
      if (compiled.connections.some((c) => c.manualSpi !== undefined)) warnings.push("manual keying (manual.spi) is validated but not yet carried in gateway views; those connections are loaded as IKE connections");
      if (dryRun) return { error: undefined, revision: BigInt(cur.revision), changes, warnings };

      // Operator-supplied PSKs go to keymgr first: the stored spec only says "@keymgr".
      const psks: Record<string, string> = { ...(cur.record?.psks ?? {}) };
      for (const c of compiled.connections) {
        if (!c.peer?.psk) continue;
        const ref = secretRefFor(c, c.gateways[0]!);
        const fp = pskFingerprint(c.peer.psk);
        if (psks[ref] === fp) continue;
        await this.#storeSecret(ref, c.peer.psk, c.gateways);
        psks[ref] = fp;
      }
      const record: SpecRecord = { format: 1, yaml: compiled.redactedYaml, source, appliedAt: now.toISOString(), base: cur.revision, resolved: compiled.resolved, state, psks };
      // The spec watch (this replica's #loadCurrent, reconcile) finds it compiled: parse once.
      this.#remember(compiledKey(record.yaml, record.resolved), compiled);
      let revision: number;
      try {
        revision = await this.#storeSpec(record, cur.revision);
      } catch (e) {
        if (isWrongSequence(e)) {
          // Someone else applied between our read and our write.
          if (req.force && attempt < 5) continue;
          throw new ConflictError(`the spec changed while this change was applied (it was based on revision ${cur.revision}); review \`fleetswan diff\` and apply again`, { base: cur.revision });
        }
        throw new UnavailableError(`cannot store the spec in KV bucket ${BUCKET.spec}: ${(e as Error).message}`, {}, { cause: e });
      }
      lap("stored");
      if (!this.#current || this.#current.revision < revision) this.#current = { revision, record, fleet: compiled };
      const resolved = resolveState(state, revision);
      // Skip gateways whose view hash did not change and whose stored view is of that
      // revision (no build, no encode, no KV round trip); the periodic reconcile still
      // compares every view byte for byte.
      const toWrite = new Map<string, RenderedGateway>();
      for (const [gw, rg] of rendered) {
        const old = prev.views[gw];
        const cached = this.#viewCache.get(gw);
        if (old && old.h === rg.hash && cached && viewRevisionOf(cached) === BigInt(resolved.views[gw]!.r)) this.#m.viewWrites.inc({ result: "unchanged" });
        else toWrite.set(gw, rg);
      }
      try {
        await this.#writeViews(buildViews(toWrite, resolved, (gw) => this.#certFor(gw)), Object.keys(prev.views).filter((g) => !rendered.has(g)), revision);
      } catch (e) {
        // The revision is stored and in force: the periodic reconcile (any replica) writes the views.
        this.#o.log.warn({ err: (e as Error).message, revision }, "views not all written; the reconcile retries");
        warnings.push(`revision ${revision} is stored, but not every view could be written yet (${(e as Error).message}); the controller keeps retrying`);
        this.#viewsDirty = true;
      }
      lap("views written");
      this.#reconciled = Math.max(this.#reconciled, revision);
      warnings.push(...(await this.reconcileSecrets({ cached: true })));
      this.#o.log.info({ revision, base: cur.revision, gateways: changes.length, source }, "spec applied");
      return { error: undefined, revision: BigInt(revision), changes, warnings };
    }
  }

  /**
   * Compare-and-set the spec. A NATS cluster that is electing a stream leader (a node
   * died) answers 503 or not at all for a few seconds: retry for up to 15 s. After a
   * timeout the write may have happened: a "wrong sequence" is then checked against what
   * is stored (our own record = success).
   */
  async #storeSpec(record: SpecRecord, base: number): Promise<number> {
    const bytes = enc.encode(JSON.stringify(record));
    const deadline = Date.now() + 15_000;
    let uncertain = false;
    for (let wait = 250; ; wait = Math.min(wait * 2, 2000)) {
      try {
        return base === 0 ? await this.#spec.create(SPEC_KEY, bytes) : await this.#spec.update(SPEC_KEY, bytes, base);
      } catch (e) {
        const msg = String((e as Error)?.message ?? e);
        if (isWrongSequence(e) && uncertain) {
          const now = await this.#spec.get(SPEC_KEY);
          if (now?.operation === "PUT" && Buffer.from(now.value).equals(Buffer.from(bytes))) return now.revision;
        }
        const transient = /^503$|no responders|TIMEOUT|timed? ?out/i.test(msg);
        if (!transient || Date.now() + wait > deadline) throw e;
        if (/TIMEOUT|timed? ?out/i.test(msg)) uncertain = true;
        this.#o.log.warn({ err: msg }, "spec store failed transiently (NATS cluster failover?); retrying");
        await new Promise((r) => setTimeout(r, wait));
      }
    }
  }

  async #keymgr<T>(method: string, body: Uint8Array, decode: (b: Uint8Array) => T): Promise<T> {
    try {
      const m = await this.#o.nc.request(subjects.keymgrApi(method), body, { timeout: this.#o.keymgrTimeoutMs });
      return decode(m.data);
    } catch (e) {
      throw new UnavailableError(`keymgr did not answer ${method} (${(e as Error).message})`, { method }, { cause: e });
    }
  }

  async #storeSecret(name: string, value: Secret, gateways: string[]): Promise<void> {
    const info = await this.#keymgr("StoreSecret", keymgr.StoreSecretRequest.encode({ name, value: value.reveal(), gateways }).finish(), (b) => keymgr.SecretInfo.decode(b)).catch((e: UnavailableError) => {
      throw new UnavailableError(`${e.message}: cannot store the PSK ${name}; nothing was applied`, { secret: name });
    });
    if (info.error?.code) throw new FleetswanError(info.error.code, `keymgr refused secret ${name}: ${info.error.message}`, { secret: name });
  }

  /** The PSK secrets the current spec needs: name -> the gateways that use it, and whether keymgr may generate it. */
  static wantedSecrets(f: CompiledFleet): Map<string, { gateways: string[]; generate: boolean }> {
    const out = new Map<string, { gateways: string[]; generate: boolean }>();
    for (const c of f.connections) {
      if (c.options.auth !== "psk") continue;
      // Operator-supplied PSKs (psk: or psk: "@keymgr") are stored by apply; only keymgr's own are generated.
      out.set(secretRefFor(c, c.gateways[0]!), { gateways: [...c.gateways].sort(), generate: !c.peer?.psk && !c.peer?.pskKept });
    }
    return out;
  }

  /**
   * Secrets as a reconcile: make sure keymgr holds every PSK the current spec needs and
   * that each is assigned to (sealed for) both ends. Runs at start, after each apply and
   * on a timer, so a keymgr that was down when a connection appeared is caught up without
   * another apply. GenerateSecret is idempotent in keymgr (an existing secret is only
   * sealed again) and SealForAgents only adds gateways, so two replicas doing this at
   * once is harmless (a CONFLICT from keymgr's compare-and-set is retried once).
   * `cached`: skip keymgr entirely when every wanted secret was confirmed before (the
   * apply path); the timer always asks keymgr (ListSecrets, one request).
   * Returns warnings (pending secrets) for ApplySpec.
   */
  reconcileSecrets(opts: { cached?: boolean } = {}): Promise<string[]> {
    const run = async (): Promise<string[]> => {
      const cur = this.#current;
      if (!cur || this.#stopped) return [];
      const wanted = Controller.wantedSecrets(cur.fleet);
      const key = (name: string, gws: string[]) => `${name}|${gws.join(",")}`;
      if (opts.cached && [...wanted].every(([n, w]) => this.#secretsOk.has(key(n, w.gateways))) && this.#certsDue(cur.fleet).length === 0) {
        this.#m.secretReconciles.inc({ outcome: "cached" });
        this.#m.secretsPending.set(0);
        this.#secretsPendingCount = 0;
        return [];
      }
      let list: keymgr.ListSecretsResponse;
      try {
        list = await this.#keymgr("ListSecrets", keymgr.ListSecretsRequest.encode({}).finish(), (b) => keymgr.ListSecretsResponse.decode(b));
      } catch (e) {
        const pending = [...wanted].filter(([n, w]) => !this.#secretsOk.has(key(n, w.gateways))).map(([n]) => n);
        pending.push(...this.#certsDue(cur.fleet).map((d) => `cert.${d.gw}`));
        this.#setPending(pending.length);
        this.#m.secretReconciles.inc({ outcome: "keymgr_unavailable" });
        if (!pending.length) return [];
        this.#o.log.warn({ pending: pending.length }, `${(e as Error).message}: secrets pending, retrying`);
        return [`${(e as Error).message}: ${pending.length} secret(s) pending (${pending.slice(0, 5).join(", ")}${pending.length > 5 ? ", ..." : ""}); the controller retries until keymgr answers (no re-apply needed)`];
      }
      const have = new Map(list.secrets.map((i) => [i.name, i]));
      const warnings: string[] = [];
      const pending: string[] = [];
      let unreachable = false;
      await parallel([...wanted], 16, async ([name, w]) => {
        const info = have.get(name);
        if (info && w.gateways.every((g) => info.gateways.includes(g))) { this.#secretsOk.add(key(name, w.gateways)); return; }
        if (unreachable) { pending.push(name); return; }
        if (!info && !w.generate) {
          pending.push(name);
          warnings.push(`secret ${name}: the spec says psk: "@keymgr" but keymgr has no such secret; apply the spec with the PSK value`);
          return;
        }
        for (let attempt = 0; ; attempt++) {
          try {
            const error = info
              ? (await this.#keymgr("SealForAgents", keymgr.SealForAgentsRequest.encode({ name, gateways: w.gateways }).finish(), (b) => keymgr.SealForAgentsResponse.decode(b))).error
              : (await this.#keymgr("GenerateSecret", keymgr.GenerateSecretRequest.encode({ name, gateways: w.gateways }).finish(), (b) => keymgr.SecretInfo.decode(b))).error;
            if (error?.code === "CONFLICT" && attempt === 0) continue; // another replica wrote it just now
            if (error?.code) { pending.push(name); warnings.push(`keymgr: ${name}: ${error.code}: ${error.message}`); return; }
            this.#secretsOk.add(key(name, w.gateways));
            this.#o.log.info({ secret: name, gateways: w.gateways, generated: !info }, info ? "secret assigned to its gateways" : "secret generated");
            return;
          } catch (e) {
            unreachable = true;
            pending.push(name);
            warnings.push(`${(e as Error).message}: secret ${name} pending (retried automatically)`);
            return;
          }
        }
      });
      const certs = await this.#reconcileCerts(cur.fleet, new Map(list.secrets.map((i) => [i.name, i.version])));
      warnings.push(...certs.warnings);
      for (let i = 0; i < certs.pending; i++) pending.push("cert");
      // Secrets of connections (and certificates of gateways) no longer in the spec:
      // deleted from keymgr after the grace period (docs/nats-layout.md "Secrets of
      // removed connections"), so an in-flight rollback keeps its PSK.
      const usedCerts = new Set(this.#certGateways(cur.fleet).map((g) => `cert.${g}`));
      const orphans = list.secrets.map((i) => i.name).filter((n) => (n.startsWith("psk.") && !wanted.has(n)) || (n.startsWith("cert.") && !usedCerts.has(n)));
      this.#m.secretsOrphaned.set(orphans.length);
      for (const n of orphans) {
        if (this.#orphansLogged.has(n)) continue;
        this.#orphansLogged.add(n);
        this.#o.log.info({ secret: n, graceSeconds: this.#o.orphanGraceMs / 1000 }, "secret no longer used by the spec; deleted after the grace period unless a revision uses it again");
      }
      for (const n of [...this.#orphansLogged]) if (!orphans.includes(n)) this.#orphansLogged.delete(n);
      warnings.push(...(await this.#collectOrphans(orphans, cur.revision)));
      this.#setPending(pending.length);
      this.#m.secretReconciles.inc({ outcome: pending.length ? "pending" : "ok" });
      return warnings;
    };
    // One pass at a time per replica; a request during a pass runs once more after it.
    const next = (this.#secretsRun ?? Promise.resolve([] as string[])).catch(() => []).then(run);
    this.#secretsRun = next;
    void next.finally(() => { if (this.#secretsRun === next) this.#secretsRun = undefined; }).catch(() => undefined);
    return next;
  }

  /**
   * Orphaned secrets: fleet-orphans/<secret> records when a pass first saw each one
   * (create = compare-and-set, so replicas agree on the time). An entry whose secret is
   * used again (or is gone) is removed: that cancels the deletion. Past the grace period
   * the secret is deleted through keymgr's DeleteSecret, but only by a replica whose
   * spec revision is the stored one (a replica that has not seen the newest revision
   * must not delete what it might use).
   */
  async #collectOrphans(orphans: string[], revision: number): Promise<string[]> {
    const warnings: string[] = [];
    const now = this.#o.now().getTime();
    const orphaned = new Set(orphans);
    const entries = new Map<string, { since: number; kvRevision: number }>();
    try {
      for await (const k of await this.#orphans.keys()) {
        const e = await this.#orphans.get(k);
        if (e?.operation === "PUT") entries.set(k, { since: Date.parse(e.json<OrphanRecord>().since), kvRevision: e.revision });
      }
    } catch (e) {
      this.#o.log.warn({ err: (e as Error).message }, "cannot read fleet-orphans; orphaned secrets are kept this pass");
      return warnings;
    }
    for (const [name, e] of entries) {
      if (orphaned.has(name)) continue;
      await this.#orphans.delete(name, { previousSeq: e.kvRevision }).catch(() => undefined);
      this.#o.log.info({ secret: name }, "secret is used again (or gone): its deletion is cancelled");
    }
    let upToDate: boolean | undefined;
    for (const name of orphans) {
      const e = entries.get(name);
      if (!e) {
        const rec: OrphanRecord = { secret: name, since: new Date(now).toISOString(), revision };
        await this.#orphans.create(name, enc.encode(JSON.stringify(rec))).catch(() => undefined); // another replica was first
        continue;
      }
      if (e.since + this.#o.orphanGraceMs > now) continue;
      upToDate ??= (await this.#currentRecord()).revision === revision;
      if (!upToDate) break;
      try {
        const res = await this.#keymgr("DeleteSecret", keymgr.DeleteSecretRequest.encode({ name }).finish(), (b) => keymgr.DeleteSecretResponse.decode(b));
        if (res.error?.code) {
          warnings.push(`keymgr: deleting orphaned secret ${name}: ${res.error.code}: ${res.error.message}`);
          continue;
        }
        await this.#orphans.delete(name, { previousSeq: e.kvRevision }).catch(() => undefined);
        this.#m.secretsDeleted.inc();
        this.#o.log.info({ secret: name, orphanedSince: new Date(e.since).toISOString(), blobs: res.blobsDeleted }, "orphaned secret deleted after the grace period");
      } catch (err) {
        this.#o.log.warn({ secret: name, err: (err as Error).message }, "orphaned secret not deleted yet (keymgr unavailable); retried next pass");
        break;
      }
    }
    return warnings;
  }

  #setPending(n: number): void {
    this.#secretsPendingCount = n;
    this.#m.secretsPending.set(n);
  }

  /** Secrets pending after the last pass (for tests and /readyz diagnostics). */
  get secretsPending(): number {
    return this.#secretsPendingCount;
  }

  #scheduleSecrets(): void {
    if (this.#stopped || this.#o.secretReconcileIntervalMs <= 0) return;
    const every = this.#o.secretReconcileIntervalMs;
    const delay = this.#secretsPendingCount > 0 ? Math.min(every, 5000) : every;
    const t = setTimeout(() => {
      this.#timers.splice(this.#timers.indexOf(t), 1);
      void this.reconcileSecrets().catch((err) => this.#o.log.warn({ err }, "secret reconcile failed")).finally(() => this.#scheduleSecrets());
    }, delay);
    t.unref();
    this.#timers.push(t);
  }

  #certFor(gw: string): { certificatePem: string; caPem: string } | undefined {
    const c = this.#certCache.get(gw)?.rec;
    return c?.certificatePem ? { certificatePem: c.certificatePem, caPem: c.caPem } : undefined;
  }

  /** subjectAltNames of a gateway certificate: its IKE identity (FQDN or IP) and its addresses. */
  static certNames(g: { id: string; addresses: string[] }): { dnsNames: string[]; ipAddresses: string[] } {
    const ips = new Set(g.addresses.filter(isIpLiteral));
    const dns = new Set<string>();
    if (isIpLiteral(g.id)) ips.add(g.id);
    else if (isHostName(g.id)) dns.add(g.id.toLowerCase());
    // user@fqdn and DN identities: keymgr's proto carries no email SAN; the subject is CN=<gateway>.
    return { dnsNames: [...dns].sort(), ipAddresses: [...ips].sort() };
  }

  /** Certificates to (re)issue: missing, other names, renewal due, or replaced in keymgr behind our back. */
  #certsDue(f: CompiledFleet, keymgrVersions?: Map<string, number>): { gw: string; dnsNames: string[]; ipAddresses: string[]; why: string }[] {
    const now = this.#o.now().getTime();
    const out: { gw: string; dnsNames: string[]; ipAddresses: string[]; why: string }[] = [];
    for (const gw of this.#certGateways(f)) {
      const names = Controller.certNames(f.gateways.get(gw)!);
      const rec = this.#certCache.get(gw)?.rec;
      let why = "";
      if (!rec?.certificatePem) why = "new";
      else if (rec.dnsNames.join() !== names.dnsNames.join() || rec.ipAddresses.join() !== names.ipAddresses.join()) why = "names changed";
      else if (Date.parse(rec.notAfter) - now < rec.validDays * 86_400_000 * this.#o.certRenewFraction) why = "renewal due";
      else if (keymgrVersions && keymgrVersions.get(`cert.${gw}`) !== rec.keymgrVersion) why = "replaced in keymgr";
      if (why) out.push({ gw, ...names, why });
    }
    return out;
  }

  /**
   * Issue (or renew) the certificates of gateways with pubkey connections through keymgr
   * (IssueCertificate) and record them in fleet-certs/<gw>. One replica per gateway: it
   * first claims the record with compare-and-set (the claim expires after 60 s).
   * Returns warnings; views are re-rendered when a certificate changed.
   */
  async #reconcileCerts(f: CompiledFleet, keymgrVersions: Map<string, number>): Promise<{ warnings: string[]; pending: number }> {
    const due = this.#certsDue(f, keymgrVersions);
    const warnings: string[] = [];
    let pending = 0;
    let changed = false;
    await parallel(due, 4, async (d) => {
      const now = this.#o.now();
      const entry = this.#certCache.get(d.gw);
      if (entry?.rec.claim && Date.parse(entry.rec.claim.until) > Date.now()) { pending++; return; } // another replica is on it
      const claimed: CertRecord = entry ? { ...entry.rec, claim: { until: new Date(Date.now() + 60_000).toISOString() } }
        : { gateway: d.gw, certificatePem: "", caPem: "", notAfter: "", issuedAt: "", validDays: this.#o.certValidDays, dnsNames: [], ipAddresses: [], keymgrVersion: 0, claim: { until: new Date(Date.now() + 60_000).toISOString() } };
      let claimRev: number;
      try {
        const bytes = enc.encode(JSON.stringify(claimed));
        claimRev = entry ? await this.#certs.update(d.gw, bytes, entry.revision) : await this.#certs.create(d.gw, bytes);
      } catch (e) {
        if (isWrongSequence(e)) { pending++; return; } // another replica claimed it first
        throw e;
      }
      try {
        const res = await this.#keymgr("IssueCertificate", keymgr.IssueCertificateRequest.encode({ gateway: d.gw, dnsNames: d.dnsNames, ipAddresses: d.ipAddresses, keyType: "ecdsa-p256", validDays: this.#o.certValidDays }).finish(), (b) => keymgr.IssueCertificateResponse.decode(b));
        if (res.error?.code) throw new FleetswanError(res.error.code, `keymgr refused a certificate for ${d.gw}: ${res.error.message}`);
        const list = await this.#keymgr("ListSecrets", keymgr.ListSecretsRequest.encode({}).finish(), (b) => keymgr.ListSecretsResponse.decode(b));
        const rec: CertRecord = {
          gateway: d.gw, certificatePem: res.certificatePem, caPem: res.caPem, notAfter: (res.notAfter ?? now).toISOString(), issuedAt: now.toISOString(),
          validDays: this.#o.certValidDays, dnsNames: d.dnsNames, ipAddresses: d.ipAddresses,
          keymgrVersion: list.secrets.find((x) => x.name === res.secretName)?.version ?? 0,
        };
        const rev = await this.#certs.update(d.gw, enc.encode(JSON.stringify(rec)), claimRev);
        this.#certCache.set(d.gw, { rec, revision: rev });
        changed = true;
        this.#o.log.info({ gateway: d.gw, why: d.why, notAfter: rec.notAfter, dnsNames: d.dnsNames, ipAddresses: d.ipAddresses }, "gateway certificate issued");
      } catch (e) {
        pending++;
        warnings.push(`certificate for ${d.gw} (${d.why}) pending: ${(e as Error).message}`);
        // Release the claim so that the next pass (any replica) tries again.
        const back: CertRecord = { ...claimed };
        delete back.claim;
        await this.#certs.update(d.gw, enc.encode(JSON.stringify(back)), claimRev).catch(() => undefined);
      }
    });
    if (changed) await this.#refreshViews();
    return { warnings, pending };
  }

  /** Re-render the current revision's views now (after a certificate change). */
  async #refreshViews(): Promise<void> {
    await this.#reconciling?.catch(() => undefined);
    this.#viewsDirty = true;
    await this.reconcile();
  }

  /** Gateways that need a certificate (local end of a pubkey connection). */
  #certGateways(f: CompiledFleet): string[] {
    const out = new Set<string>();
    for (const c of f.connections) if (c.options.auth === "pubkey") for (const g of c.gateways) out.add(g);
    return [...out].sort();
  }

  /**
   * Write views whose bytes changed. Compare-and-set per key, and never replace a view
   * rendered from a newer revision: concurrent replicas cannot go backwards.
   * Fast path: every view is published in one batch with the KV revision the watch cache
   * knows as expected last sequence (#publishBatch: plain publishes with a header, acks
   * collected on one inbox subscription); only batch writes that failed (sequence
   * mismatch, timeout, no responders) go through the per-view path below, which reads
   * the key first.
   */
  async #writeViews(views: Map<string, fleet.GatewayView>, removed: string[], revision: number): Promise<void> {
    const slow: fleet.GatewayView[] = [];
    const batch: { view: fleet.GatewayView; key: string; bytes: Uint8Array; expect: number }[] = [];
    for (const view of views.values()) {
      const bytes = fleet.GatewayView.encode(view).finish();
      const cached = this.#viewCache.get(view.gateway);
      // No cache entry (the watch holds the whole bucket): a new key, written with expected
      // sequence 0; a deleted one fails that and takes the per-view path.
      if (!cached) { batch.push({ view, key: view.gateway, bytes, expect: 0 }); continue; }
      if (Buffer.from(cached.value).equals(Buffer.from(bytes))) { this.#m.viewWrites.inc({ result: "unchanged" }); continue; }
      if (viewRevisionOf(cached) > view.revision) { this.#m.viewWrites.inc({ result: "superseded" }); continue; }
      batch.push({ view, key: view.gateway, bytes, expect: cached.revision });
    }
    if (batch.length) {
      const acks = await this.#publishBatch(`$KV.${BUCKET.views}.`, batch);
      acks.forEach((a, i) => {
        const b = batch[i]!;
        if (typeof a === "number") {
          this.#m.viewWrites.inc({ result: "written" });
          const c = this.#viewCache.get(b.key);
          if (!c || c.revision < a) this.#viewCache.set(b.key, { revision: a, value: b.bytes, viewRevision: b.view.revision });
        } else slow.push(b.view); // re-read and retry one by one
      });
    }
    await parallel(slow, 64, async (view) => {
      const bytes = fleet.GatewayView.encode(view).finish();
      for (let attempt = 0; attempt < 10; attempt++) {
        const e = await this.#views.get(view.gateway);
        try {
          if (e?.operation === "PUT") {
            if (Buffer.from(e.value).equals(Buffer.from(bytes))) { this.#m.viewWrites.inc({ result: "unchanged" }); return; }
            if (fleet.GatewayView.decode(e.value).revision > view.revision) { this.#m.viewWrites.inc({ result: "superseded" }); return; }
            await this.#views.update(view.gateway, bytes, e.revision);
          } else if (e) await this.#views.update(view.gateway, bytes, e.revision);
          else await this.#views.create(view.gateway, bytes);
          this.#m.viewWrites.inc({ result: "written" });
          return;
        } catch (err) {
          if (/^503$|no responders|TIMEOUT/i.test(String((err as Error)?.message)) && attempt < 9) {
            // Stream leader election (cluster failover): wait and re-read.
            await new Promise((r) => setTimeout(r, 250 * (attempt + 1)));
            continue;
          }
          if (!isWrongSequence(err)) throw err;
        }
      }
      throw new ConflictError(`view of gateway ${view.gateway} kept changing; gave up after 10 attempts`);
    });
    for (const gw of removed) {
      const e = await this.#views.get(gw);
      if (e && e.operation === "PUT" && fleet.GatewayView.decode(e.value).revision < BigInt(revision)) {
        await this.#views.delete(gw, { previousSeq: e.revision }).catch(() => undefined);
        this.#m.viewWrites.inc({ result: "deleted" });
      }
    }
  }

  /**
   * Publish KV values as one pipelined batch: plain publishes to `<subjectPrefix><key>`
   * with header Nats-Expected-Last-Subject-Sequence (what kv.update sends), written to
   * the socket together, and the PubAcks collected on one wildcard inbox subscription,
   * without nats.js's per-request promise, timer and stack trace. Per item: the new
   * stream sequence (the KV revision) or an error string (wrong last sequence, 503 no
   * responders, timeout): the caller falls back to read-then-compare-and-set.
   */
  async #publishBatch(subjectPrefix: string, items: { key: string; bytes: Uint8Array; expect: number }[], timeoutMs = 10_000): Promise<(number | string)[]> {
    const nc = this.#o.nc;
    const inbox = createInbox((nc as unknown as { options?: { inboxPrefix?: string } }).options?.inboxPrefix);
    const out: (number | string)[] = new Array(items.length).fill("TIMEOUT");
    let left = items.length;
    let done!: () => void;
    const finished = new Promise<void>((r) => (done = r));
    const sub = nc.subscribe(`${inbox}.*`, {
      max: items.length,
      callback: (err, m) => {
        if (err) return;
        const i = Number(m.subject.slice(inbox.length + 1));
        if (!(i >= 0 && i < items.length) || out[i] !== "TIMEOUT") return;
        if (m.headers?.code === 503 || m.data.length === 0) out[i] = `${m.headers?.code ?? 503} ${m.headers?.description ?? "no responders"}`;
        else {
          try {
            const ack = JSON.parse(Buffer.from(m.data).toString("utf8")) as { seq?: number; error?: { description?: string } };
            out[i] = ack.error ? String(ack.error.description ?? "error") : Number(ack.seq);
          } catch (e) {
            out[i] = `bad ack: ${(e as Error).message}`;
          }
        }
        if (--left === 0) done();
      },
    });
    const timer = setTimeout(done, timeoutMs);
    try {
      items.forEach((it, i) => {
        const h = natsHeaders();
        h.set("Nats-Expected-Last-Subject-Sequence", String(it.expect));
        nc.publish(subjectPrefix + it.key, it.bytes, { reply: `${inbox}.${i}`, headers: h });
      });
      await finished;
    } finally {
      clearTimeout(timer);
      sub.unsubscribe();
    }
    return out;
  }

  /**
   * Make the views match the current spec revision (after a crash between storing a
   * revision and writing its views, or a lost view). Cheap when nothing changed: one KV
   * read; otherwise one read per view and writes only where bytes differ.
   */
  reconcile(): Promise<void> {
    this.#reconciling ??= (async () => {
      try {
        const cur = await this.#currentRecord();
        if (!cur.record || this.#stopped) return;
        if (cur.revision <= this.#reconciled && !this.#viewsDirty) {
          // Views are written; still make sure this replica serves the stored revision even if
          // its spec watch lost its consumer (a NATS node died) and missed an update.
          await this.#loadCurrent(cur.revision, cur.record);
          return;
        }
        this.#viewsDirty = false;
        const f = await this.#compileRecord(cur.record);
        const rendered = renderGateways(f);
        const views = buildViews(rendered, resolveState(cur.record.state, cur.revision), (gw) => this.#certFor(gw));
        const stale: string[] = [];
        for await (const k of await this.#views.keys()) if (!views.has(k)) stale.push(k);
        await this.#writeViews(views, stale, cur.revision);
        this.#reconciled = cur.revision;
        await this.#loadCurrent(cur.revision, cur.record);
      } finally {
        this.#reconciling = undefined;
      }
    })();
    return this.#reconciling;
  }

  async getSpec(req: api.GetSpecRequest): Promise<api.GetSpecResponse> {
    const rev = Number(req.revision);
    const e = rev ? await this.#spec.get(SPEC_KEY, { revision: rev }) : await this.#spec.get(SPEC_KEY);
    if (!e || e.operation !== "PUT") {
      if (rev) throw new NotFoundError("spec revision", String(rev));
      return { error: undefined, revision: 0n, specYaml: "", appliedAt: undefined };
    }
    const r = e.json<SpecRecord>();
    return { error: undefined, revision: BigInt(e.revision), specYaml: r.yaml, appliedAt: new Date(r.appliedAt) };
  }

  // ------------------------------------------------------------- status

  async #onStatus(msg: Msg): Promise<void> {
    const gw = msg.subject.split(".")[3]!;
    const st = fleet.AgentStatus.decode(msg.data);
    if (st.gateway !== gw) {
      this.#o.log.warn({ subject: msg.subject, claimed: st.gateway }, "status for another gateway ignored");
      return;
    }
    // Latest-wins and republished every 10 s by the agent: a plain publish into the KV
    // subject (JetStream stores it), without waiting for the PubAck. A convergence of
    // 1,000 gateways sends 1,000 statuses at once; a request per status was the
    // controller's biggest cost after the apply itself.
    // Statuses arriving within STATUS_FLUSH_MS go out together (one socket write, not
    // one per status); a newer status of the same gateway replaces a queued one.
    this.#statusOut.set(gw, msg.data);
    this.#statusTimer ??= setTimeout(() => this.#flushStatuses(), STATUS_FLUSH_MS);
  }

  #flushStatuses(): void {
    this.#statusTimer = undefined;
    const nc = this.#o.nc;
    for (const [gw, data] of this.#statusOut) {
      if (nc.isClosed()) break;
      try {
        nc.publish(`$KV.${BUCKET.status}.${gw}`, data);
      } catch (e) {
        this.#o.log.warn({ err: (e as Error).message, gateway: gw }, "status not stored");
      }
    }
    this.#statusOut.clear();
  }

  /** A gateway's last stored status (undefined if none or undecodable). */
  #statusOf(gw: string): fleet.AgentStatus | undefined {
    const c = this.#statusCache.get(gw);
    if (!c) return undefined;
    if (c.decoded === undefined) {
      try {
        c.decoded = fleet.AgentStatus.decode(c.value);
      } catch (e) {
        c.decoded = null;
        this.#o.log.warn({ err: (e as Error).message, gateway: gw }, "bad status entry ignored");
      }
    }
    return c.decoded ?? undefined;
  }

  async #onEvent(msg: Msg): Promise<void> {
    const gw = msg.subject.split(".")[3]!;
    const ev = fleet.AgentEvent.decode(msg.data);
    if (ev.gateway !== gw || !ev.connection) return;
    const clears = ev.kind === "child_up" || ev.kind === "ike_up";
    if (!clears && !ev.code) return;
    for (let i = 0; i < 10; i++) {
      const e = await this.#events.get(gw);
      const rec: EventRecord = e?.operation === "PUT" ? e.json<EventRecord>() : {};
      if (clears) { if (!rec[ev.connection]) return; delete rec[ev.connection]; }
      else rec[ev.connection] = { code: ev.code, message: ev.message, kind: ev.kind, time: (ev.time ?? this.#o.now()).toISOString() };
      try {
        const bytes = enc.encode(JSON.stringify(rec));
        if (e) await this.#events.update(gw, bytes, e.revision);
        else await this.#events.create(gw, bytes);
        return;
      } catch (err) {
        if (!isWrongSequence(err)) throw err;
      }
    }
  }

  /** The fleet as the agents report it, against the current spec. */
  fleetStatus(): api.FleetStatus {
    const cur = this.#current;
    const out: api.FleetStatus = { revision: BigInt(cur?.revision ?? 0), gateways: [], connections: [] };
    if (!cur) return out;
    const now = this.#o.now().getTime();
    const viewRev = (gw: string): number => cur.record.state.views[gw]?.r || cur.revision;
    for (const [name] of cur.fleet.gateways) {
      const st = this.#statusOf(name);
      const seen = st?.time?.getTime();
      const applied = Number(st?.appliedRevision ?? 0n);
      out.gateways.push({
        name,
        state: seen === undefined ? "never-seen" : now - seen <= this.#o.staleAfterMs ? "up" : "stale",
        lastSeen: st?.time,
        appliedRevision: BigInt(applied),
        revisionLag: BigInt(applied >= viewRev(name) ? 0 : cur.revision - applied),
        ikeSas: st?.ikeSas ?? 0,
        childSas: st?.childSas ?? 0,
        applyError: st?.applyError ?? "",
      });
    }
    for (const c of cur.fleet.connections) {
      c.gateways.forEach((gw, i) => {
        const reported = this.#statusOf(gw)?.connections.find((x) => x.name === c.name);
        const ev = this.#eventCache.get(gw)?.[c.name];
        const evNewer = ev && (!reported?.lastChange || new Date(ev.time) > reported.lastChange);
        out.connections.push({
          name: c.name,
          gateway: gw,
          peer: c.peer ? c.peer.address : c.gateways[1 - i]!,
          desired: c.options.start,
          state: reported?.state || "unknown",
          lastErrorCode: (evNewer ? ev.code : reported?.lastErrorCode) ?? "",
          lastError: (evNewer ? ev.message : reported?.lastError) ?? "",
        });
      });
    }
    return out;
  }

  // ------------------------------------------------------------- enroll, commands

  async enroll(req: api.EnrollGatewayRequest): Promise<api.EnrollGatewayResponse> {
    if (!this.#current?.fleet.gateways.has(req.gateway)) throw new NotFoundError("gateway (in the current spec)", req.gateway);
    const token = `fse1.${randomBytes(32).toString("base64url")}`;
    const now = this.#o.now();
    const expires = new Date(now.getTime() + (req.ttlSeconds || 3600) * 1000);
    const ticket: EnrollTicket = { gateway: req.gateway, token_sha256: createHash("sha256").update(token).digest("hex"), created_at: now.toISOString(), expires_at: expires.toISOString() };
    await this.#enroll.put(req.gateway, enc.encode(JSON.stringify(ticket)));
    this.#o.log.info({ gateway: req.gateway, expires: ticket.expires_at }, "enrollment token created");
    return { error: undefined, token, expiresAt: expires };
  }

  async command(req: api.ConnectionCommandRequest): Promise<api.ConnectionCommandResponse> {
    const started = process.hrtime.bigint();
    const verbs = ["up", "down", "route", "unroute", "barf"];
    if (!verbs.includes(req.verb)) throw new FleetswanError("INVALID_ARGUMENT", `unknown verb "${req.verb}" (one of ${verbs.join(", ")})`);
    const f = this.#current?.fleet;
    let targets: string[];
    let connection = "";
    if (req.verb === "barf") {
      if (!f?.gateways.has(req.target)) throw new NotFoundError("gateway", req.target);
      targets = [req.target];
    } else {
      const c = f?.connections.find((x) => x.name === req.target);
      if (!c) throw new NotFoundError("connection", req.target);
      connection = c.name;
      // One end initiates (like `ipsec auto --up` on one host); the others act on both ends.
      targets = req.verb === "up" ? [c.gateways[0]!] : c.gateways;
    }
    const timeout = req.timeoutMs || 10_000;
    const results = await Promise.all(targets.map(async (gw): Promise<api.GatewayCommandResult> => {
      try {
        const m = await this.#o.nc.request(subjects.command(gw), fleet.AgentCommand.encode({ verb: req.verb, connection, timeoutMs: timeout }).finish(), { timeout });
        const r = fleet.AgentCommandReply.decode(m.data);
        return { gateway: gw, ok: r.ok, code: r.code, message: r.message, bodyJson: r.bodyJson };
      } catch (e) {
        const msg = (e as Error).message;
        return { gateway: gw, ok: false, code: /no responders|^503$/i.test(msg) ? "AGENT_UNREACHABLE" : "TIMEOUT", message: `agent of ${gw} did not answer (${msg})`, bodyJson: "" };
      }
    }));
    this.#m.commandDuration.observe({ verb: req.verb }, Number(process.hrtime.bigint() - started) / 1e9);
    return { error: undefined, results };
  }

  // ------------------------------------------------------------- API server

  async #serve(msg: Msg): Promise<void> {
    const method = msg.subject.split(".").pop()!;
    let reply: Uint8Array;
    try {
      reply = await this.#dispatch(method, msg.data);
    } catch (e) {
      const err = apiError(e);
      if (method === "ApplySpec") this.#m.applies.inc({ outcome: e instanceof SpecInvalidError ? "invalid" : e instanceof ConflictError ? "conflict" : "error" });
      if (!(e instanceof FleetswanError)) this.#o.log.error({ err: e, method }, "API call failed");
      else this.#o.log.info({ method, code: err.code, message: err.message }, "API call refused");
      const h = natsHeaders();
      h.set("Fleetswan-Error-Code", err.code);
      h.set("Fleetswan-Error", encodeURIComponent(err.message));
      reply = this.#errorReply(method, err);
      if (msg.reply) msg.respond(reply, { headers: h });
      return;
    }
    if (method === "ApplySpec") this.#m.applies.inc({ outcome: "ok" });
    if (msg.reply) msg.respond(reply);
  }

  #errorReply(method: string, error: api.ApiError): Uint8Array {
    switch (method) {
      case "ApplySpec":
      case "DiffSpec": return api.ApplySpecResponse.encode(api.ApplySpecResponse.fromPartial({ error })).finish();
      case "GetSpec": return api.GetSpecResponse.encode(api.GetSpecResponse.fromPartial({ error })).finish();
      case "EnrollGateway": return api.EnrollGatewayResponse.encode(api.EnrollGatewayResponse.fromPartial({ error })).finish();
      case "ConnectionCommand": return api.ConnectionCommandResponse.encode(api.ConnectionCommandResponse.fromPartial({ error })).finish();
      default: return new Uint8Array();
    }
  }

  async #dispatch(method: string, data: Uint8Array): Promise<Uint8Array> {
    switch (method) {
      case "ApplySpec": return api.ApplySpecResponse.encode(await this.apply(api.ApplySpecRequest.decode(data))).finish();
      case "DiffSpec": return api.ApplySpecResponse.encode(await this.apply(api.ApplySpecRequest.decode(data), true)).finish();
      case "GetSpec": return api.GetSpecResponse.encode(await this.getSpec(api.GetSpecRequest.decode(data))).finish();
      case "GetFleetStatus": return api.FleetStatus.encode(this.fleetStatus()).finish();
      case "EnrollGateway": return api.EnrollGatewayResponse.encode(await this.enroll(api.EnrollGatewayRequest.decode(data))).finish();
      case "ConnectionCommand": return api.ConnectionCommandResponse.encode(await this.command(api.ConnectionCommandRequest.decode(data))).finish();
      default: throw new FleetswanError("UNIMPLEMENTED", `unknown Controller method "${method}"`);
    }
  }
}

