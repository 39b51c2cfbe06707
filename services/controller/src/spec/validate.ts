import { contains, hostPrefix, intersection, overlaps, parsePrefix, type Prefix } from "../net.js";
import type { CompiledFleet, ConnSpec, Problems } from "./compile.js";

/** One connection as seen from one of its gateways. */
export interface Oriented {
  conn: ConnSpec;
  gateway: string;
  /** The other fleet gateway, or undefined for an external peer. */
  peerGateway?: string;
  /** Who is at the other end: a gateway name or the external peer's address. */
  peerKey: string;
  localSubnets: string[];
  remoteSubnets: string[];
  localAddresses: string[];
  remoteAddresses: string[];
}

/** Connections of each gateway, oriented (local = that gateway). */
export function orient(f: CompiledFleet): Map<string, Oriented[]> {
  const out = new Map<string, Oriented[]>();
  for (const g of f.gateways.keys()) out.set(g, []);
  for (const c of f.connections) {
    const [a, b] = c.gateways as [string, string | undefined];
    const ga = f.gateways.get(a)!;
    if (b === undefined) {
      out.get(a)!.push({
        conn: c, gateway: a, peerKey: `peer ${c.peer!.address}`,
        localSubnets: c.subnets[0], remoteSubnets: c.subnets[1],
        localAddresses: ga.addresses, remoteAddresses: [c.peer!.address],
      });
      continue;
    }
    const gb = f.gateways.get(b)!;
    out.get(a)!.push({ conn: c, gateway: a, peerGateway: b, peerKey: `gateway ${b}`, localSubnets: c.subnets[0], remoteSubnets: c.subnets[1], localAddresses: ga.addresses, remoteAddresses: gb.addresses });
    out.get(b)!.push({ conn: c, gateway: b, peerGateway: a, peerKey: `gateway ${a}`, localSubnets: c.subnets[1], remoteSubnets: c.subnets[0], localAddresses: gb.addresses, remoteAddresses: ga.addresses });
  }
  return out;
}

/** Selectors of an end: its subnets, or its own addresses (host-to-host) when it has none. */
function selectors(subnets: string[], addresses: string[]): Prefix[] {
  const list = subnets.length ? subnets : addresses.filter((a) => a !== "%any");
  const out: Prefix[] = [];
  for (const s of list) {
    const p = subnets.length ? parsePrefix(s) : hostPrefix(s);
    if (typeof p !== "string") out.push(p);
  }
  return out;
}

interface Tagged { p: Prefix; o: Oriented }

/** All overlapping pairs in a list of prefixes (CIDRs nest or are disjoint: a sweep with a stack). */
function overlappingPairs(items: Tagged[]): [Tagged, Tagged][] {
  const sorted = [...items].sort((x, y) => x.p.family - y.p.family || (x.p.addr < y.p.addr ? -1 : x.p.addr > y.p.addr ? 1 : x.p.len - y.p.len));
  const pairs: [Tagged, Tagged][] = [];
  const stack: Tagged[] = [];
  for (const it of sorted) {
    while (stack.length && !overlaps(stack[stack.length - 1]!.p, it.p)) stack.pop();
    for (const s of stack) pairs.push([s, it]);
    stack.push(it);
  }
  return pairs;
}

const remoteWord = (o: Oriented): string => (o.peerGateway ? `gateway "${o.peerGateway}"` : `external peer ${o.conn.peer!.address}`);

/**
 * The semantic rules (docs/fleet-spec.md "Validation"): each error names the objects,
 * fields and values. FAQ references are to FreeS/WAN's FAQ.
 */
export function validateFleet(f: CompiledFleet, p: Problems): void {
  const byGw = orient(f);
  for (const [gw, conns] of byGw) {
    const remotes: Tagged[] = [];
    for (const o of conns) {
      const local = selectors(o.localSubnets, o.localAddresses);
      const remote = selectors(o.remoteSubnets, o.remoteAddresses);
      // FAQ "subnets masqueraded to the same addresses": local and remote must not overlap.
      for (const l of local) {
        for (const r of remote) {
          if (overlaps(l, r)) {
            p.error(o.conn.path, `connection "${o.conn.name}" on gateway "${gw}": local subnet ${l.text} and remote subnet ${r.text} (of ${remoteWord(o)}) overlap in ${intersection(l, r).text}; packets for it cannot be routed into the tunnel`);
          }
        }
      }
      for (const r of remote) remotes.push({ p: r, o });
    }
    // FAQ "Dropped connections": two peers claiming overlapping remote subnets on one gateway.
    const reported = new Set<string>();
    for (const [x, y] of overlappingPairs(remotes)) {
      if (x.o.peerKey === y.o.peerKey || x.o.conn === y.o.conn) continue;
      const key = `${x.o.conn.name}\0${y.o.conn.name}\0${x.p.text}\0${y.p.text}`;
      if (reported.has(key)) continue;
      reported.add(key);
      const [first, second] = x.o.conn.path.join() <= y.o.conn.path.join() ? [x, y] : [y, x];
      p.error(second.o.conn.path, `gateway "${gw}": remote subnets of connection "${first.o.conn.name}" (${first.p.text} via ${remoteWord(first.o)}) and connection "${second.o.conn.name}" (${second.p.text} via ${remoteWord(second.o)}) overlap in ${intersection(x.p, y.p).text}; traffic to it could reach only one of the peers ("Dropped connections")`);
    }
    // FAQ "One manual connection works, but second one fails": SPIs unique per gateway.
    const spis = new Map<number, string>();
    for (const o of conns) {
      const spi = o.conn.manualSpi;
      if (spi === undefined) continue;
      const prev = spis.get(spi);
      if (prev) p.error([...o.conn.path, "manual", "spi"], `gateway "${gw}": manual connections "${prev}" and "${o.conn.name}" both use SPI 0x${spi.toString(16)}; SPIs must be unique per gateway`);
      else spis.set(spi, o.conn.name);
    }
    // FAQ "Can I use policy groups along with explicitly configured connections?":
    // the most specific wins, so a policy-group entry inside a connection's remote subnet
    // takes that part of the traffic away from the connection.
    const g = f.gateways.get(gw)!;
    for (const group of g.policyGroups) {
      group.destinations.forEach((d, i) => {
        const dp = parsePrefix(d);
        if (typeof dp === "string") return;
        for (const o of conns) {
          for (const r of selectors(o.remoteSubnets, o.remoteAddresses)) {
            if (contains(r, dp)) {
              p.warn([...group.path, i], `gateway "${gw}": policy group "${group.name}" entry ${dp.text} lies within remote subnet ${r.text} of connection "${o.conn.name}"; the most specific wins, so traffic to ${dp.text} follows "${group.name}" instead of the connection`);
            }
          }
        }
      });
    }
  }
}
