/**
 * The key manager: secrets at rest (fleet-keys, master-key encrypted), enrollment of
 * agents (fleet-enroll -> fleet-agents), sealing to enrolled agents (fleet-secrets),
 * rotation with a window in which old and new values are both valid, and the fleet CA.
 * API: NATS request/reply on fleet.v1.api.keymgr.<Method>, queue group "keymgr".
 * Several replicas can run: every write is a compare-and-set on the KV revision.
 */
import { randomBytes } from "node:crypto";
import { Counter, Gauge, Registry } from "prom-client";
import type { KV, Msg, NatsConnection, Subscription } from "nats";
import {
  ConflictError,
  FleetswanError,
  KeyWatcher,
  NotFoundError,
  PermissionError,
  Secret,
  WeakCryptoError,
  type KvChange,
  type Logger,
} from "@fleetswan/common";
import { fleet, keymgr } from "@fleetswan/proto";
import { certificateNotAfter, createCa, issueCertificate, type LeafKeyType } from "./ca.js";
import { MasterKeyring, SealError, hexEqual, keyId, sealSecret, tokenHash } from "./crypto.js";
import { BUCKET, GATEWAY_RE, QUEUE_GROUP, SECRET_NAME_RE, SUBJECT } from "./layout.js";
import {
  decodeRecord,
  decryptValues,
  encodeRecord,
  encryptValues,
  parseEnrollEntry,
  type AgentRecord,
  type SecretRecord,
  type SecretValues,
} from "./store.js";

export const CA_SECRET_NAME = "ca.fleet";
export const DEFAULT_WINDOW_SECONDS = 600;
const MIN_PSK_BYTES = 20;
/** Sealed-blob publishes outstanding at once in #sealTo. */
const SEAL_IN_FLIGHT = 512;
/** Seals between two turns of the event loop in #sealTo (lets the NATS client flush). */
const SEAL_YIELD_EVERY = 32;

export interface KeyManagerOptions {
  nc: NatsConnection;
  keyring: MasterKeyring;
  log: Logger;
  registry?: Registry;
  /** KV replicas for buckets keymgr creates (3 in a 3-node cluster). */
  replicas?: number;
  /** How often rotation windows and certificate renewals are checked (ms, default 5000). */
  maintenanceIntervalMs?: number;
  /** Renew a certificate when less than this fraction of its validity remains (default 1/3). */
  renewFraction?: number;
  /** Do not serve the API (one-shot tools). */
  noServe?: boolean;
  /**
   * Compare every secret's version with its sealed blobs and reseal what is stale or
   * missing (after a crash between writing a record and sealing it): at start and this
   * often (ms, default 300 000; 0 = only at start).
   */
  repairIntervalMs?: number;
}

const err = (e: unknown): keymgr.KeymgrError =>
  e instanceof FleetswanError ? { code: e.code, message: e.message } : { code: "INTERNAL", message: (e as Error).message ?? String(e) };

export class KeyManager {
  readonly #o: KeyManagerOptions;
  readonly #log: Logger;
  #keys!: KV;
  #agents!: KV;
  #secrets!: KV;
  #enroll!: KV;
  /** Latest record per name, from a watch on fleet-keys (all replicas see all writes). */
  readonly #index = new Map<string, { rec: SecretRecord; revision: number }>();
  /** Enrolled public keys, from a watch on fleet-agents. */
  readonly #agentKeys = new Map<string, AgentRecord>();
  readonly #subs: Subscription[] = [];
  #timer: NodeJS.Timeout | undefined;
  #repairTimer: NodeJS.Timeout | undefined;
  #repairing: Promise<{ resealed: number }> | undefined;
  #maintaining: Promise<void> | undefined;
  #stopped = false;
  #watchers: { stop(): void }[] = [];
  readonly metrics: {
    rotations: Counter<"outcome">;
    seals: Counter;
    enrollments: Counter<"outcome">;
    repairs: Counter;
    deletions: Counter;
  };

