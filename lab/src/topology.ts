/**
 * Network namespaces of the lab (see the picture in model.ts and docs/lab.md):
 *   - <inst>-transit: bridge br0 joining every gateway's `transit` veth (the "internet").
 *   - <inst>-gw-X: a gateway; `transit` (192.0.2.i/24), `site` (10.i.0.1/24), `mgmt`
 *     (198.18.N.10+i/24, a veth to the host bridge <inst>-mgmt: NATS, metrics). No default
 *     route: traffic between sites can only go through a tunnel (see addUnderlayRoutes).
 *   - <inst>-host-X: a host in the site subnet (10.i.0.10/24, default route via the gateway);
 *     without site hosts (scale runs) the gateway has its site address on lo.
 * Everything is created by `createTopology` and removed by `destroyTopology`, which also
 * kills every process still running in those namespaces.
 */
import { inNs, run, sleep } from "./util.js";
import {
  GW_IF, TRANSIT_BRIDGE, mgmtBridge, mgmtHostAddr, mgmtHostIf, nsGateway, nsHost, nsTransit, transitPort,
  type LabConfig, type LabGateway,
} from "./model.js";

/** Network namespaces that exist now. */
export async function listNetns(): Promise<string[]> {
  const r = await run(["ip", "-j", "netns", "list"], { allowFail: true });
  if (r.code !== 0 || r.stdout.trim() === "") return [];
  return (JSON.parse(r.stdout) as { name: string }[]).map((x) => x.name);
}

/** Every namespace the lab owns. */
export function labNamespaces(c: LabConfig): string[] {
  const out = [nsTransit(c)];
  for (const g of c.gateways) {
    out.push(nsGateway(c, g));
    if (c.siteHosts) out.push(nsHost(c, g));
  }
  return out;
}

/** Which of the lab's namespaces exist (and whether the host bridge does). */
export async function topologyState(c: LabConfig): Promise<{ present: string[]; missing: string[]; bridge: boolean }> {
  const have = new Set(await listNetns());
  const all = labNamespaces(c);
  const bridge = (await run(["ip", "link", "show", mgmtBridge(c)], { allowFail: true })).code === 0;
  return { present: all.filter((n) => have.has(n)), missing: all.filter((n) => !have.has(n)), bridge };
}

const ip = (args: string[]): Promise<unknown> => run(["ip", ...args]);
const ipn = (ns: string, args: string[]): Promise<unknown> => run(["ip", "-n", ns, ...args]);

async function addNs(ns: string, sysctls: Record<string, string>): Promise<void> {
  await ip(["netns", "add", ns]);
  await ipn(ns, ["link", "set", "lo", "up"]);
  const kv = Object.entries(sysctls).map(([k, v]) => `${k}=${v}`);
  if (kv.length) await run(inNs(ns, ["sysctl", "-q", "-w", ...kv]));
}

const GW_SYSCTLS = {
  "net.ipv4.ip_forward": "1",
  "net.ipv4.conf.all.rp_filter": "0",
  "net.ipv4.conf.default.rp_filter": "0",
  // a gateway must not answer ARP for its other addresses on the wrong link
  "net.ipv4.conf.all.arp_ignore": "1",
};

async function createGateway(c: LabConfig, g: LabGateway): Promise<void> {
  const ns = nsGateway(c, g);
  await addNs(ns, GW_SYSCTLS);
  // transit: veth to the bridge in the transit namespace
  await ipn(ns, ["link", "add", GW_IF.transit, "type", "veth", "peer", "name", transitPort(g), "netns", nsTransit(c)]);
  await ipn(nsTransit(c), ["link", "set", transitPort(g), "master", TRANSIT_BRIDGE, "up"]);
  await ipn(ns, ["addr", "add", `${g.transitAddr}/24`, "dev", GW_IF.transit]);
  await ipn(ns, ["link", "set", GW_IF.transit, "up"]);
  // management: veth to the host bridge
  const hostIf = mgmtHostIf(c, g);
  await ip(["link", "add", hostIf, "type", "veth", "peer", "name", GW_IF.mgmt, "netns", ns]);
  await ip(["link", "set", hostIf, "master", mgmtBridge(c), "up"]);
  await ipn(ns, ["addr", "add", `${g.mgmtAddr}/24`, "dev", GW_IF.mgmt]);
  await ipn(ns, ["link", "set", GW_IF.mgmt, "up"]);
  // site: a veth to the site host, or a dummy interface holding the site subnet
  if (c.siteHosts) {
    const hn = nsHost(c, g);
    await addNs(hn, {});
    await ipn(ns, ["link", "add", GW_IF.site, "type", "veth", "peer", "name", "eth0", "netns", hn]);
    await ipn(hn, ["addr", "add", `${g.hostAddr}/24`, "dev", "eth0"]);
    await ipn(hn, ["link", "set", "eth0", "up"]);
    await ipn(hn, ["route", "add", "default", "via", g.siteGwAddr]);
    await ipn(ns, ["addr", "add", `${g.siteGwAddr}/24`, "dev", GW_IF.site]);
    await ipn(ns, ["link", "set", GW_IF.site, "up"]);
  } else {
    // no site host (scale runs): the site address on lo, as in the harness topologies
    // (this host kernel has no dummy interfaces)
    await ipn(ns, ["addr", "add", `${g.siteGwAddr}/32`, "dev", "lo"]);
  }
}

