/**
 * The agent's side of the control plane (fleet mode): enrolls, watches its view
 * (fleet-views/<gateway>) and sealed secrets (fleet-secrets/<gateway>.>), unseals and
 * validates them, and hands the difference to the engine. Fail static: the last good
 * view and the sealed secrets are persisted in the state dir and applied at start, so
 * the gateway keeps working while NATS, the controller or keymgr is down; on reconnect
 * it resyncs, and calls engine.apply() only when something really changed.
 * Publishes AgentStatus (every 10 s and on engine "change") and AgentEvents, and
 * answers AgentCommands. Subjects: docs/nats-layout.md; permissions: docs/security.md.
 */
import { readFileSync, existsSync, unlinkSync } from "node:fs";
import { join } from "node:path";
import { createHash } from "node:crypto";
import { connect, type Msg, type NatsConnection, type Subscription } from "nats";
import { Counter, Gauge, Registry } from "prom-client";
import { KeyWatcher, Secret, natsConnectionOptions, type Logger, type NatsAuth } from "@fleetswan/common";
import { fleet, ikeagent } from "@fleetswan/proto";
import type { Engine, EngineConfig, EngineEvent, EngineSecret } from "../engine-api.js";
import { loadOrCreateAgentKey, unseal, type AgentKey } from "./sealing.js";
import { AgentState } from "./state.js";

export { FakeEngine, type FakeApply } from "./fake-engine.js";
export { loadOrCreateAgentKey, unseal, AGENT_KEY_FILE, type AgentKey } from "./sealing.js";

export const VIEWS_BUCKET = "fleet-views";
export const SECRETS_BUCKET = "fleet-secrets";
export const ENROLL_SUBJECT = "fleet.v1.enroll";
export const ENROLL_TOKEN_FILE = "enroll-token";

/** NATS credentials of the agent (user/password, NKEY seed, creds file, TLS). */
export type FleetClientCredentials = NatsAuth;

export interface FleetClientOptions {
  natsUrl: string | string[];
  gateway: string;
  stateDir: string;
  credentials?: FleetClientCredentials;
  /** One-time enrollment token; else $FLEETSWAN_ENROLL_TOKEN, else <stateDir>/enroll-token. */
  enrollToken?: Secret;
  engine: Engine;
  log: Logger;
  /** The daemon's registry (fleetswan_agent_* metrics); a private one if absent. */
  registry?: Registry;
  /** AgentStatus period (default 10 000 ms). */
  statusIntervalMs?: number;
  /** Consumer idle heartbeat (default 5000 ms); three missed ones trigger a resync. */
  heartbeatMs?: number;
  /** Agent software version in AgentStatus. */
  version?: string;
}

export interface FleetClient {
  stop(): Promise<void>;
  /** Resolves when the agent is enrolled (at once if it already was). */
  readonly enrolled: Promise<void>;
  /** Revision of the view last applied (0n if none). */
  appliedRevision(): bigint;
  /** Versions of the secrets the agent holds, by secret_ref. */
  secretVersions(): Map<string, number>;
  readonly nc: () => NatsConnection | undefined;
}

const NAME_RE = /^[A-Za-z0-9._-]{1,64}$/;

/** Reject a view that is not for us or not well-formed; the previous view stays in force. */
export function validateView(view: fleet.GatewayView, gateway: string): string | undefined {
  if (view.gateway !== gateway) return `view is for gateway "${view.gateway}", not "${gateway}"`;
  const seen = new Set<string>();
  for (const [i, c] of view.connections.entries()) {
    if (!NAME_RE.test(c.name)) return `connections[${i}].name "${c.name}" is invalid`;
    if (seen.has(c.name)) return `connections[${i}].name "${c.name}" is duplicated`;
    seen.add(c.name);
    if (c.local?.auth === fleet.AuthMethod.AUTH_METHOD_PSK && !c.secretRef) return `connections[${i}] (${c.name}) uses a PSK but has no secret_ref`;
  }
  return undefined;
}

function toEngineSecret(p: fleet.SecretPayload): EngineSecret {
  const s: EngineSecret = { kind: p.kind === fleet.SecretKind.SECRET_KIND_PRIVATE_KEY ? "private-key" : "psk", current: new Secret(p.value) };
  if (p.previousValue.length > 0) {
    s.previous = new Secret(p.previousValue);
    if (p.previousValidUntil) s.previousValidUntil = p.previousValidUntil;
  }
  if (p.certificateChainPem) s.certificateChainPem = p.certificateChainPem;
  return s;
}

