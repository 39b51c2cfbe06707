/**
 * A fake Engine (engine-api.ts) for the fleet client's tests and benchmarks: it records
 * every apply() with the secrets it was given, works out added/changed/removed the way
 * the real engine must (a connection whose definition or secret changed is "changed";
 * the others keep their SAs), and keeps a per-connection state that commands change.
 */
import { EventEmitter } from "node:events";
import { createHash } from "node:crypto";
import { fleet, ikeagent } from "@fleetswan/proto";
import type { Engine, EngineConfig, EngineEvent, EngineSecret, SecretLookup } from "../engine-api.js";

export interface FakeApply {
  config: EngineConfig;
  /** Secrets as the engine saw them (by secret_ref), for assertions in tests. */
  secrets: Map<string, EngineSecret>;
  result: ikeagent.ReloadConfigResponse;
  at: Date;
}

interface FakeConn {
  def: fleet.ConnectionDef;
  fingerprint: string;
  state: "up" | "down" | "routed";
  uniqueId: number;
}

function secretFingerprint(s: EngineSecret | undefined): string {
  if (!s) return "-";
  const h = createHash("sha256").update(s.current.reveal());
  if (s.previous) h.update("|").update(s.previous.reveal()).update(String(s.previousValidUntil?.getTime()));
  if (s.certificateChainPem) h.update("|").update(s.certificateChainPem);
  return h.digest("hex");
}

export class FakeEngine extends EventEmitter implements Engine {
  readonly applies: FakeApply[] = [];
  readonly commands: { verb: string; connection: string }[] = [];
  readonly conns = new Map<string, FakeConn>();
  #nextId = 1;
  /** Make the next apply() fail with this message (once). */
  failNextApply: string | undefined;
  stopped = false;

  async apply(config: EngineConfig, secrets: SecretLookup): Promise<ikeagent.ReloadConfigResponse> {
    if (this.failNextApply) {
      const m = this.failNextApply;
      this.failNextApply = undefined;
      throw new Error(m);
    }
    const seen = new Map<string, EngineSecret>();
    const res: ikeagent.ReloadConfigResponse = { added: [], changed: [], removed: [], revision: config.revision };
    const names = new Set<string>();
    for (const def of config.connections) {
      names.add(def.name);
      const s = def.secretRef ? secrets(def.secretRef) : undefined;
      if (def.secretRef && s) seen.set(def.secretRef, s);
      const fp = createHash("sha256").update(fleet.ConnectionDef.encode({ ...def, revision: 0n }).finish()).update(secretFingerprint(s)).digest("hex");
      const cur = this.conns.get(def.name);
      if (!cur) {
        res.added.push(def.name);
        this.conns.set(def.name, { def, fingerprint: fp, state: this.#initial(def), uniqueId: this.#nextId++ });
      } else if (cur.fingerprint !== fp) {
        res.changed.push(def.name);
        this.conns.set(def.name, { def, fingerprint: fp, state: this.#initial(def), uniqueId: this.#nextId++ });
      }
    }
    for (const name of [...this.conns.keys()]) {
      if (!names.has(name)) {
        res.removed.push(name);
        this.conns.delete(name);
      }
    }
    this.applies.push({ config, secrets: seen, result: res, at: new Date() });
    if (res.added.length + res.changed.length + res.removed.length > 0) this.emit("change");
    return res;
  }

  #initial(def: fleet.ConnectionDef): FakeConn["state"] {
    if (def.startAction === fleet.StartAction.START_ACTION_START) return "up";
    if (def.startAction === fleet.StartAction.START_ACTION_ROUTE) return "routed";
    return "down";
  }

  #cmd(verb: string, cmd: ikeagent.ConnectionCommand, to: FakeConn["state"]): ikeagent.CommandResult {
    this.commands.push({ verb, connection: cmd.connection });
    const c = this.conns.get(cmd.connection);
    if (!c) return { ok: false, code: "NOT_FOUND", message: `connection "${cmd.connection}" not found` };
    c.state = to;
    this.emit("change");
    this.emit("event", { time: new Date(), kind: to === "up" ? "ike_up" : "ike_down", connection: cmd.connection, message: `${verb} (fake)` } satisfies EngineEvent);
    return { ok: true, code: "", message: `${verb} ${cmd.connection}` };
  }

  async initiate(cmd: ikeagent.ConnectionCommand) {
    return this.#cmd("initiate", cmd, "up");
  }
  async terminate(cmd: ikeagent.ConnectionCommand) {
    return this.#cmd("terminate", cmd, "down");
  }
  async route(cmd: ikeagent.ConnectionCommand) {
    return this.#cmd("route", cmd, "routed");
  }
  async unroute(cmd: ikeagent.ConnectionCommand) {
    return this.#cmd("unroute", cmd, "down");
  }

  listSas(req: ikeagent.ListSasRequest): ikeagent.ListSasResponse {
    const ikeSas: ikeagent.IkeSaInfo[] = [];
    for (const [name, c] of this.conns) {
      if (c.state !== "up" || (req.connection && req.connection !== name)) continue;
      ikeSas.push(ikeagent.IkeSaInfo.fromPartial({ name, uniqueId: BigInt(c.uniqueId), state: ikeagent.IkeSaState.IKE_SA_STATE_ESTABLISHED, children: [ikeagent.ChildSaInfo.fromPartial({ name, uniqueId: BigInt(c.uniqueId), state: ikeagent.ChildSaState.CHILD_SA_STATE_INSTALLED })] }));
    }
    return { ikeSas };
  }

  listConnections(): ikeagent.ListConnectionsResponse {
    return {
      connections: [...this.conns.entries()].map(([name, c]) =>
        ikeagent.ConnectionInfo.fromPartial({ name, startAction: ["add", "add", "start", "route"][c.def.startAction] ?? "add", routed: c.state === "routed", established: c.state === "up" ? 1 : 0, revision: c.def.revision }),
      ),
    };
  }

  async diagnostics(_req: ikeagent.GetDiagnosticsRequest): Promise<ikeagent.Diagnostics> {
    return ikeagent.Diagnostics.fromPartial({ collectedAt: new Date(), version: "fake", sas: this.listSas({ connection: "" }), connections: this.listConnections() });
  }

  async stop(_opts?: { keepSas?: boolean }): Promise<void> {
    this.stopped = true;
  }

  /** Applies that changed something (added, changed or removed a connection). */
  get effectiveApplies(): FakeApply[] {
    return this.applies.filter((a) => a.result.added.length + a.result.changed.length + a.result.removed.length > 0);
  }
}
