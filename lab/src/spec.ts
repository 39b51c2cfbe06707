/**
 * The lab's fleet spec (docs/fleet-spec.md), rendered from a LabConfig. lab/fleet.yaml is
 * this rendering for the default lab (a unit test keeps the two equal); tests render
 * variants (other proposals, start actions, lifetimes) of the same fleet.
 */
import { fleetGateways, peerGateways, type LabConfig, type LabGateway } from "./model.js";

/** One tunnel of the lab: a connection between two fleet gateways or to an external peer. */
export interface LabTunnel {
  /** Connection name in the spec and in `fleetswan status` / `fleetswan conn`. */
  name: string;
  kind: "fleet" | "peer";
  /** The fleet gateway (initiator side for peers). */
  a: LabGateway;
  /** The other end: a fleet gateway or the strongSwan peer. */
  b: LabGateway;
}

/**
 * PSKs agreed with the strongSwan peer, one per peer connection. Lab-only values (they are
 * in lab/fleet.yaml for everyone to read); fleet connections get theirs from keymgr.
 */
export const LAB_PEER_PSKS: Record<string, string> = {
  "a-c": "Lab0nly-kT7vQ2mX9pR4sW8zN3bJ6hF1dG5c",
  "b-c": "Lab0nly-yH3nL8qV1tC6xM9rB2wK5pZ7gD4f",
};

/** A PSK for a peer connection that is not in LAB_PEER_PSKS (scale runs): derived, random-looking. */
export function peerPsk(name: string): string {
  const known = LAB_PEER_PSKS[name];
  if (known) return known;
  let h = 2166136261;
  let out = "Lab0nly-";
  for (let i = 0; out.length < 40; i++) {
    h = Math.imul(h ^ (name.charCodeAt(i % name.length) + i), 16777619) >>> 0;
    out += "abcdefghjkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789"[h % 55];
  }
  return out;
}

export type Topology = "mesh" | "hub";

/** Tunnels: a full mesh between fleet gateways (or hub-and-spoke from the first), plus each fleet gateway to each strongSwan peer. */
export function labTunnels(c: LabConfig, topology: Topology = "mesh"): LabTunnel[] {
  const fl = fleetGateways(c);
  const out: LabTunnel[] = [];
  if (topology === "mesh") {
    for (let i = 0; i < fl.length; i++) for (let j = i + 1; j < fl.length; j++) out.push({ name: `${fl[i]!.label}-${fl[j]!.label}`, kind: "fleet", a: fl[i]!, b: fl[j]! });
  } else {
    for (let j = 1; j < fl.length; j++) out.push({ name: `${fl[0]!.label}-${fl[j]!.label}`, kind: "fleet", a: fl[0]!, b: fl[j]! });
  }
  for (const p of peerGateways(c)) for (const g of fl) out.push({ name: `${g.label}-${p.label}`, kind: "peer", a: g, b: p });
  return out;
}

export type Yaml = string | number | boolean | Yaml[] | { [k: string]: Yaml | undefined };

export interface SpecOptions {
  topology?: Topology;
  /** Connection options for `defaults` (merged over the lab's). */
  defaults?: Record<string, Yaml>;
  /** Named proposal sets (merged over the lab's `lab` set). */
  proposals?: Record<string, { ike: string[]; esp: string[] }>;
  /** Per-connection options by tunnel name (e.g. { "a-b": { proposals: "other" } }). */
  connections?: Record<string, Record<string, Yaml>>;
  /** PSK per peer connection (default peerPsk(name)). */
  psk?: (tunnel: string) => string;
  /** Gateways only, no connections or peers (the scale run enrolls first, then applies the tunnels). */
  omitTunnels?: boolean;
}

export const LAB_PROPOSALS = { ike: ["aes256gcm16-prfsha256-curve25519"], esp: ["aes256gcm16"] };
/** A second proposal set for the live-change test. */
export const ALT_PROPOSALS = { ike: ["aes128gcm16-prfsha256-ecp256"], esp: ["aes128gcm16"] };

export const LAB_DEFAULTS: Record<string, Yaml> = {
  proposals: "lab",
  start: "start",
  // userspace ESP on a kernel without ESP: ESP-in-UDP/4500 (RFC 3948) on every tunnel
  encapsulation: "force",
  dpd: { delay: "10s", timeout: "30s", action: "restart" },
};

