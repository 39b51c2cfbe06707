import { createHash } from "node:crypto";
import { ConfigError, FleetswanError, Secret, YamlSource, formatPath, type FieldPath } from "@fleetswan/common";
import { parseDocument, isScalar } from "yaml";
import { load as fastLoad, CORE_SCHEMA } from "js-yaml";
import { isHostName, isIpLiteral, parsePrefix, type Prefix } from "../net.js";
import { checkProposal, normaliseProposal, type ProposalKind } from "../proposals.js";
import { FLEET_SPEC_SCHEMA } from "./schema.js";
import { checkSchema } from "./schema-check.js";
import { validateFleet } from "./validate.js";

/** A spec that failed validation: every problem as "file:line:field: message". */
export class SpecInvalidError extends FleetswanError {
  constructor(readonly errors: string[], readonly warnings: string[] = []) {
    super("CONFIG_INVALID", errors.length === 1 ? errors[0]! : `${errors[0]} (and ${errors.length - 1} more)`, { errors });
  }
}

/** Host name -> literal addresses, resolved at apply time and stored with the revision. */
export type Resolver = (host: string) => Promise<string[]>;

export const DEFAULT_OPTIONS = {
  auth: "psk" as "psk" | "pubkey",
  ikeProposals: ["aes256gcm16-prfsha384-curve25519", "aes128gcm16-prfsha256-ecp256"],
  espProposals: ["aes256gcm16", "aes128gcm16"],
  ikeLifetime: 10800,
  childLifetime: 3600,
  rekeyMargin: 540,
  rekeyFuzz: 100,
  childLifetimeBytes: 0,
  childLifetimePackets: 0,
  dpdDelay: 30,
  dpdTimeout: 150,
  dpdAction: "restart" as "clear" | "trap" | "restart",
  start: "start" as "start" | "route" | "add",
  mode: "tunnel" as "tunnel" | "transport",
  encapsulation: "auto" as "auto" | "force",
  keyingTries: 3,
  uniqueIds: true,
  replayWindow: 1024,
  mark: 0,
};
export type ConnOptions = typeof DEFAULT_OPTIONS;

export interface GatewaySpec {
  name: string;
  path: FieldPath;
  id: string;
  addresses: string[];
  subnets: string[];
  labels: Record<string, string>;
  backend: string;
  policyGroups: { name: string; destinations: string[]; path: FieldPath }[];
}

export interface ExternalPeer {
  address: string;
  id: string;
  port: number;
  caPem: string;
  /** Operator-supplied PSK (never stored in the spec revision). */
  psk?: Secret;
  /** `psk: "@keymgr"`: keymgr already holds the value. */
  pskKept: boolean;
}

export interface ConnSpec {
  name: string;
  path: FieldPath;
  /** The fleet gateway(s): [a] for an external peer, [a, b] for a pair. */
  gateways: string[];
  /** Subnets per end: index 0 = gateways[0], 1 = gateways[1] or the external peer. */
  subnets: [string[], string[]];
  peer?: ExternalPeer;
  options: ConnOptions;
  manualSpi?: number;
}

export interface CompiledFleet {
  source: string;
  gateways: Map<string, GatewaySpec>;
  connections: ConnSpec[];
  caCertificates: string[];
  warnings: string[];
  /** Host names resolved during compilation. */
  resolved: Record<string, string[]>;
  /** The YAML with operator-supplied PSKs replaced by "@keymgr" (what the revision stores). */
  redactedYaml: string;
}

type Obj = Record<string, unknown>;

/** Parse "90", 90, "30m", "1h30m", "1d" into seconds. */
export function parseDuration(v: unknown): number {
  if (typeof v === "number") return v;
  const units: Record<string, number> = { s: 1, m: 60, h: 3600, d: 86400 };
  let total = 0;
  for (const m of String(v).matchAll(/(\d+)([smhd])/g)) total += Number(m[1]) * units[m[2]!]!;
  return total;
}

