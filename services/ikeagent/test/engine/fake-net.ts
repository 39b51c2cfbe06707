/**
 * Exchange-test fixture: IKE engines in one process wired by a fake network, each with a
 * fake dataplane. The network delivers datagrams asynchronously, can drop them (filter),
 * and records every datagram for assertions on the wire ("IKE on 4500 between A and B").
 */
import { Secret, createLogger } from "@fleetswan/common";
import { fleet } from "@fleetswan/proto";
import { decodeHeader, ExchangeType, nameOf } from "../../src/ike/wire/index.js";
import { FakeDataplane } from "../../src/ike/engine/dataplane-fake.js";
import { IkeEngine, type Transport } from "../../src/ike/engine/engine.js";
import type { Endpoint } from "../../src/ike/engine/sa.js";
import type { EngineEvent, EngineSecret } from "../../src/engine-api.js";
import { Writable } from "node:stream";

export interface Datagram {
  from: Endpoint;
  to: Endpoint;
  data: Buffer;
  /** "IKE_SA_INIT request 0" etc., or "keepalive". */
  what: string;
}

export class FakeNet {
  readonly nodes = new Map<string, IkeEngine>();
  readonly wire: Datagram[] = [];
  /** Return false to drop a datagram. */
  filter: (d: Datagram) => boolean = () => true;

  transportFor(address: string): Transport {
    return {
      send: (local, remote, data) => this.#deliver({ from: { ...local, address }, to: { ...remote }, data, what: describe(data) }),
      keepalive: (local, remote) => this.#deliver({ from: { ...local, address }, to: { ...remote }, data: Buffer.alloc(0), what: "keepalive" }),
    };
  }

  #deliver(d: Datagram): void {
    this.wire.push(d);
    if (!this.filter(d)) return;
    if (d.what === "keepalive") return;
    const to = this.nodes.get(d.to.address);
    if (!to) return;
    setImmediate(() => to.receive({ ...d.to }, { ...d.from }, Buffer.from(d.data)));
  }
}

function describe(data: Buffer): string {
  try {
    const h = decodeHeader(data);
    return `${nameOf(ExchangeType, h.exchangeType)} ${h.response ? "response" : "request"} ${h.messageId}`;
  } catch {
    return "garbage";
  }
}

export interface Node {
  engine: IkeEngine;
  dp: FakeDataplane;
  events: EngineEvent[];
  logs: string[];
  address: string;
}

/** Fast retransmission for tests: 100 ms, 1.8, 3 tries. */
export const FAST = { timeoutMs: 100, base: 1.8, tries: 3 };

export function makeNode(net: FakeNet, address: string, spiBase: number, opts: { cookieThreshold?: number; random?: () => number; fragmentSize?: number; retransmit?: typeof FAST; cryptoWorkers?: number } = {}): Node {
  const dp = new FakeDataplane(spiBase);
  const logs: string[] = [];
  const sink = new Writable({
    write(chunk, _enc, cb) {
      logs.push(String(chunk));
      cb();
    },
  });
  const engine = new IkeEngine({
    dataplane: dp,
    transport: net.transportFor(address),
    log: createLogger(`ikeagent-${address}`, { level: process.env.TEST_LOG ? "debug" : "info", destination: process.env.TEST_LOG ? process.stderr : sink }),
    retransmit: opts.retransmit ?? FAST,
    cookieThreshold: opts.cookieThreshold,
    ...(opts.fragmentSize ? { fragmentSize: opts.fragmentSize } : {}),
    ...(opts.cryptoWorkers ? { cryptoWorkers: opts.cryptoWorkers } : {}),
    random: opts.random ?? (() => 0.5),
    localAddresses: () => [address],
  });
  net.nodes.set(address, engine);
  const events: EngineEvent[] = [];
  engine.on("event", (e: EngineEvent) => events.push(e));
  dp.relayOut = undefined;
  return { engine, dp, events, logs, address };
}

/** A site-to-site definition (left = local). */
export function conn(name: string, local: string, remote: string, localNet: string[], remoteNet: string[], extra: Partial<fleet.ConnectionDef> = {}): fleet.ConnectionDef {
  return fleet.ConnectionDef.fromPartial({
    name,
    local: { addresses: [local], id: `gw-${local}.example.test`, subnets: localNet, auth: fleet.AuthMethod.AUTH_METHOD_PSK },
    remote: { addresses: [remote], id: `gw-${remote}.example.test`, subnets: remoteNet, auth: fleet.AuthMethod.AUTH_METHOD_PSK },
    ikeProposals: ["aes256gcm16-prfsha384-curve25519"],
    espProposals: ["aes256gcm16"],
    startAction: fleet.StartAction.START_ACTION_ADD,
    secretRef: "psk",
    keyingTries: 1,
    uniqueIds: true,
    ...extra,
  });
}

export const psk = (value = "a long and secret shared key for tests"): ((ref: string) => EngineSecret | undefined) => () => ({ kind: "psk", current: new Secret(value) });

export async function until(cond: () => boolean, ms = 5000, what = "condition"): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timeout waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

/** The messages on the wire without retransmissions (same sender, same "what"): a loaded machine retransmits at 100 ms. */
export function distinct(wire: readonly Datagram[]): string[] {
  const seen = new Set<string>();
  const out: string[] = [];
  for (const d of wire) {
    const k = `${d.from.address}:${d.from.port} ${d.what}`;
    if (d.what === "keepalive" || !seen.has(k)) out.push(d.what);
    seen.add(k);
  }
  return out;
}

export const cfg = (connections: fleet.ConnectionDef[], caCertificates: string[] = []) => ({ revision: 1n, connections, policyGroups: [], caCertificates });