/** The fleet spec object for the lab. */
export function labSpec(c: LabConfig, o: SpecOptions = {}): Record<string, Yaml> {
  const tunnels = o.omitTunnels ? [] : labTunnels(c, o.topology);
  const gateways: Yaml[] = fleetGateways(c).map((g) => ({
    name: g.name,
    id: g.id,
    addresses: [g.transitAddr],
    subnets: [g.siteSubnet],
    backend: c.backend,
  }));
  const connections: Yaml[] = [];
  const peers: Yaml[] = [];
  for (const t of tunnels) {
    const extra = o.connections?.[t.name] ?? {};
    if (t.kind === "fleet") {
      connections.push({ name: t.name, gateways: [t.a.name, t.b.name], ...extra });
    } else {
      peers.push({
        name: t.name,
        gateway: t.a.name,
        address: t.b.transitAddr,
        id: t.b.id,
        auth: "psk",
        psk: (o.psk ?? peerPsk)(t.name),
        subnets: [t.b.siteSubnet],
        ...extra,
      });
    }
  }
  const spec: Record<string, Yaml> = {
    version: 1,
    // kernel ESP (xfrm): plain ESP unless there is NAT; userspace: ESP-in-UDP always
    defaults: { ...LAB_DEFAULTS, ...(c.backend === "xfrm" ? { encapsulation: "auto" } : {}), ...(o.defaults ?? {}) },
    proposals: { lab: LAB_PROPOSALS, ...(o.proposals ?? {}) },
    gateways,
  };
  if (connections.length) spec.connections = connections;
  if (peers.length) spec.peers = peers;
  return spec;
}

const scalar = (v: string | number | boolean): string => {
  if (typeof v !== "string") return String(v);
  return /^[A-Za-z0-9_.\/-][A-Za-z0-9_.\/:@-]*$/.test(v) && !/^(true|false|null|yes|no|on|off|~)$/i.test(v) && !/^[0-9]+(\.[0-9]*)?$/.test(v) ? v : JSON.stringify(v);
};
const isScalar = (v: Yaml): v is string | number | boolean => typeof v !== "object";
const flow = (v: Yaml): string => {
  if (isScalar(v)) return scalar(v);
  if (Array.isArray(v)) return `[${v.map(flow).join(", ")}]`;
  return `{ ${Object.entries(v).filter(([, x]) => x !== undefined).map(([k, x]) => `${k}: ${flow(x!)}`).join(", ")} }`;
};
const small = (v: Yaml): boolean =>
  isScalar(v) || (Array.isArray(v) ? v.every(isScalar) : Object.values(v).every((x) => x === undefined || isScalar(x) || (Array.isArray(x) && x.every(isScalar))) && flow(v).length <= 60);

/** A small YAML emitter: block maps, flow style for short scalar lists/maps. */
export function toYaml(v: Yaml, indent = ""): string {
  if (isScalar(v)) return `${scalar(v)}\n`;
  if (Array.isArray(v)) {
    if (v.every(isScalar)) return `${flow(v)}\n`;
    return v.map((item) => {
      const body = toYaml(item, indent + "  ");
      return `${indent}- ${body.slice(indent.length + 2)}`;
    }).join("");
  }
  let out = "";
  for (const [k, x] of Object.entries(v)) {
    if (x === undefined) continue;
    if (isScalar(x) || (Array.isArray(x) && x.every(isScalar)) || (!Array.isArray(x) && small(x))) out += `${indent}${k}: ${flow(x)}\n`;
    else out += `${indent}${k}:\n${toYaml(x, indent + "  ")}`;
  }
  return out;
}

export const SPEC_HEADER = `# fleetswan-lab: the embedded default fleet (docs/lab.md).
# gw-a and gw-b run fleetswan (userspace ESP), gw-c is a strongSwan gateway (external peer).
# Full mesh: a-b (fleet connection, PSK from keymgr), a-c and b-c (external peer, PSK below:
# lab-only values, also in gw-c's swanctl.conf). Rendered by lab/src/spec.ts (labSpec):
# a unit test keeps this file and the code equal.
# yaml-language-server: $schema=../docs/fleet-spec.schema.json
`;

/** The spec as YAML text (with the header). */
export function renderLabSpec(c: LabConfig, o: SpecOptions = {}): string {
  return SPEC_HEADER + toYaml(labSpec(c, o));
}
