import { createHash } from "node:crypto";
import { fleet, controller } from "@fleetswan/proto";
import type { CompiledFleet, ConnSpec } from "./spec/compile.js";
import { orient, type Oriented } from "./spec/validate.js";

type GatewayView = fleet.GatewayView;
type ConnectionDef = fleet.ConnectionDef;

/**
 * Per-revision bookkeeping stored with each spec revision: a hash per connection (per
 * gateway) and per view, with the revision in which it last changed. r = 0 means "the
 * revision this record is stored at" (unknown until the KV write succeeds).
 */
export interface RenderState {
  conns: Record<string, { h: string; r: number }>;
  views: Record<string, { h: string; r: number; t: string }>;
}

export interface RenderedGateway {
  gateway: string;
  self: fleet.GatewaySelf;
  defs: ConnectionDef[];
  policyGroups: fleet.PolicyGroup[];
  caCertificates: string[];
  /** Hash of the whole view with revisions and time left out. */
  hash: string;
  connHashes: Map<string, string>;
}

const START: Record<string, fleet.StartAction> = { start: fleet.StartAction.START_ACTION_START, route: fleet.StartAction.START_ACTION_ROUTE, add: fleet.StartAction.START_ACTION_ADD };
const DPD: Record<string, fleet.DpdAction> = { clear: fleet.DpdAction.DPD_ACTION_CLEAR, trap: fleet.DpdAction.DPD_ACTION_TRAP, restart: fleet.DpdAction.DPD_ACTION_RESTART };
const AUTH = { psk: fleet.AuthMethod.AUTH_METHOD_PSK, pubkey: fleet.AuthMethod.AUTH_METHOD_PUBKEY };

/** Name of the secret an end of a connection uses (never the value). */
export function secretRefFor(c: ConnSpec, gateway: string): string {
  return c.options.auth === "psk" ? `psk.${c.name}` : `cert.${gateway}`;
}

function connectionDef(f: CompiledFleet, o: Oriented): ConnectionDef {
  const c = o.conn;
  const op = c.options;
  const local = f.gateways.get(o.gateway)!;
  const remoteGw = o.peerGateway ? f.gateways.get(o.peerGateway) : undefined;
  const auth = AUTH[op.auth];
  return fleet.ConnectionDef.fromPartial({
    name: c.name,
    local: { addresses: local.addresses, id: local.id, auth, subnets: o.localSubnets, port: 500 },
    remote: remoteGw
      ? { addresses: remoteGw.addresses, id: remoteGw.id, auth, subnets: o.remoteSubnets, port: 500 }
      : { addresses: [c.peer!.address], id: c.peer!.id, auth, subnets: o.remoteSubnets, caPem: c.peer!.caPem, port: c.peer!.port },
    ikeProposals: op.ikeProposals,
    espProposals: op.espProposals,
    ikeLifetimeSeconds: op.ikeLifetime,
    childLifetimeSeconds: op.childLifetime,
    rekeyMarginSeconds: op.rekeyMargin,
    rekeyFuzzPercent: op.rekeyFuzz,
    childLifetimeBytes: BigInt(op.childLifetimeBytes),
    childLifetimePackets: BigInt(op.childLifetimePackets),
    dpdDelaySeconds: op.dpdDelay,
    dpdTimeoutSeconds: op.dpdTimeout,
    dpdAction: DPD[op.dpdAction]!,
    startAction: START[op.start]!,
    mode: op.mode,
    forceEncap: op.encapsulation === "force",
    keyingTries: op.keyingTries,
    uniqueIds: op.uniqueIds,
    replayWindow: op.replayWindow,
    secretRef: secretRefFor(c, o.gateway),
    revision: 0n,
    peerGateway: o.peerGateway ?? "",
    mark: op.mark,
  });
}

const sha = (b: Uint8Array): string => createHash("sha256").update(b).digest("hex");

/** Everything each gateway needs, without revisions (deterministic for a given spec). */
export function renderGateways(f: CompiledFleet): Map<string, RenderedGateway> {
  const out = new Map<string, RenderedGateway>();
  for (const [gw, conns] of orient(f)) {
    const g = f.gateways.get(gw)!;
    const defs = conns.map((o) => connectionDef(f, o)).sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    const connHashes = new Map(defs.map((d) => [d.name, sha(fleet.ConnectionDef.encode(d).finish())]));
    const self = fleet.GatewaySelf.fromPartial({ addresses: g.addresses, id: g.id, subnets: g.subnets, backend: g.backend });
    const policyGroups = g.policyGroups.filter((pg) => pg.destinations.length).map((pg) => fleet.PolicyGroup.fromPartial({ name: pg.name, destinations: pg.destinations }));
    const hash = sha(fleet.GatewayView.encode(fleet.GatewayView.fromPartial({ gateway: gw, self, connections: defs, policyGroups, caCertificates: f.caCertificates })).finish());
    out.set(gw, { gateway: gw, self, defs, policyGroups, caCertificates: f.caCertificates, hash, connHashes });
  }
  return out;
}