/** Shannon entropy (bits per character) of a string. */
function entropyPerChar(s: string): number {
  const counts = new Map<string, number>();
  for (const c of s) counts.set(c, (counts.get(c) ?? 0) + 1);
  let h = 0;
  for (const n of counts.values()) {
    const p = n / s.length;
    h -= p * Math.log2(p);
  }
  return h;
}

/** Why a PSK is too weak, or undefined when it looks like >= 20 random bytes. */
export function pskWeakness(psk: string): string | undefined {
  const len = Buffer.byteLength(psk, "utf8");
  if (len < 20) return `PSK is ${len} bytes long; at least 20 random-looking bytes are required (generate one with: openssl rand -base64 32)`;
  const distinct = new Set(psk).size;
  const h = entropyPerChar(psk);
  if (distinct < 10 || h < 3) return `PSK does not look random (${distinct} distinct characters, ${h.toFixed(1)} bits/character); use a random value (openssl rand -base64 32)`;
  if (/(.{3,})\1\1/.test(psk)) return "PSK repeats a pattern; use a random value (openssl rand -base64 32)";
  return undefined;
}

export function pskFingerprint(psk: Secret): string {
  return createHash("sha256").update("fleetswan psk fingerprint\0").update(psk.reveal()).digest("hex").slice(0, 16);
}

export class Problems {
  errors: string[] = [];
  warnings: string[] = [];
  /** `src` undefined: the fast path (no source positions); any problem makes compileSpec start over with positions. */
  constructor(readonly src: YamlSource | undefined) {}
  error(path: FieldPath, message: string): void {
    if (!this.src) throw NEED_POSITIONS;
    this.errors.push(this.src.error(path, message).message);
  }
  warn(path: FieldPath, message: string): void {
    if (!this.src) throw NEED_POSITIONS;
    this.warnings.push(`${this.src.where(path)}: ${message}`);
  }
}

/** Thrown inside a fast-path compile when a problem needs "file:line" (caught by compileSpec). */
const NEED_POSITIONS = Symbol("fleetswan: compile again with source positions");

/**
 * The fast path's parser: js-yaml with its YAML 1.2 core schema (the `yaml` package's
 * default schema too), ~15x faster than `yaml`'s parseDocument on a 1,000-gateway spec
 * because it builds no CST and no line table. No aliases (they would bypass yaml's
 * maxAliasCount); anything it refuses goes to the `yaml` path, which is authoritative
 * for errors and their positions.
 */
function fastParse(text: string): unknown {
  try {
    return fastLoad(text, { schema: CORE_SCHEMA, maxAliases: 0, maxDepth: 100 });
  } catch {
    return NEED_POSITIONS;
  }
}

/** Which parser the last compileSpec used (for tests and the benchmark). */
export const compileStats = { fast: 0, positioned: 0 };

/**
 * Compile a fleet spec: YAML -> structure (JSON Schema) -> references, names, addresses,
 * proposals, PSKs -> the semantic rules of validate.ts. Throws SpecInvalidError with every
 * problem; resolves host names with `resolve` (stored in `resolved` so that later
 * renderings never do DNS).
 */
export async function compileSpec(text: string, source: string, resolve: Resolver): Promise<CompiledFleet> {
  // Fast path: parse without source positions and compile; the first error or warning
  // (which must name file:line) abandons it and everything is done again with `yaml`'s
  // positioned document. Host names resolved on the way are kept for the second pass.
  const memo = new Map<string, Promise<string[]>>();
  const once: Resolver = (h) => {
    let r = memo.get(h);
    if (!r) memo.set(h, (r = resolve(h)));
    return r;
  };
  const data = fastParse(text);
  if (data !== NEED_POSITIONS && typeof data === "object" && data !== null && !Array.isArray(data)) {
    try {
      const f = await compileData(data as Obj, text, source, once, undefined);
      compileStats.fast++;
      return f;
    } catch (e) {
      if (e !== NEED_POSITIONS) throw e;
    }
  }
  let src: YamlSource;
  try {
    src = new YamlSource(source, text);
  } catch (e) {
    if (e instanceof ConfigError) throw new SpecInvalidError([e.message]);
    throw e;
  }
  compileStats.positioned++;
  if (typeof src.data !== "object" || src.data === null || Array.isArray(src.data)) {
    throw new SpecInvalidError([`${source}:1:: the fleet spec must be a mapping with at least "gateways"`]);
  }
  return compileData(src.data as Obj, text, source, once, src);
}