/** Run fn over items with at most `limit` in flight. */
async function pool<T>(items: T[], limit: number, fn: (x: T) => Promise<void>): Promise<void> {
  let i = 0;
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, async () => {
    while (i < items.length) await fn(items[i++]!);
  }));
}

/** Create the whole topology. Throws (after removing what it made) on any failure. */
export async function createTopology(c: LabConfig): Promise<void> {
  try {
    await ip(["link", "add", mgmtBridge(c), "type", "bridge"]);
    await ip(["addr", "add", `${mgmtHostAddr(c)}/24`, "dev", mgmtBridge(c)]);
    await ip(["link", "set", mgmtBridge(c), "up"]);
    await addNs(nsTransit(c), {});
    await ipn(nsTransit(c), ["link", "add", TRANSIT_BRIDGE, "type", "bridge"]);
    await ipn(nsTransit(c), ["link", "set", TRANSIT_BRIDGE, "up"]);
    await pool(c.gateways, 8, (g) => createGateway(c, g));
  } catch (e) {
    await destroyTopology(c);
    throw e;
  }
}

/** PIDs of every process in the lab's namespaces. */
export async function pidsInNamespaces(c: LabConfig): Promise<number[]> {
  const have = new Set(await listNetns());
  const pids: number[] = [];
  for (const ns of labNamespaces(c)) {
    if (!have.has(ns)) continue;
    const r = await run(["ip", "netns", "pids", ns], { allowFail: true });
    for (const l of r.stdout.split("\n")) if (/^\d+$/.test(l.trim())) pids.push(Number(l.trim()));
  }
  return pids;
}

/** Kill what still runs in the namespaces, delete them and the host bridge. Idempotent. */
export async function destroyTopology(c: LabConfig): Promise<void> {
  for (const pid of await pidsInNamespaces(c)) {
    try { process.kill(pid, "SIGKILL"); } catch { /* gone */ }
  }
  if ((await pidsInNamespaces(c)).length) await sleep(200);
  const have = new Set(await listNetns());
  await pool(labNamespaces(c).filter((n) => have.has(n)), 8, async (ns) => {
    await run(["ip", "netns", "del", ns], { allowFail: true });
  });
  for (const g of c.gateways) await run(["ip", "link", "del", mgmtHostIf(c, g)], { allowFail: true });
  await run(["ip", "link", "del", mgmtBridge(c)], { allowFail: true });
}

/**
 * Plain routes between the sites over the transit network, in each gateway's main table:
 * with them, a packet the IPsec policy does not catch would leave in cleartext, so a capture
 * that finds none proves the policies (tunnels, trap/drop) hold. Without them (the default)
 * a missing tunnel just means "no route".
 */
export async function addUnderlayRoutes(c: LabConfig): Promise<void> {
  for (const g of c.gateways) for (const o of c.gateways) {
    if (o === g) continue;
    await run(["ip", "-n", nsGateway(c, g), "route", "replace", o.siteSubnet, "via", o.transitAddr, "dev", GW_IF.transit]);
  }
}

export async function removeUnderlayRoutes(c: LabConfig): Promise<void> {
  for (const g of c.gateways) for (const o of c.gateways) {
    if (o === g) continue;
    await run(["ip", "-n", nsGateway(c, g), "route", "del", o.siteSubnet, "via", o.transitAddr], { allowFail: true });
  }
}