/** Replace the "this revision" marker (0) by the record's revision. */
export function resolveState(s: RenderState, revision: number): RenderState {
  const conns: RenderState["conns"] = {};
  const views: RenderState["views"] = {};
  for (const [k, v] of Object.entries(s.conns)) conns[k] = { h: v.h, r: v.r || revision };
  for (const [k, v] of Object.entries(s.views)) views[k] = { ...v, r: v.r || revision };
  return { conns, views };
}

export const EMPTY_STATE: RenderState = { conns: {}, views: {} };

/**
 * Compare with the previous revision's state: unchanged connections and views keep their
 * revision, changed ones get `revision` (0 = the revision about to be written).
 */
export function nextState(rendered: Map<string, RenderedGateway>, prev: RenderState, revision: number, now: Date): { state: RenderState; changes: controller.GatewayChange[] } {
  const state: RenderState = { conns: {}, views: {} };
  const changes: controller.GatewayChange[] = [];
  const prevByGw = new Map<string, string[]>();
  for (const key of Object.keys(prev.conns)) {
    const i = key.indexOf("/");
    const gw = key.slice(0, i);
    const list = prevByGw.get(gw) ?? [];
    list.push(key.slice(i + 1));
    prevByGw.set(gw, list);
  }
  for (const [gw, r] of rendered) {
    const ch = controller.GatewayChange.fromPartial({ gateway: gw });
    for (const [name, h] of r.connHashes) {
      const key = `${gw}/${name}`;
      const old = prev.conns[key];
      if (!old) ch.added.push(name);
      else if (old.h !== h) ch.changed.push(name);
      state.conns[key] = old && old.h === h ? old : { h, r: revision };
    }
    for (const name of prevByGw.get(gw) ?? []) if (!r.connHashes.has(name)) ch.removed.push(name);
    const oldView = prev.views[gw];
    state.views[gw] = oldView && oldView.h === r.hash ? oldView : { h: r.hash, r: revision, t: now.toISOString() };
    if (!oldView) ch.added.unshift("(gateway)");
    else if (oldView.h !== r.hash && ch.added.length + ch.changed.length + ch.removed.length === 0) ch.changed.push("(gateway settings)");
    if (ch.added.length + ch.changed.length + ch.removed.length) changes.push(ch);
  }
  for (const gw of Object.keys(prev.views)) {
    if (rendered.has(gw)) continue;
    const removed = prevByGw.get(gw) ?? [];
    changes.push(controller.GatewayChange.fromPartial({ gateway: gw, removed: ["(gateway)", ...removed] }));
  }
  changes.sort((a, b) => (a.gateway < b.gateway ? -1 : 1));
  return { state, changes };
}

/** A gateway's certificate from the fleet CA (pubkey auth), not part of the spec. */
export interface GatewayCert {
  certificatePem: string;
  caPem: string;
}

/**
 * The views of a revision, from its resolved state. `certOf` adds what is not in the
 * spec: for connections with pubkey auth, the gateway's certificate (local.certificate_pem;
 * its private key is the sealed secret cert.<gw>) and the fleet CA (ca_certificates).
 * These change on renewal without a new spec revision: the view keeps its revision and
 * only its bytes change.
 */
export function buildViews(rendered: Map<string, RenderedGateway>, state: RenderState, certOf: (gw: string) => GatewayCert | undefined = () => undefined): Map<string, GatewayView> {
  const out = new Map<string, GatewayView>();
  for (const [gw, r] of rendered) {
    const v = state.views[gw];
    if (!v) throw new Error(`render state has no view for gateway ${gw}`);
    const pubkey = r.defs.some((d) => d.local?.auth === fleet.AuthMethod.AUTH_METHOD_PUBKEY);
    const cert = pubkey ? certOf(gw) : undefined;
    const cas = cert?.caPem && !r.caCertificates.includes(cert.caPem) ? [...r.caCertificates, cert.caPem] : r.caCertificates;
    out.set(gw, fleet.GatewayView.fromPartial({
      gateway: gw,
      revision: BigInt(v.r),
      renderedAt: new Date(v.t),
      self: r.self,
      connections: r.defs.map((d) => ({
        ...d,
        ...(cert?.certificatePem && d.local?.auth === fleet.AuthMethod.AUTH_METHOD_PUBKEY ? { local: { ...d.local, certificatePem: cert.certificatePem } } : {}),
        revision: BigInt(state.conns[`${gw}/${d.name}`]?.r ?? v.r),
      })),
      policyGroups: r.policyGroups,
      caCertificates: cas,
    }));
  }
  return out;
}