async function compileData(data: Obj, text: string, source: string, resolve: Resolver, src: YamlSource | undefined): Promise<CompiledFleet> {
  const p = new Problems(src);
  for (const sp of checkSchema(FLEET_SPEC_SCHEMA, data)) p.error(sp.path, sp.message);
  if (p.errors.length) throw new SpecInvalidError(p.errors, p.warnings);

  const resolved: Record<string, string[]> = {};
  const resolveAddr = async (value: string, path: FieldPath): Promise<string[]> => {
    if (isIpLiteral(value) || value === "%any") return [value];
    if (!isHostName(value)) {
      p.error(path, `"${value}" is neither an IP address nor a host name`);
      return [];
    }
    try {
      const ips = resolved[value] ?? (await resolve(value));
      if (ips.length === 0) throw new Error("no addresses");
      resolved[value] = ips;
      return ips;
    } catch (e) {
      p.error(path, `host name "${value}" does not resolve (${(e as Error).message}); agents never do DNS, so use an IP address or fix DNS before applying`);
      return [];
    }
  };
  const prefixes = (list: unknown, path: FieldPath): string[] => {
    const out: string[] = [];
    ((list as string[] | undefined) ?? []).forEach((s, i) => {
      const pr = parsePrefix(String(s));
      if (typeof pr === "string") p.error([...path, i], pr);
      else out.push(String(s).includes("[") ? pr.text + String(s).slice(String(s).indexOf("[")) : pr.text);
    });
    return out;
  };

  // ----------------------------------------------------------- gateways
  const gateways = new Map<string, GatewaySpec>();
  const gwList = (data.gateways as Obj[]) ?? [];
  for (const [i, g] of gwList.entries()) {
    const path = ["gateways", i];
    const name = g.name as string;
    if (gateways.has(name)) {
      p.error([...path, "name"], `duplicate gateway name "${name}" (also gateways[${gwList.findIndex((x) => x.name === name)}])`);
      continue;
    }
    const addresses: string[] = [];
    for (const [j, a] of ((g.addresses as string[]) ?? []).entries()) {
      if (a === "%any") p.error([...path, "addresses", j], `gateway "${name}": %any is only allowed for external peers`);
      else addresses.push(...(await resolveAddr(a, [...path, "addresses", j])));
    }
    const groups: GatewaySpec["policyGroups"] = [];
    for (const group of ["block", "clear", "private", "private-or-clear"]) {
      const dests = (g.policy_groups as Obj | undefined)?.[group];
      if (dests) groups.push({ name: group, destinations: prefixes(dests, [...path, "policy_groups", group]), path: [...path, "policy_groups", group] });
    }
    gateways.set(name, {
      name,
      path,
      id: (g.id as string | undefined) ?? addresses[0] ?? "",
      addresses,
      subnets: prefixes(g.subnets, [...path, "subnets"]),
      labels: (g.labels as Record<string, string>) ?? {},
      backend: (g.backend as string | undefined) ?? "xfrm",
      policyGroups: groups,
    });
  }

  // ----------------------------------------------------------- options
  const proposalSets = (data.proposals as Record<string, { ike?: string[]; esp?: string[] }> | undefined) ?? {};
  const checkProposals = (list: string[], kind: ProposalKind, path: FieldPath, owner: string): string[] => {
    list.forEach((prop, i) => {
      for (const prob of checkProposal(prop, kind)) p.error([...path, i], `${owner}: ${prob.message}`);
    });
    return list.map(normaliseProposal);
  };
  for (const [setName, set] of Object.entries(proposalSets)) {
    if (set.ike) checkProposals(set.ike, "ike", ["proposals", setName, "ike"], `proposal set "${setName}"`);
    if (set.esp) checkProposals(set.esp, "esp", ["proposals", setName, "esp"], `proposal set "${setName}"`);
  }
  const applyOptions = (base: ConnOptions, o: Obj | undefined, path: FieldPath, owner: string): ConnOptions => {
    const r = { ...base };
    if (!o) return r;
    if (o.auth !== undefined) r.auth = o.auth as ConnOptions["auth"];
    if (o.proposals !== undefined) {
      const set = proposalSets[o.proposals as string];
      if (!set) p.error([...path, "proposals"], `${owner}: unknown proposal set "${String(o.proposals)}" (defined: ${Object.keys(proposalSets).join(", ") || "none"})`);
      else {
        if (set.ike) r.ikeProposals = set.ike.map(normaliseProposal);
        if (set.esp) r.espProposals = set.esp.map(normaliseProposal);
      }
    }
    if (o.ike_proposals) r.ikeProposals = checkProposals(o.ike_proposals as string[], "ike", [...path, "ike_proposals"], owner);
    if (o.esp_proposals) r.espProposals = checkProposals(o.esp_proposals as string[], "esp", [...path, "esp_proposals"], owner);
    if (o.ike_lifetime !== undefined) r.ikeLifetime = parseDuration(o.ike_lifetime);
    if (o.child_lifetime !== undefined) r.childLifetime = parseDuration(o.child_lifetime);
    if (o.rekey_margin !== undefined) r.rekeyMargin = parseDuration(o.rekey_margin);
    if (o.rekey_fuzz !== undefined) r.rekeyFuzz = o.rekey_fuzz as number;
    if (o.child_lifetime_bytes !== undefined) r.childLifetimeBytes = o.child_lifetime_bytes as number;
    if (o.child_lifetime_packets !== undefined) r.childLifetimePackets = o.child_lifetime_packets as number;
    const dpd = o.dpd as Obj | undefined;
    if (dpd?.delay !== undefined) r.dpdDelay = parseDuration(dpd.delay);
    if (dpd?.timeout !== undefined) r.dpdTimeout = parseDuration(dpd.timeout);
    if (dpd?.action !== undefined) r.dpdAction = dpd.action as ConnOptions["dpdAction"];
    if (o.start !== undefined) r.start = o.start as ConnOptions["start"];
    if (o.mode !== undefined) r.mode = o.mode as ConnOptions["mode"];
    if (o.encapsulation !== undefined) r.encapsulation = o.encapsulation as ConnOptions["encapsulation"];
    if (o.keying_tries !== undefined) r.keyingTries = o.keying_tries as number;
    if (o.unique_ids !== undefined) r.uniqueIds = o.unique_ids as boolean;
    if (o.replay_window !== undefined) r.replayWindow = o.replay_window as number;
    if (o.mark !== undefined) r.mark = o.mark as number;
    return r;
  };
  const checkTimes = (r: ConnOptions, path: FieldPath, owner: string): void => {
    if (r.rekeyMargin >= r.childLifetime) p.error([...path, "rekey_margin"], `${owner}: rekey_margin (${r.rekeyMargin}s) must be shorter than child_lifetime (${r.childLifetime}s)`);
    if (r.rekeyMargin >= r.ikeLifetime) p.error([...path, "rekey_margin"], `${owner}: rekey_margin (${r.rekeyMargin}s) must be shorter than ike_lifetime (${r.ikeLifetime}s)`);
    if (r.dpdDelay > 0 && r.dpdTimeout <= r.dpdDelay) p.error([...path, "dpd", "timeout"], `${owner}: dpd.timeout (${r.dpdTimeout}s) must be longer than dpd.delay (${r.dpdDelay}s)`);
  };
  const defaults = applyOptions(DEFAULT_OPTIONS, data.defaults as Obj | undefined, ["defaults"], "defaults");
  checkTimes(defaults, ["defaults"], "defaults");

  // ----------------------------------------------------------- connections
  const connections: ConnSpec[] = [];
  const names = new Map<string, FieldPath>();
  const claimName = (name: string, path: FieldPath, field: string | number): boolean => {
    const prev = names.get(name);
    if (prev) {
      p.error([...path, field], `duplicate connection name "${name}" (also ${formatPath(prev)})`);
      return false;
    }
    names.set(name, path);
    return true;
  };
  const gwRef = (ref: string, path: FieldPath, owner: string): GatewaySpec | undefined => {
    const g = gateways.get(ref);
    if (!g) p.error(path, `${owner}: unknown gateway "${ref}" (known: ${[...gateways.keys()].join(", ") || "none"})`);
    return g;
  };
  for (const [i, c] of ((data.connections as Obj[]) ?? []).entries()) {
    const path = ["connections", i];
    const pair = c.gateways as string[] | undefined;
    const mesh = c.mesh as string[] | undefined;
    const owner = c.name ? `connection "${String(c.name)}"` : `connections[${i}]`;
    if (!!pair === !!mesh) {
      p.error(path, `${owner}: give exactly one of "gateways: [a, b]" or "mesh: [a, b, ...]"`);
      continue;
    }
    if (pair && !c.name) {
      p.error(path, `${owner}: missing required field "name" (needed for a pair; mesh connections are named <a>--<b>)`);
      continue;
    }
    const options = applyOptions(defaults, c, path, owner);
    checkTimes(options, path, owner);
    const members = pair ?? mesh!;
    const field = pair ? "gateways" : "mesh";
    const ok = members.map((m, j) => gwRef(m, [...path, field, j], owner)).every(Boolean);
    const overrides = (c.subnets as Record<string, string[]> | undefined) ?? {};
    for (const k of Object.keys(overrides)) {
      if (!members.includes(k)) p.error([...path, "subnets", k], `${owner}: subnets given for "${k}", which is not one of this connection's gateways (${members.join(", ")})`);
    }
    if (!ok) continue;
    const subnetsOf = (gw: string): string[] => (overrides[gw] ? prefixes(overrides[gw], [...path, "subnets", gw]) : gateways.get(gw)!.subnets);
    if (pair && pair[0] === pair[1]) {
      p.error([...path, "gateways"], `${owner}: both ends are gateway "${pair[0]}"; a connection needs two different gateways`);
      continue;
    }
    const pairs: [string, string, string][] = [];
    if (pair) pairs.push([c.name as string, pair[0]!, pair[1]!]);
    else {
      for (let a = 0; a < members.length; a++) {
        for (let b = a + 1; b < members.length; b++) {
          const base = `${members[a]}--${members[b]}`;
          pairs.push([c.name ? `${String(c.name)}.${base}` : base, members[a]!, members[b]!]);
        }
      }
    }
    for (const [name, a, b] of pairs) {
      if (name.length > 64) {
        p.error([...path, field], `${owner}: generated connection name "${name}" is longer than 64 characters; use a shorter name prefix`);
        continue;
      }
      if (!claimName(name, path, pair ? "name" : field)) continue;
      connections.push({ name, path, gateways: [a, b], subnets: [subnetsOf(a), subnetsOf(b)], options });
    }
  }

  // ----------------------------------------------------------- external peers
  let yamlOut = text;
  let docForRanges: { getIn(path: FieldPath, keepScalar: boolean): unknown } | undefined; // parsed at most once, only when a PSK is redacted
  const redactions: [number, number, string][] = [];
  for (const [i, pe] of ((data.peers as Obj[]) ?? []).entries()) {
    const path = ["peers", i];
    const name = pe.name as string;
    const owner = `peer "${name}"`;
    const gw = gwRef(pe.gateway as string, [...path, "gateway"], owner);
    const options = applyOptions(defaults, pe, path, owner);
    checkTimes(options, path, owner);
    const address = pe.address as string;
    const addrs = await resolveAddr(address, [...path, "address"]);
    let psk: Secret | undefined;
    let pskKept = false;
    if (pe.psk !== undefined) {
      const value = pe.psk as string;
      const node = scalarRange(text, [...path, "psk"], (docForRanges ??= parseDocument(text)));
      if (options.auth !== "psk") p.error([...path, "psk"], `${owner}: a psk is given but auth is ${options.auth}`);
      else if (value === "@keymgr") pskKept = true;
      else {
        const weak = pskWeakness(value);
        if (weak) p.error([...path, "psk"], `${owner}: ${weak}`);
        psk = new Secret(value);
        if (node) redactions.push([node[0], node[1], '"@keymgr"']);
      }
    } else if (options.auth === "psk") {
      p.warn(path, `${owner}: auth psk without "psk:": keymgr keeps the value it has for psk.${name} or generates one, which the peer's operator must then be given`);
    }
    if (options.auth === "pubkey" && !pe.ca && !(data.ca_certificates as unknown[] | undefined)?.length) {
      p.warn(path, `${owner}: auth pubkey without "ca:" or top-level ca_certificates; only the fleet CA will be trusted`);
    }
    let manualSpi: number | undefined;
    const manual = pe.manual as Obj | undefined;
    if (manual) manualSpi = typeof manual.spi === "number" ? manual.spi : parseInt(String(manual.spi), 16);
    if (manualSpi !== undefined && manualSpi < 256) p.error([...path, "manual", "spi"], `${owner}: SPI 0x${manualSpi.toString(16)} is reserved (RFC 4303 §2.1: 1..255 are reserved)`);
    if (!gw || !claimName(name, path, "name")) continue;
    connections.push({
      name,
      path,
      gateways: [gw.name],
      subnets: [pe.local_subnets ? prefixes(pe.local_subnets, [...path, "local_subnets"]) : gw.subnets, prefixes(pe.subnets, [...path, "subnets"])],
      peer: {
        address: addrs[0] ?? address,
        id: (pe.id as string | undefined) ?? (address === "%any" ? "%any" : addrs[0] ?? address),
        port: (pe.port as number | undefined) ?? 500,
        caPem: (pe.ca as string | undefined) ?? "",
        pskKept,
        ...(psk ? { psk } : {}),
      },
      options,
      ...(manualSpi !== undefined ? { manualSpi } : {}),
    });
    if (addrs.length > 1) p.warn([...path, "address"], `${owner}: "${address}" resolves to ${addrs.join(", ")}; using ${addrs[0]}`);
  }
  for (const [start, end, repl] of redactions.sort((x, y) => y[0] - x[0])) yamlOut = yamlOut.slice(0, start) + repl + yamlOut.slice(end);

  const compiled: CompiledFleet = {
    source,
    gateways,
    connections,
    caCertificates: (data.ca_certificates as string[] | undefined) ?? [],
    warnings: p.warnings,
    resolved,
    redactedYaml: yamlOut,
  };
  if (p.errors.length === 0) validateFleet(compiled, p);
  if (p.errors.length) throw new SpecInvalidError(p.errors, p.warnings);
  return compiled;
}

/** [start, end) of a scalar's text in the YAML source. */
function scalarRange(text: string, path: FieldPath, doc: { getIn(path: FieldPath, keepScalar: boolean): unknown } = parseDocument(text)): [number, number] | undefined {
  const node = doc.getIn(path, true);
  return isScalar(node) && node.range ? [node.range[0], node.range[1]] : undefined;
}

export type { Prefix };
