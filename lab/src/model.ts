/**
 * The lab's topology and fleet as data. Everything else (namespaces, daemons, the fleet
 * spec, strongSwan's config) is derived from a LabConfig, so the interactive lab and the
 * e2e tests build the very same thing.
 *
 *                 host: bridge <inst>-mgmt 198.18.N.1/24 (NATS, controller, keymgr; metrics)
 *                   |  mgmt veths (198.18.N.10+i)
 *      +------------+-------------+------------------+
 *    gw-a (fleetswan)        gw-b (fleetswan)     gw-c (strongSwan)
 *    transit 192.0.2.1       transit 192.0.2.2    transit 192.0.2.3     <- bridge br0 in ns <inst>-transit
 *    site 10.1.0.1/24        site 10.2.0.1/24     site 10.3.0.1/24
 *      |                       |                     |
 *    host-a 10.1.0.10        host-b 10.2.0.10     host-c 10.3.0.10
 */
import { join } from "node:path";

export type GatewayKind = "fleetswan" | "strongswan";

export interface LabGateway {
  /** Fleet spec name, e.g. "gw-a" (also the namespace suffix). */
  name: string;
  /** Short label for the site host ("a" -> host-a). */
  label: string;
  /** 1-based position; addresses derive from it. */
  index: number;
  kind: GatewayKind;
  /** IKE identity. */
  id: string;
  /** Address on the transit network (IKE/ESP). */
  transitAddr: string;
  /** Subnet behind the gateway, e.g. 10.1.0.0/24. */
  siteSubnet: string;
  /** The gateway's address in its site subnet (10.i.0.1). */
  siteGwAddr: string;
  /** The site host's address (10.i.0.10), when the lab has site hosts. */
  hostAddr?: string;
  /** Address on the management network (reaches NATS on the host; metrics). */
  mgmtAddr: string;
}

export interface LabConfig {
  /** Prefix of every namespace and host interface (<= 9 chars, [a-z0-9]). */
  instance: string;
  /** State dir: pid files, logs, NATS store, agent state, strongSwan config. */
  stateDir: string;
  /** Repository root (bin/fleetswan.js). */
  repoDir: string;
  /** First three octets of the management /24 on the host bridge, e.g. "198.18.0". */
  mgmtNet: string;
  natsPort: number;
  natsMonitorPort: number;
  controllerMetricsPort: number;
  keymgrMetricsPort: number;
  /** Dataplane backend of the fleetswan gateways. */
  backend: "userspace" | "xfrm";
  gateways: LabGateway[];
  /** A host namespace behind every gateway (the scale run has none: site address on lo). */
  siteHosts: boolean;
}

export const DEFAULT_INSTANCE = "fslab";
export const DEFAULT_STATE_DIR = "/var/tmp/fleetswan-lab";
export const IKE_ID_DOMAIN = "lab.example";

/** The lab's three gateways: two fleetswan gateways and one strongSwan external peer. */
export function defaultGateways(mgmtNet = "198.18.0"): LabGateway[] {
  return [
    makeGateway(1, "a", "fleetswan", mgmtNet),
    makeGateway(2, "b", "fleetswan", mgmtNet),
    makeGateway(3, "c", "strongswan", mgmtNet),
  ];
}

export function makeGateway(index: number, label: string, kind: GatewayKind, mgmtNet: string, siteHost = true): LabGateway {
  if (index < 1 || index > 240) throw new Error(`gateway index ${index} out of range 1..240`);
  const name = `gw-${label}`;
  return {
    name,
    label,
    index,
    kind,
    id: `${name}.${IKE_ID_DOMAIN}`,
    transitAddr: `192.0.2.${index}`,
    siteSubnet: `10.${index}.0.0/24`,
    siteGwAddr: `10.${index}.0.1`,
    hostAddr: siteHost ? `10.${index}.0.10` : undefined,
    mgmtAddr: `${mgmtNet}.${10 + index}`,
  };
}