/** What the engine would see: the view without revision/rendered_at, and the referenced secrets. */
function fingerprint(view: fleet.GatewayView | undefined, secrets: Map<string, { version: number; secret: EngineSecret }>): string {
  const h = createHash("sha256");
  if (!view) return "none";
  h.update(fleet.GatewayView.encode({ ...view, revision: 0n, renderedAt: undefined, connections: view.connections.map((c) => ({ ...c, revision: 0n })) }).finish());
  const refs = [...new Set(view.connections.map((c) => c.secretRef).filter(Boolean))].sort();
  for (const ref of refs) {
    const s = secrets.get(ref);
    h.update(`|${ref}:`);
    if (!s) continue;
    h.update(s.secret.current.reveal());
    if (s.secret.previous) h.update("|p|").update(s.secret.previous.reveal()).update(String(s.secret.previousValidUntil?.getTime()));
    if (s.secret.certificateChainPem) h.update(s.secret.certificateChainPem);
  }
  return h.digest("hex");
}

export async function runFleetClient(opts: FleetClientOptions): Promise<FleetClient> {
  const { gateway, engine, log } = opts;
  const registers = [opts.registry ?? new Registry()];
  const mRevision = new Gauge({ name: "fleetswan_agent_view_revision", help: "Spec revision of the view the agent applied.", registers });
  const mConnected = new Gauge({ name: "fleetswan_agent_nats_connected", help: "1 while connected to NATS.", registers });
  const mApply = new Counter({ name: "fleetswan_agent_apply_total", help: "Views and secrets applied to the engine, by outcome.", labelNames: ["outcome"], registers });
  for (const o of ["ok", "error", "rejected"]) mApply.inc({ outcome: o }, 0);

  const key: AgentKey = loadOrCreateAgentKey(opts.stateDir);
  const state = new AgentState(opts.stateDir);
  let view: fleet.GatewayView | undefined;
  const secrets = new Map<string, { version: number; secret: EngineSecret }>();
  let appliedFingerprint = "";
  let appliedRevision = 0n;
  let applyError = "";
  let stopped = false;
  let nc: NatsConnection | undefined;
  const subs: Subscription[] = [];
  const watchers: KeyWatcher[] = [];

  // ------------------------------------------------------------ inputs ----
  // `persist`: the bytes of the view as received, stored in the state dir as they are.
  const acceptView = (v: fleet.GatewayView, persist?: Uint8Array): boolean => {
    const bad = validateView(v, gateway);
    if (bad) {
      applyError = `view rejected: ${bad}`;
      mApply.inc({ outcome: "rejected" });
      log.warn({ gateway, revision: String(v.revision), reason: bad }, "view rejected; previous view stays in force");
      return false;
    }
    if (view && v.revision < view.revision) {
      log.warn({ gateway, revision: String(v.revision), current: String(view.revision) }, "older view ignored");
      return false;
    }
    view = v;
    if (persist) state.saveView(persist);
    return true;
  };

  const acceptSealed = (ref: string, sealed: fleet.SealedSecret, persist?: Uint8Array): boolean => {
    const cur = secrets.get(ref);
    if (cur && sealed.version < cur.version) {
      log.warn({ gateway, secret: ref, version: sealed.version, current: cur.version }, "older secret version ignored");
      return false;
    }
    let payload: fleet.SecretPayload;
    try {
      payload = unseal(sealed, key, gateway, ref);
    } catch (e) {
      log.warn({ gateway, secret: ref, err: (e as Error).message }, "sealed secret rejected");
      mApply.inc({ outcome: "rejected" });
      return false;
    }
    if (payload.value.length === 0) return false;
    // The replaced Secret is not wiped: the engine may still hold it until its next apply.
    secrets.set(ref, { version: sealed.version, secret: toEngineSecret(payload) });
    Buffer.from(payload.value.buffer, payload.value.byteOffset, payload.value.byteLength).fill(0);
    if (persist) state.saveSealed(ref, persist);
    return true;
  };

  // ------------------------------------------------------------ apply ----
  let applying: Promise<void> | undefined;
  let again = false;
  let timer: NodeJS.Immediate | undefined;
  // No delay: the apply runs right after the I/O callbacks of this turn of the event
  // loop (a view and its secrets arriving in one read are still applied together).
  const scheduleApply = (): void => {
    if (timer || stopped) return;
    timer = setImmediate(() => {
      timer = undefined;
      void runApply();
    });
  };
  const runApply = async (): Promise<void> => {
    if (applying) {
      again = true;
      return applying;
    }
    applying = (async () => {
      do {
        again = false;
        await applyOnce();
      } while (again && !stopped);
    })().finally(() => (applying = undefined));
    return applying;
  };
  const applyOnce = async (): Promise<void> => {
    if (!view) return;
    const fp = fingerprint(view, secrets);
    const v = view;
    if (fp === appliedFingerprint) {
      if (v.revision !== appliedRevision) {
        appliedRevision = v.revision;
        mRevision.set(Number(v.revision));
        publishStatus();
      }
      return;
    }
    const config: EngineConfig = { revision: v.revision, connections: v.connections, policyGroups: v.policyGroups, caCertificates: v.caCertificates };
    if (v.self) config.self = v.self;
    try {
      const res = await engine.apply(config, (ref) => secrets.get(ref)?.secret);
      appliedFingerprint = fp;
      appliedRevision = v.revision;
      const missing = v.connections.filter((c) => c.secretRef && !secrets.has(c.secretRef)).map((c) => c.secretRef);
      applyError = missing.length > 0 ? `waiting for secret(s): ${[...new Set(missing)].join(", ")}` : "";
      mApply.inc({ outcome: "ok" });
      mRevision.set(Number(v.revision));
      log.info({ gateway, revision: String(v.revision), added: res.added, changed: res.changed, removed: res.removed }, "view applied");
      // The status says which revision is applied (no separate event: the engine reports
      // its own "apply" event with the connections it changed).
      publishStatus();
    } catch (e) {
      applyError = (e as Error).message;
      mApply.inc({ outcome: "error" });
      log.error({ gateway, revision: String(v.revision), err: applyError }, "engine apply failed");
      publishStatus();
    }
  };

  // ------------------------------------------------------------ status, events, commands ----
  const publish = (subject: string, data: Uint8Array): boolean => {
    if (!nc || nc.isClosed()) return false;
    try {
      nc.publish(subject, data);
      return true;
    } catch {
      return false; // not connected: status is periodic anyway
    }
  };
  const buildStatus = (): fleet.AgentStatus => {
    const conns = engine.listConnections().connections;
    const sas = engine.listSas({ connection: "" }).ikeSas;
    const missing = engine.policiesMissing?.() ?? new Set<string>();
    const hasChild = (name: string): boolean => sas.some((s) => s.name === name && s.children.some((ch) => ch.state === ikeagent.ChildSaState.CHILD_SA_STATE_INSTALLED || ch.state === ikeagent.ChildSaState.CHILD_SA_STATE_REKEYING));
    return fleet.AgentStatus.fromPartial({
      gateway,
      time: new Date(),
      appliedRevision,
      version: opts.version ?? "0.1.0",
      ikeSas: sas.length,
      childSas: sas.reduce((n, s) => n + s.children.length, 0),
      applyError,
      connections: conns.map((c) =>
        fleet.ConnectionStatus.fromPartial({
          name: c.name,
          // "up" only with an installed CHILD SA whose policies are in the dataplane: an IKE SA alone carries no traffic.
          state: c.established > 0 ? (!hasChild(c.name) ? "connecting" : missing.has(c.name) ? "degraded" : "up") : c.routed ? "routed" : "down",
          childSas: sas.filter((s) => s.name === c.name).reduce((n, s) => n + s.children.length, 0),
          lastErrorCode: c.lastErrorCode,
          lastError: c.lastError,
          spis: sas.filter((s) => s.name === c.name).flatMap((s) => s.children.flatMap((ch) => [ch.spiIn.toString(16).padStart(8, "0"), ch.spiOut.toString(16).padStart(8, "0")])),
        }),
      ),
    });
  };
  // The last status sent, without its time. A change that alters nothing the status shows
  // (the engine's "change" after an apply already reported) is not sent again: at 1,000
  // gateways that halves the statuses of a fleet-wide change. The periodic status is always
  // sent: it is the agent's heartbeat.
  let lastStatusBody: Buffer | undefined;
  const publishStatus = (o: { heartbeat?: boolean } = {}): void => {
    const st = buildStatus();
    const body = Buffer.from(fleet.AgentStatus.encode({ ...st, time: undefined }).finish());
    if (!o.heartbeat && lastStatusBody?.equals(body)) return;
    if (publish(`fleet.v1.gw.${gateway}.status`, fleet.AgentStatus.encode(st).finish())) lastStatusBody = body;
  };
  const publishEvent = (e: EngineEvent): void =>
    void publish(
      `fleet.v1.gw.${gateway}.events`,
      fleet.AgentEvent.encode({ gateway, time: e.time, kind: e.kind, connection: e.connection, code: e.code ?? "", message: e.message }).finish(),
    );
  let changeTimer: NodeJS.Timeout | undefined;
  const onChange = (): void => {
    if (changeTimer) return;
    changeTimer = setTimeout(() => {
      changeTimer = undefined;
      publishStatus();
    }, 200);
  };
  engine.on("change", onChange);
  engine.on("event", publishEvent);

  const onCommand = async (m: Msg): Promise<void> => {
    let reply: fleet.AgentCommandReply;
    try {
      const cmd = fleet.AgentCommand.decode(m.data);
      const cc: ikeagent.ConnectionCommand = { connection: cmd.connection, wait: cmd.timeoutMs > 0, timeoutMs: cmd.timeoutMs };
      const result = (r: ikeagent.CommandResult): fleet.AgentCommandReply => ({ ok: r.ok, code: r.code, message: r.message, bodyJson: "" });
      switch (cmd.verb) {
        case "up":
          reply = result(await engine.initiate(cc));
          break;
        case "down":
          reply = result(await engine.terminate(cc));
          break;
        case "route":
          reply = result(await engine.route(cc));
          break;
        case "unroute":
          reply = result(await engine.unroute(cc));
          break;
        case "list-sas":
          reply = { ok: true, code: "", message: "", bodyJson: JSON.stringify(ikeagent.ListSasResponse.toJSON(engine.listSas({ connection: cmd.connection }))) };
          break;
        case "barf": {
          const d = await engine.diagnostics({ logLines: 200 });
          if (!d.gateway) d.gateway = gateway;
          if (!d.viewJson && view) d.viewJson = JSON.stringify(fleet.GatewayView.toJSON(view)); // the view holds no secrets
          reply = { ok: true, code: "", message: "", bodyJson: JSON.stringify(ikeagent.Diagnostics.toJSON(d)) };
          break;
        }
        default:
          reply = { ok: false, code: "UNKNOWN_VERB", message: `unknown command "${cmd.verb}" (up, down, route, unroute, barf, list-sas)`, bodyJson: "" };
      }
    } catch (e) {
      reply = { ok: false, code: "COMMAND_FAILED", message: (e as Error).message, bodyJson: "" };
    }
    if (m.reply) m.respond(fleet.AgentCommandReply.encode(reply).finish());
  };

  // ------------------------------------------------------------ fail static: local state first ----
  const saved = state.loadView();
  if (saved) acceptView(saved);
  for (const [ref, sealed] of state.loadSealed()) acceptSealed(ref, sealed);
  if (view) {
    log.info({ gateway, revision: String(view.revision), secrets: secrets.size }, "applying the last good view from the state dir");
    await runApply();
  }

  // ------------------------------------------------------------ enrollment ----
  let resolveEnrolled!: () => void;
  const enrolled = new Promise<void>((r) => (resolveEnrolled = r));
  const isEnrolled = () => state.enrolledKeyId() === key.keyId;
  if (isEnrolled()) resolveEnrolled();
  const token = (): Secret | undefined => {
    if (opts.enrollToken) return opts.enrollToken;
    if (process.env.FLEETSWAN_ENROLL_TOKEN) return new Secret(process.env.FLEETSWAN_ENROLL_TOKEN);
    const f = join(opts.stateDir, ENROLL_TOKEN_FILE);
    return existsSync(f) ? new Secret(readFileSync(f, "utf8").trim()) : undefined;
  };
  const enrollLoop = async (): Promise<void> => {
    let delay = 500;
    while (!stopped && !isEnrolled()) {
      const t = token();
      if (!t) {
        log.error({ gateway }, `not enrolled and no enrollment token (${ENROLL_TOKEN_FILE} in the state dir or FLEETSWAN_ENROLL_TOKEN)`);
      } else if (nc && !nc.isClosed()) {
        try {
          const req = fleet.EnrollRequest.encode({ gateway, token: t.reveal().toString("utf8"), publicKey: key.publicRaw }).finish();
          const res = fleet.EnrollResponse.decode((await nc.request(ENROLL_SUBJECT, req, { timeout: 5000 })).data);
          if (res.ok && res.keyId === key.keyId) {
            state.saveEnrolled(key.keyId, gateway);
            const f = join(opts.stateDir, ENROLL_TOKEN_FILE);
            if (existsSync(f)) unlinkSync(f);
            log.info({ gateway, keyId: key.keyId.slice(0, 16) }, "enrolled");
            resolveEnrolled();
            return;
          }
          log.error({ gateway, reason: res.error }, "enrollment refused");
          delay = Math.max(delay, 10_000);
        } catch (e) {
          log.warn({ gateway, err: (e as Error).message }, "enrollment request failed; retrying");
        }
      }
      await new Promise((r) => setTimeout(r, delay).unref());
      delay = Math.min(delay * 2, 30_000);
    }
  };

  // ------------------------------------------------------------ NATS ----
  // Fast ping: a gateway should notice a dead NATS link within seconds (fail static meanwhile).
  const copts = natsConnectionOptions({
    ...(opts.credentials ?? {}),
    servers: opts.natsUrl,
    name: `ikeagent-${gateway}`,
    inboxPrefix: `_INBOX.${gateway}`,
    pingIntervalMs: 5000,
    maxPingOut: 2,
  });

  const online = async (conn: NatsConnection): Promise<void> => {
    nc = conn;
    mConnected.set(1);
    log.info({ gateway, server: conn.getServer() }, "connected to NATS");
    subs.push(conn.subscribe(`fleet.v1.gw.${gateway}.cmd`, { callback: (e, m) => !e && void onCommand(m) }));
    const mk = (bucket: string, k: string, onChange: ConstructorParameters<typeof KeyWatcher>[0]["onChange"]) => {
      const w = new KeyWatcher({ nc: conn, bucket, key: k, onChange, log, heartbeatMs: opts.heartbeatMs ?? 5000, onSynced: scheduleApply });
      watchers.push(w);
      w.start();
    };
    mk(VIEWS_BUCKET, gateway, (ch) => {
      if (ch.key !== gateway || ch.op !== "PUT") return; // a deleted view: keep the last good one
      if (acceptView(fleet.GatewayView.decode(ch.value), ch.value)) scheduleApply();
    });
    mk(SECRETS_BUCKET, `${gateway}.>`, (ch) => {
      const ref = ch.key.slice(gateway.length + 1);
      if (!ch.key.startsWith(`${gateway}.`) || !ref) return;
      if (ch.op === "DEL") {
        if (secrets.delete(ref)) {
          state.deleteSealed(ref);
          scheduleApply();
        }
        return;
      }
      if (acceptSealed(ref, fleet.SealedSecret.decode(ch.value), ch.value)) scheduleApply();
    });
    void enrollLoop();
    const statusTimer = setInterval(() => publishStatus({ heartbeat: true }), opts.statusIntervalMs ?? 10_000);
    statusTimer.unref();
    publishStatus({ heartbeat: true });
    void (async () => {
      for await (const s of conn.status()) {
        if (s.type === "disconnect") {
          mConnected.set(0);
          log.warn({ gateway }, "NATS disconnected; keeping the last good view");
        } else if (s.type === "reconnect") {
          mConnected.set(1);
          log.info({ gateway, server: conn.getServer() }, "NATS reconnected");
          publishStatus({ heartbeat: true });
        }
      }
    })();
    void conn.closed().then(() => {
      clearInterval(statusTimer);
      mConnected.set(0);
    });
  };

  // First connection: retry until it works or we are stopped (nats.js cannot cancel a
  // pending waitOnFirstConnect); afterwards nats.js reconnects by itself.
  const connecting = (async () => {
    let delay = 500;
    let warned = false;
    while (!stopped) {
      try {
        const conn = await connect(copts);
        if (stopped) return void (await conn.close());
        return void (await online(conn));
      } catch (e) {
        if (!warned) log.error({ gateway, err: (e as Error).message }, "cannot connect to NATS; running on the last good view, retrying");
        warned = true;
      }
      await new Promise((r) => setTimeout(r, delay).unref());
      delay = Math.min(delay * 2, 5_000);
    }
  })();

  return {
    enrolled,
    appliedRevision: () => appliedRevision,
    secretVersions: () => new Map([...secrets].map(([k, v]) => [k, v.version])),
    nc: () => nc,
    async stop() {
      stopped = true;
      if (timer) clearImmediate(timer);
      if (changeTimer) clearTimeout(changeTimer);
      engine.off("change", onChange);
      engine.off("event", publishEvent);
      for (const w of watchers) w.stop();
      for (const s of subs) s.unsubscribe();
      if (nc && !nc.isClosed()) await nc.close();
      void connecting;
      await applying;
    },
  };
}