  constructor(opts: KeyManagerOptions) {
    this.#o = opts;
    this.#log = opts.log;
    const registers = [opts.registry ?? new Registry()];
    const index = this.#index;
    new Gauge({
      name: "fleetswan_keymgr_secrets",
      help: "Secrets stored, by kind.",
      labelNames: ["kind"],
      registers,
      collect() {
        const n: Record<string, number> = { psk: 0, "private-key": 0, ca: 0 };
        for (const { rec } of index.values()) n[rec.kind] = (n[rec.kind] ?? 0) + 1;
        this.reset();
        for (const [kind, v] of Object.entries(n)) this.set({ kind }, v);
      },
    });
    new Gauge({
      name: "fleetswan_keymgr_secret_age_seconds",
      help: "Age of the oldest current secret value, by kind (time since its last rotation).",
      labelNames: ["kind"],
      registers,
      collect() {
        const now = Date.now();
        const max: Record<string, number> = {};
        for (const { rec } of index.values()) {
          const age = Math.max(0, (now - Date.parse(rec.createdAt)) / 1000);
          max[rec.kind] = Math.max(max[rec.kind] ?? 0, age);
        }
        this.reset();
        for (const [kind, v] of Object.entries(max)) this.set({ kind }, v);
      },
    });
    new Gauge({
      name: "fleetswan_keymgr_certificate_expiry_timestamp_seconds",
      help: "notAfter of each gateway certificate (Unix seconds).",
      labelNames: ["gateway"],
      registers,
      collect() {
        this.reset();
        for (const { rec } of index.values()) {
          if (rec.kind === "private-key" && rec.notAfter && rec.gateways[0]) {
            this.set({ gateway: rec.gateways[0] }, Math.floor(Date.parse(rec.notAfter) / 1000));
          }
        }
      },
    });
    this.metrics = {
      rotations: new Counter({ name: "fleetswan_keymgr_rotations_total", help: "Secret rotations, by outcome.", labelNames: ["outcome"], registers }),
      seals: new Counter({ name: "fleetswan_keymgr_seal_operations_total", help: "Secrets sealed to an agent key.", registers }),
      enrollments: new Counter({ name: "fleetswan_keymgr_enrollments_total", help: "Enrollment requests, by outcome.", labelNames: ["outcome"], registers }),
      repairs: new Counter({ name: "fleetswan_keymgr_repaired_blobs_total", help: "Sealed blobs found stale or missing by the repair pass and sealed again.", registers }),
      deletions: new Counter({ name: "fleetswan_keymgr_secret_deletions_total", help: "Secrets deleted (DeleteSecret).", registers }),
    };
    for (const o of ["ok", "error"]) this.metrics.rotations.inc({ outcome: o }, 0);
  }

  // ------------------------------------------------------------------ lifecycle ----