export interface LabConfigOptions {
  instance?: string;
  stateDir?: string;
  repoDir: string;
  mgmtNet?: string;
  natsPort?: number;
  natsMonitorPort?: number;
  controllerMetricsPort?: number;
  keymgrMetricsPort?: number;
  backend?: "userspace" | "xfrm";
  gateways?: LabGateway[];
  siteHosts?: boolean;
}

export function makeLabConfig(o: LabConfigOptions): LabConfig {
  const instance = o.instance ?? DEFAULT_INSTANCE;
  if (!/^[a-z][a-z0-9]{0,8}$/.test(instance)) throw new Error(`lab instance "${instance}" must be 1..9 chars [a-z0-9], starting with a letter`);
  const mgmtNet = o.mgmtNet ?? "198.18.0";
  return {
    instance,
    stateDir: o.stateDir ?? (instance === DEFAULT_INSTANCE ? DEFAULT_STATE_DIR : join(DEFAULT_STATE_DIR, `../fleetswan-lab-${instance}`)),
    repoDir: o.repoDir,
    mgmtNet,
    natsPort: o.natsPort ?? 4222,
    natsMonitorPort: o.natsMonitorPort ?? 8222,
    controllerMetricsPort: o.controllerMetricsPort ?? 9741,
    keymgrMetricsPort: o.keymgrMetricsPort ?? 9742,
    backend: o.backend ?? "userspace",
    gateways: o.gateways ?? defaultGateways(mgmtNet),
    siteHosts: o.siteHosts ?? true,
  };
}

/** Host address on the management bridge (NATS listens here). */
export const mgmtHostAddr = (c: LabConfig): string => `${c.mgmtNet}.1`;
export const natsUrl = (c: LabConfig): string => `nats://${mgmtHostAddr(c)}:${c.natsPort}`;

export const nsGateway = (c: LabConfig, g: LabGateway): string => `${c.instance}-${g.name}`;
export const nsHost = (c: LabConfig, g: LabGateway): string => `${c.instance}-host-${g.label}`;
export const nsTransit = (c: LabConfig): string => `${c.instance}-transit`;
export const mgmtBridge = (c: LabConfig): string => `${c.instance}-mgmt`;
/** Host end of a gateway's management veth (<= 15 chars). */
export const mgmtHostIf = (c: LabConfig, g: LabGateway): string => `${c.instance}-m${g.index}`;

/** Interface names inside a gateway namespace. */
export const GW_IF = { transit: "transit", site: "site", mgmt: "mgmt" } as const;
/** The transit bridge (inside the transit namespace) and a gateway's port on it. */
export const TRANSIT_BRIDGE = "br0";
export const transitPort = (g: LabGateway): string => `p${g.index}`;

export const gatewayDir = (c: LabConfig, g: LabGateway): string => join(c.stateDir, g.name);
export const logsDir = (c: LabConfig): string => join(c.stateDir, "logs");
export const pidFile = (c: LabConfig, proc: string): string => join(c.stateDir, "run", `${proc}.pid`);
export const logFile = (c: LabConfig, proc: string): string => join(logsDir(c), `${proc}.log`);

export const fleetGateways = (c: LabConfig): LabGateway[] => c.gateways.filter((g) => g.kind === "fleetswan");
export const peerGateways = (c: LabConfig): LabGateway[] => c.gateways.filter((g) => g.kind === "strongswan");
export const gatewayByName = (c: LabConfig, name: string): LabGateway => {
  const g = c.gateways.find((x) => x.name === name || x.label === name);
  if (!g) throw new Error(`no gateway "${name}" in the lab (have ${c.gateways.map((x) => x.name).join(", ")})`);
  return g;
};

/** The fleetswan ikeagent and dataplane metrics URLs of a gateway (reachable from the host). */
export const IKEAGENT_METRICS_PORT = 9743;
export const DATAPLANE_METRICS_PORT = 9744;