  async start(): Promise<void> {
    const js = this.#o.nc.jetstream();
    const replicas = this.#o.replicas ?? 1;
    this.#keys = await js.views.kv(BUCKET.keys, { history: 5, replicas });
    this.#agents = await js.views.kv(BUCKET.agents, { history: 1, replicas });
    this.#secrets = await js.views.kv(BUCKET.secrets, { history: 1, replicas });
    this.#enroll = await js.views.kv(BUCKET.enroll, { history: 1, replicas });
    await this.#watchInto(BUCKET.keys, (e) => {
      if (e.op === "PUT") this.#index.set(e.key, { rec: decodeRecord(e.value), revision: e.revision });
      else this.#index.delete(e.key);
    });
    await this.#watchInto(BUCKET.agents, (e) => {
      if (e.op === "PUT") this.#agentKeys.set(e.key, JSON.parse(new TextDecoder().decode(e.value)) as AgentRecord);
      else this.#agentKeys.delete(e.key);
    });
    await this.#ensureCa();
    if (this.#o.noServe) return;
    this.#subs.push(this.#o.nc.subscribe(SUBJECT.apiAll, { queue: QUEUE_GROUP, callback: (e, m) => !e && void this.#onApi(m) }));
    this.#subs.push(this.#o.nc.subscribe(SUBJECT.enroll, { queue: QUEUE_GROUP, callback: (e, m) => !e && void this.#onEnroll(m) }));
    await this.#o.nc.flush();
    const every = this.#o.maintenanceIntervalMs ?? 5000;
    this.#timer = setInterval(() => {
      if (this.#maintaining) return; // the previous pass is still running
      this.#maintaining = this.maintenance()
        .catch((e) => this.#log.warn({ err: (e as Error).message }, "maintenance failed"))
        .finally(() => (this.#maintaining = undefined));
    }, every);
    this.#timer.unref();
    await this.maintenance();
    await this.repairSealed().catch((e) => this.#log.warn({ err: (e as Error).message }, "repair of sealed blobs failed; retried on the timer"));
    const repairEvery = this.#o.repairIntervalMs ?? 300_000;
    if (repairEvery > 0) {
      this.#repairTimer = setInterval(() => void this.repairSealed().catch((e) => this.#log.warn({ err: (e as Error).message }, "repair of sealed blobs failed")), repairEvery);
      this.#repairTimer.unref();
    }
    this.#log.info({ secrets: this.#index.size, agents: this.#agentKeys.size, masterKey: this.#o.keyring.current.id }, "keymgr ready");
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    if (this.#timer) clearInterval(this.#timer);
    if (this.#repairTimer) clearInterval(this.#repairTimer);
    await this.#repairing?.catch(() => undefined);
    await this.#maintaining;
    for (const s of this.#subs) s.unsubscribe();
    for (const w of this.#watchers) w.stop();
  }

  /** Watch a whole bucket into memory; resolves once the initial values are in. */
  async #watchInto(bucket: string, apply: (e: KvChange) => void): Promise<void> {
    // KeyWatcher: kept through NATS node losses (a lost consumer is replaced within 3 heartbeats).
    const w = new KeyWatcher({ nc: this.#o.nc, bucket, key: ">", onChange: apply, log: this.#log, heartbeatMs: 2000 });
    this.#watchers.push(w);
    w.start();
    await w.waitSynced(30_000);
  }

  // ------------------------------------------------------------------ records ----

  async #read(name: string): Promise<{ rec: SecretRecord; revision: number } | undefined> {
    const e = await this.#keys.get(name);
    if (!e || e.operation !== "PUT") return undefined;
    const out = { rec: decodeRecord(e.value), revision: e.revision };
    this.#index.set(name, out);
    return out;
  }

  /** CAS write: revision 0 = must not exist. */
  async #write(rec: SecretRecord, revision: number): Promise<number> {
    try {
      const rev = revision === 0 ? await this.#keys.create(rec.name, encodeRecord(rec)) : await this.#keys.update(rec.name, encodeRecord(rec), revision);
      this.#index.set(rec.name, { rec, revision: rev });
      return rev;
    } catch (e) {
      const msg = (e as Error).message ?? "";
      if (/wrong last sequence|exists/i.test(msg)) throw new ConflictError(`secret "${rec.name}" was changed concurrently; retry`, { name: rec.name });
      throw e;
    }
  }

  #info(rec: SecretRecord): keymgr.SecretInfo {
    return {
      error: undefined,
      name: rec.name,
      version: rec.version,
      createdAt: new Date(rec.createdAt),
      previousValidUntil: rec.previousValidUntil ? new Date(rec.previousValidUntil) : undefined,
      gateways: [...rec.gateways],
    };
  }

  static #checkName(name: string): void {
    if (!SECRET_NAME_RE.test(name)) {
      throw new FleetswanError("CONFIG_INVALID", `secret name "${name}" is invalid (letters, digits, '.', '_', '-'; 1..128)`, { field: "name" });
    }
  }
  static #checkGateways(gws: string[]): string[] {
    for (const g of gws) if (!GATEWAY_RE.test(g)) throw new FleetswanError("CONFIG_INVALID", `gateway name "${g}" is not a DNS label`, { field: "gateways" });
    return [...new Set(gws)].sort();
  }

  // ------------------------------------------------------------------ operations ----

  /** Store an operator-provided secret (new, or a replacement value as a new version without window). */
  async storeSecret(name: string, value: Secret, gateways: string[], kind: "psk" | "private-key" = "psk"): Promise<keymgr.SecretInfo> {
    KeyManager.#checkName(name);
    const gws = KeyManager.#checkGateways(gateways);
    if (kind === "psk" && value.length < MIN_PSK_BYTES) throw new WeakCryptoError(`secret "${name}": a PSK needs at least ${MIN_PSK_BYTES} bytes, got ${value.length}`, { name });
    const cur = await this.#read(name);
    const version = cur ? cur.rec.version + 1 : 1;
    const rec: SecretRecord = {
      format: 1,
      name,
      kind,
      version,
      createdAt: new Date().toISOString(),
      gateways: [...new Set([...(cur?.rec.gateways ?? []), ...gws])].sort(),
      enc: encryptValues(this.#o.keyring, name, version, { value }),
    };
    await this.#write(rec, cur?.revision ?? 0);
    await this.#sealTo(rec, rec.gateways);
    this.#log.info({ name, version, gateways: rec.gateways.length }, "secret stored");
    return this.#info(rec);
  }

  /** Generate a 32-byte random PSK unless the secret exists (then add gateways and seal). */
  async generateSecret(name: string, gateways: string[]): Promise<keymgr.SecretInfo> {
    KeyManager.#checkName(name);
    const gws = KeyManager.#checkGateways(gateways);
    const cur = await this.#read(name);
    if (cur) {
      const r = await this.sealForAgents(name, gws);
      if (r.error) throw new FleetswanError(r.error.code, r.error.message);
      return this.#info(this.#index.get(name)!.rec);
    }
    const rec: SecretRecord = {
      format: 1,
      name,
      kind: "psk",
      version: 1,
      createdAt: new Date().toISOString(),
      gateways: gws,
      enc: encryptValues(this.#o.keyring, name, 1, { value: new Secret(randomBytes(32)) }),
    };
    await this.#write(rec, 0);
    await this.#sealTo(rec, rec.gateways);
    this.#log.info({ name, gateways: gws.length }, "secret generated");
    return this.#info(rec);
  }

  /** Add gateways to a secret and seal it to each enrolled one. */
  async sealForAgents(name: string, gateways: string[]): Promise<keymgr.SealForAgentsResponse> {
    KeyManager.#checkName(name);
    const gws = KeyManager.#checkGateways(gateways);
    for (let attempt = 0; ; attempt++) {
      const cur = await this.#read(name);
      if (!cur) throw new NotFoundError("secret", name);
      let rec = cur.rec;
      const added = gws.filter((g) => !rec.gateways.includes(g));
      if (added.length > 0) {
        rec = { ...rec, gateways: [...rec.gateways, ...added].sort() };
        try {
          await this.#write(rec, cur.revision);
        } catch (e) {
          if (e instanceof ConflictError && attempt < 3) continue;
          throw e;
        }
      }
      const { sealed, pending } = await this.#sealTo(rec, gws.length > 0 ? gws : rec.gateways);
      return { error: undefined, sealedFor: sealed, pending };
    }
  }

  /** New value (given or generated); the previous stays valid for the window. */
  async rotateSecret(name: string, windowSeconds = DEFAULT_WINDOW_SECONDS, newValue?: Secret): Promise<keymgr.SecretInfo> {
    KeyManager.#checkName(name);
    try {
      const cur = await this.#read(name);
      if (!cur) throw new NotFoundError("secret", name);
      if (cur.rec.kind === "ca") throw new FleetswanError("UNSUPPORTED", "the fleet CA is not rotated with RotateSecret");
      if (cur.rec.kind === "private-key") {
        // A certificate is rotated by reissuing it (new key pair, new certificate).
        const spec = cur.rec.certSpec;
        if (!spec || !cur.rec.gateways[0]) throw new FleetswanError("UNSUPPORTED", `secret "${name}" has no certificate request to renew`);
        await this.issueCertificateFor({ gateway: cur.rec.gateways[0], ...spec });
        this.metrics.rotations.inc({ outcome: "ok" });
        return this.#info(this.#index.get(name)!.rec);
      }
      if (newValue && newValue.length < MIN_PSK_BYTES) throw new WeakCryptoError(`secret "${name}": a PSK needs at least ${MIN_PSK_BYTES} bytes`, { name });
      const old = decryptValues(this.#o.keyring, cur.rec);
      const version = cur.rec.version + 1;
      const now = Date.now();
      const rec: SecretRecord = {
        ...cur.rec,
        version,
        createdAt: new Date(now).toISOString(),
        previousValidUntil: new Date(now + windowSeconds * 1000).toISOString(),
        enc: encryptValues(this.#o.keyring, name, version, { value: newValue ?? new Secret(randomBytes(32)), previous: old.value }),
      };
      if (windowSeconds === 0) delete rec.previousValidUntil;
      await this.#write(rec, cur.revision);
      await this.#sealTo(rec, rec.gateways);
      this.metrics.rotations.inc({ outcome: "ok" });
      this.#log.info({ name, version, windowSeconds, gateways: rec.gateways.length }, "secret rotated");
      return this.#info(rec);
    } catch (e) {
      this.metrics.rotations.inc({ outcome: "error" });
      throw e;
    }
  }

  /** Issue (or renew) a gateway certificate; the private key becomes secret "cert.<gateway>". */
  async issueCertificateFor(req: { gateway: string; dnsNames: string[]; ipAddresses: string[]; keyType: LeafKeyType; validDays: number }): Promise<keymgr.IssueCertificateResponse> {
    KeyManager.#checkGateways([req.gateway]);
    const caEntry = this.#index.get(CA_SECRET_NAME);
    if (!caEntry?.rec.certificatePem) throw new FleetswanError("UNAVAILABLE", "the fleet CA is not initialised");
    const caPem = caEntry.rec.certificatePem;
    const caKey = decryptValues(this.#o.keyring, caEntry.rec).value;
    const issued = await issueCertificate({ certificatePem: caPem, privateKeyPem: caKey }, req);
    const name = `cert.${req.gateway}`;
    const chain = issued.certificatePem + caPem;
    for (let attempt = 0; ; attempt++) {
      const cur = await this.#read(name);
      const version = cur ? cur.rec.version + 1 : 1;
      const rec: SecretRecord = {
        format: 1,
        name,
        kind: "private-key",
        version,
        createdAt: new Date().toISOString(),
        gateways: [req.gateway],
        certificatePem: issued.certificatePem,
        notAfter: issued.notAfter.toISOString(),
        certSpec: { dnsNames: req.dnsNames, ipAddresses: req.ipAddresses, keyType: req.keyType, validDays: req.validDays },
        enc: encryptValues(this.#o.keyring, name, version, { value: issued.privateKeyPem, chainPem: chain }),
      };
      try {
        await this.#write(rec, cur?.revision ?? 0);
      } catch (e) {
        if (e instanceof ConflictError && attempt < 3) continue;
        throw e;
      }
      await this.#sealTo(rec, rec.gateways);
      this.#log.info({ gateway: req.gateway, version, notAfter: rec.notAfter, keyType: req.keyType }, "certificate issued");
      return { error: undefined, secretName: name, certificatePem: issued.certificatePem, caPem, notAfter: issued.notAfter };
    }
  }

  listSecrets(): keymgr.ListSecretsResponse {
    return { secrets: [...this.#index.values()].map(({ rec }) => this.#info(rec)).sort((a, b) => a.name.localeCompare(b.name)) };
  }

  /** PEM of the fleet CA certificate. */
  caCertificatePem(): string | undefined {
    return this.#index.get(CA_SECRET_NAME)?.rec.certificatePem;
  }

  /**
   * Delete a secret: its record in fleet-keys and every sealed blob of it in
   * fleet-secrets (agents drop a deleted blob). Idempotent: deleting a secret that does
   * not exist reports deleted = false. The fleet CA cannot be deleted.
   */
  async deleteSecret(name: string): Promise<keymgr.DeleteSecretResponse> {
    KeyManager.#checkName(name);
    if (name === CA_SECRET_NAME) throw new FleetswanError("UNSUPPORTED", "the fleet CA cannot be deleted");
    const cur = await this.#read(name);
    // Blobs first, the record last: a crash in between leaves the record, and the next
    // DeleteSecret (the controller retries) finds the remaining blobs.
    const blobs = await this.#blobKeysOf(name);
    await Promise.all(blobs.map((k) => this.#secrets.delete(k)));
    if (cur) {
      try {
        await this.#keys.delete(name, { previousSeq: cur.revision });
      } catch (e) {
        if (/wrong last sequence/i.test((e as Error).message ?? "")) throw new ConflictError(`secret "${name}" was changed concurrently; retry`, { name });
        throw e;
      }
      this.#index.delete(name);
      this.metrics.deletions.inc();
      this.#log.info({ name, blobs: blobs.length }, "secret deleted");
    }
    return { error: undefined, deleted: !!cur, blobsDeleted: blobs.length };
  }

  /** Keys of the sealed blobs of a secret (`<gw>.<name>`, also of gateways no longer in its record). */
  async #blobKeysOf(name: string): Promise<string[]> {
    return [...(await this.#sealedVersions()).keys()].filter((k) => k.endsWith(`.${name}`) && GATEWAY_RE.test(k.slice(0, -name.length - 1)));
  }

  /** The last value of every key in fleet-secrets: key -> version and recipient key id. */
  async #sealedVersions(): Promise<Map<string, { version: number; recipientKeyId: string }>> {
    const out = new Map<string, { version: number; recipientKeyId: string }>();
    const w = new KeyWatcher({
      nc: this.#o.nc,
      bucket: BUCKET.secrets,
      key: ">",
      log: this.#log,
      heartbeatMs: 2000,
      onChange: (e) => {
        if (e.op !== "PUT") {
          out.delete(e.key);
          return;
        }
        try {
          const b = fleet.SealedSecret.decode(e.value);
          out.set(e.key, { version: b.version, recipientKeyId: b.recipientKeyId });
        } catch {
          out.set(e.key, { version: -1, recipientKeyId: "" });
        }
      },
    });
    w.start();
    try {
      await w.waitSynced(30_000);
    } finally {
      w.stop();
    }
    return out;
  }


  /**
   * Repair pass: for every secret, each enrolled gateway of it must hold a blob of the
   * record's version sealed to its current key. Reseals what is missing, older or sealed
   * to a replaced key (keymgr crashed between writing a record and sealing it, or a put
   * was lost). A blob of a newer version than our index (another replica just rotated)
   * is left alone. Runs at start and on a slow timer; one pass at a time.
   */
  repairSealed(): Promise<{ resealed: number }> {
    this.#repairing ??= (async () => {
      try {
        const have = await this.#sealedVersions();
        let resealed = 0;
        for (const name of [...this.#index.keys()]) {
          if (this.#stopped) break;
          const entry = this.#index.get(name);
          if (!entry || entry.rec.kind === "ca") continue;
          const stale = entry.rec.gateways.filter((gw) => {
            const agent = this.#agentKeys.get(gw);
            if (!agent) return false;
            const b = have.get(`${gw}.${name}`);
            return !b || b.version < entry.rec.version || (b.version === entry.rec.version && b.recipientKeyId !== agent.keyId);
          });
          if (stale.length === 0) continue;
          const cur = await this.#read(name); // the newest record, not the index's copy
          if (!cur) continue;
          const { sealed } = await this.#sealTo(cur.rec, stale);
          resealed += sealed.length;
          this.metrics.repairs.inc(sealed.length);
          this.#log.warn({ name, version: cur.rec.version, gateways: stale.length }, "sealed blobs were stale or missing; sealed again");
        }
        return { resealed };
      } finally {
        this.#repairing = undefined;
      }
    })();
    return this.#repairing;
  }

  // ------------------------------------------------------------------ sealing ----

  #payload(rec: SecretRecord, values: SecretValues, now: number): fleet.SecretPayload {
    const inWindow = values.previous !== undefined && rec.previousValidUntil !== undefined && Date.parse(rec.previousValidUntil) > now;
    return {
      kind: rec.kind === "private-key" ? fleet.SecretKind.SECRET_KIND_PRIVATE_KEY : fleet.SecretKind.SECRET_KIND_PSK,
      value: values.value.reveal(),
      previousValue: inWindow ? values.previous!.reveal() : Buffer.alloc(0),
      previousValidUntil: inWindow ? new Date(rec.previousValidUntil!) : undefined,
      certificateChainPem: values.chainPem ?? "",
    };
  }

  /**
   * Seal the record's current values to each listed gateway that is enrolled, and publish
   * the blobs pipelined: up to SEAL_IN_FLIGHT puts outstanding (a new one starts as soon as
   * any completes, never a whole batch awaited), and the event loop gets a turn every
   * SEAL_YIELD_EVERY seals so the first blobs are on the wire (and being unsealed by their
   * agents) while the rest are still being sealed.
   */
  async #sealTo(rec: SecretRecord, gateways: string[]): Promise<{ sealed: string[]; pending: string[] }> {
    if (rec.kind === "ca") return { sealed: [], pending: [] };
    const values = decryptValues(this.#o.keyring, rec);
    const payload = this.#payload(rec, values, Date.now());
    const sealed: string[] = [];
    const pending: string[] = [];
    let inFlight = 0;
    let failure: unknown;
    let wake: (() => void) | undefined;
    const settled = (): void => {
      inFlight--;
      const w = wake;
      wake = undefined;
      w?.();
    };
    try {
      let sinceYield = 0;
      for (const gw of gateways) {
        const agent = this.#agentKeys.get(gw);
        if (!agent) {
          pending.push(gw);
          continue;
        }
        while (inFlight >= SEAL_IN_FLIGHT) await new Promise<void>((r) => (wake = r));
        if (failure) break;
        const blob = sealSecret(payload, { gateway: gw, secretRef: rec.name, version: rec.version, recipientPublic: Buffer.from(agent.publicKey, "base64") });
        this.metrics.seals.inc();
        inFlight++;
        this.#secrets.put(`${gw}.${rec.name}`, fleet.SealedSecret.encode(blob).finish()).then(
          () => { sealed.push(gw); settled(); },
          (e: unknown) => { failure ??= e; settled(); },
        );
        if (++sinceYield >= SEAL_YIELD_EVERY) {
          sinceYield = 0;
          await new Promise<void>((r) => setImmediate(r));
        }
      }
      while (inFlight > 0) await new Promise<void>((r) => (wake = r));
    } finally {
      values.value.wipe();
      values.previous?.wipe();
    }
    if (failure) throw failure;
    return { sealed, pending };
  }

  // ------------------------------------------------------------------ enrollment ----

  /** Check and consume the one-time token, register the agent's key, seal its secrets. */
  async enroll(req: fleet.EnrollRequest): Promise<fleet.EnrollResponse> {
    const gw = req.gateway;
    if (!GATEWAY_RE.test(gw)) throw new FleetswanError("CONFIG_INVALID", `gateway name "${gw}" is not a DNS label`);
    if (req.publicKey.length !== 32) throw new FleetswanError("CONFIG_INVALID", `public key must be 32 bytes (X25519), got ${req.publicKey.length}`);
    if (!req.token) throw new PermissionError(`enrollment of ${gw}: no token`);
    const entry = await this.#enroll.get(gw);
    const pending = entry && entry.operation === "PUT" ? parseEnrollEntry(entry.value) : undefined;
    if (!entry || !pending) throw new PermissionError(`enrollment of ${gw}: no enrollment pending (token unknown or already used)`, { gateway: gw });
    if (pending.expiresAt && pending.expiresAt.getTime() < Date.now()) throw new PermissionError(`enrollment of ${gw}: token expired`, { gateway: gw });
    const token = new Secret(req.token);
    if (!hexEqual(tokenHash(token), pending.hash)) throw new PermissionError(`enrollment of ${gw}: wrong token`, { gateway: gw });
    token.wipe();
    try {
      // One-time: delete only if nobody consumed it since we read it (CAS on the revision).
      await this.#enroll.delete(gw, { previousSeq: entry.revision });
    } catch {
      throw new PermissionError(`enrollment of ${gw}: token already used`, { gateway: gw });
    }
    const pub = Buffer.from(req.publicKey);
    const rec: AgentRecord = { gateway: gw, publicKey: pub.toString("base64"), keyId: keyId(pub), enrolledAt: new Date().toISOString() };
    await this.#agents.put(gw, Buffer.from(JSON.stringify(rec)));
    this.#agentKeys.set(gw, rec);
    let n = 0;
    for (const { rec: s } of this.#index.values()) {
      if (s.gateways.includes(gw)) {
        await this.#sealTo(s, [gw]);
        n++;
      }
    }
    this.#log.info({ gateway: gw, keyId: rec.keyId.slice(0, 16), secrets: n }, "agent enrolled");
    return { ok: true, error: "", keyId: rec.keyId };
  }

  // ------------------------------------------------------------------ maintenance ----

  /** End expired rotation windows (reseal without the previous value) and renew certificates. */
  async maintenance(now = Date.now()): Promise<void> {
    for (const [name, { rec, revision }] of [...this.#index]) {
      if (this.#stopped) return;
      try {
        if (rec.previousValidUntil && Date.parse(rec.previousValidUntil) <= now) {
          const values = decryptValues(this.#o.keyring, rec);
          const next: SecretRecord = { ...rec, enc: encryptValues(this.#o.keyring, name, rec.version, { value: values.value, chainPem: values.chainPem }) };
          delete next.previousValidUntil;
          await this.#write(next, revision);
          await this.#sealTo(next, next.gateways);
          this.#log.info({ name, version: rec.version }, "rotation window ended; previous value withdrawn");
        } else if (rec.kind === "private-key" && rec.notAfter && rec.certSpec && rec.gateways[0]) {
          const end = Date.parse(rec.notAfter);
          const life = rec.certSpec.validDays * 86_400_000;
          if (end - now < life * (this.#o.renewFraction ?? 1 / 3)) {
            await this.issueCertificateFor({ gateway: rec.gateways[0], ...rec.certSpec });
            this.metrics.rotations.inc({ outcome: "ok" });
            this.#log.info({ gateway: rec.gateways[0] }, "certificate renewed before expiry");
          }
        }
      } catch (e) {
        if (!(e instanceof ConflictError)) this.#log.warn({ name, err: (e as Error).message }, "maintenance of secret failed");
      }
    }
  }

  async #ensureCa(): Promise<void> {
    if (this.#index.has(CA_SECRET_NAME)) return;
    const ca = await createCa();
    const rec: SecretRecord = {
      format: 1,
      name: CA_SECRET_NAME,
      kind: "ca",
      version: 1,
      createdAt: new Date().toISOString(),
      gateways: [],
      certificatePem: ca.certificatePem,
      notAfter: certificateNotAfter(ca.certificatePem).toISOString(),
      enc: encryptValues(this.#o.keyring, CA_SECRET_NAME, 1, { value: ca.privateKeyPem }),
    };
    try {
      await this.#write(rec, 0);
      this.#log.info({ notAfter: rec.notAfter }, "fleet CA created");
    } catch (e) {
      if (!(e instanceof ConflictError)) throw e;
      await this.#read(CA_SECRET_NAME); // another replica created it first
    }
  }

  /** Re-encrypt every record with the current master key (after a master-key change). */
  async reencryptAll(): Promise<{ reencrypted: number; unchanged: number }> {
    let reencrypted = 0;
    let unchanged = 0;
    for (const name of [...this.#index.keys()]) {
      for (let attempt = 0; ; attempt++) {
        const cur = await this.#read(name);
        if (!cur) break;
        if (cur.rec.enc.kid === this.#o.keyring.current.id) {
          unchanged++;
          break;
        }
        const values = decryptValues(this.#o.keyring, cur.rec);
        const next = { ...cur.rec, enc: encryptValues(this.#o.keyring, name, cur.rec.version, values) };
        try {
          await this.#write(next, cur.revision);
          reencrypted++;
          break;
        } catch (e) {
          if (e instanceof ConflictError && attempt < 5) continue;
          throw e;
        }
      }
    }
    return { reencrypted, unchanged };
  }

  // ------------------------------------------------------------------ NATS handlers ----

  async #onEnroll(m: Msg): Promise<void> {
    let res: fleet.EnrollResponse;
    try {
      res = await this.enroll(fleet.EnrollRequest.decode(m.data));
      this.metrics.enrollments.inc({ outcome: "ok" });
    } catch (e) {
      this.metrics.enrollments.inc({ outcome: "error" });
      this.#log.warn({ code: (e as FleetswanError).code, err: (e as Error).message }, "enrollment rejected");
      res = { ok: false, error: `${(e as FleetswanError).code ?? "INTERNAL"}: ${(e as Error).message}`, keyId: "" };
    }
    m.respond(fleet.EnrollResponse.encode(res).finish());
  }

  async #onApi(m: Msg): Promise<void> {
    const method = m.subject.slice(m.subject.lastIndexOf(".") + 1);
    const reply = (bytes: Uint8Array): void => void m.respond(bytes);
    try {
      switch (method) {
        case "StoreSecret": {
          const r = keymgr.StoreSecretRequest.decode(m.data);
          const v = new Secret(r.value);
          Buffer.from(r.value.buffer, r.value.byteOffset, r.value.byteLength).fill(0);
          return reply(keymgr.SecretInfo.encode(await this.storeSecret(r.name, v, r.gateways)).finish());
        }
        case "GenerateSecret": {
          const r = keymgr.GenerateSecretRequest.decode(m.data);
          return reply(keymgr.SecretInfo.encode(await this.generateSecret(r.name, r.gateways)).finish());
        }
        case "SealForAgents": {
          const r = keymgr.SealForAgentsRequest.decode(m.data);
          return reply(keymgr.SealForAgentsResponse.encode(await this.sealForAgents(r.name, r.gateways)).finish());
        }
        case "RotateSecret": {
          const r = keymgr.RotateSecretRequest.decode(m.data);
          const v = r.value.length > 0 ? new Secret(r.value) : undefined;
          return reply(keymgr.SecretInfo.encode(await this.rotateSecret(r.name, r.windowSeconds || DEFAULT_WINDOW_SECONDS, v)).finish());
        }
        case "IssueCertificate": {
          const r = keymgr.IssueCertificateRequest.decode(m.data);
          const keyType = (r.keyType || "ecdsa-p256") as LeafKeyType;
          return reply(
            keymgr.IssueCertificateResponse.encode(
              await this.issueCertificateFor({ gateway: r.gateway, dnsNames: r.dnsNames, ipAddresses: r.ipAddresses, keyType, validDays: r.validDays || 90 }),
            ).finish(),
          );
        }
        case "ListSecrets":
          return reply(keymgr.ListSecretsResponse.encode(this.listSecrets()).finish());
        case "DeleteSecret": {
          const r = keymgr.DeleteSecretRequest.decode(m.data);
          return reply(keymgr.DeleteSecretResponse.encode(await this.deleteSecret(r.name)).finish());
        }
        default:
          return reply(keymgr.SecretInfo.encode({ ...keymgr.SecretInfo.fromPartial({}), error: { code: "UNKNOWN_METHOD", message: `unknown method "${method}"` } }).finish());
      }
    } catch (e) {
      if (!(e instanceof FleetswanError)) this.#log.error({ method, err: (e as Error).message }, "keymgr API call failed");
      const error = err(e instanceof SealError ? new FleetswanError(e.code, e.message) : e);
      // Every reply type has `error` as field 1, so one encoding fits all of them.
      return reply(keymgr.SecretInfo.encode({ ...keymgr.SecretInfo.fromPartial({}), error }).finish());
    }
  }
}
