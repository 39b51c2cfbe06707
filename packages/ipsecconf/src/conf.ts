/**
 * ipsec.conf -> fleet.v1.ConnectionDef[] (the shape the ikeagent engine runs, whether from
 * a controller's view or from local files).
 *
 * Semantics follow FreeS/WAN's ipsec.conf(5) as kept by Libreswan and strongSwan's starter:
 *  - `conn %default` supplies defaults to every conn (all %default sections, in file order);
 *  - `also=NAME` inserts the parameters of conn NAME where it appears (chains allowed,
 *    loops rejected); the conn's own parameters win over also= which win over %default;
 *  - an empty value (`rightsubnet=`) unsets what %default or also= set;
 *  - left/right are symmetric: the end whose address is one of this host's addresses is
 *    local ("orientation", Pluto: "we cannot identify ourselves with either end");
 *  - auto= defaults to ignore, so a conn used only as an also= template is not loaded.
 * Every keyword not in the table below is an error naming file:line: configuration is never
 * silently ignored.
 */
import { ConfigError, type Secret } from "@fleetswan/common";
import { fleet } from "@fleetswan/proto";
import { isIP } from "node:net";
import { lexIpsecConf, type Entry, type FileReader, type Section } from "./lexer.js";
import { findSecret, normalizeId, type SecretEntry } from "./secrets.js";

/** Keywords understood in `conn` sections (left* and right* forms listed once as "*"). */
const SIDE_KEYWORDS = ["", "subnet", "subnets", "id", "cert", "ca", "ikeport", "auth"] as const;
const CONN_KEYWORDS = new Set<string>([
  ...SIDE_KEYWORDS.flatMap((k) => [`left${k}`, `right${k}`]),
  "also",
  "auto",
  "authby",
  "ike",
  "esp",
  "ikelifetime",
  "keylife",
  "salifetime",
  "lifetime",
  "rekeymargin",
  "margintime",
  "rekeyfuzz",
  "keyingtries",
  "dpddelay",
  "dpdtimeout",
  "dpdaction",
  "uniqueids",
  "type",
  "keyexchange",
  "ikev2",
  "forceencaps",
  "encapsulation",
  "replay_window",
  "mark",
]);
/** Keywords understood in `config setup`; the *debug ones are accepted and have no effect (logging is configured with FLEETSWAN_LOG_LEVEL). */
const SETUP_KEYWORDS = new Set(["uniqueids", "charondebug", "plutodebug"]);

/** The parsed configuration. */
export interface IpsecConfig {
  /** Connections with auto=add|start|route, local end first (oriented). */
  connections: fleet.ConnectionDef[];
  /** Secrets referenced by ConnectionDef.secret_ref (the ref is "file:line" of the entry). */
  secrets: Map<string, SecretEntry>;
  /** Conns with auto=ignore (or no auto=): templates or switched off. */
  ignored: string[];
  /** Where each loaded conn is defined ("file:line"). */
  where: Map<string, string>;
  /** `ca` sections are not used by the engine; their names (for warnings). */
  caSections: string[];
}

export interface ParseOptions {
  /** ipsec.conf text and its file name (used in error messages). */
  confText: string;
  confFile: string;
  /** ipsec.secrets, parsed already (see parseIpsecSecrets). Without it, secret_ref stays empty. */
  secrets?: SecretEntry[];
  /**
   * This host's addresses, to decide which end is local. Without it, left is local
   * (the FreeS/WAN convention "left is here"), e.g. for `fleetswan import` of one gateway.
   */
  localAddresses?: string[];
  /** Reads include files, leftcert= and rightca= files (relative to the referring file). */
  read?: FileReader;
}

/** One conn after %default and also= are merged: keyword -> entry. */
type Merged = Map<string, Entry>;

/** Parses ipsec.conf (+ secrets) into connection definitions. Throws ConfigError (file:line). */
export function parseIpsecConf(opts: ParseOptions): IpsecConfig {
  const sections = lexIpsecConf(opts.confText, opts.confFile, opts.read);
  const conns = new Map<string, Section>();
  const defaults: Section[] = [];
  let setupUniqueIds: Entry | undefined;
  const caSections: string[] = [];
  for (const s of sections) {
    if (s.kind === "config") {
      for (const e of s.entries) {
        if (!SETUP_KEYWORDS.has(e.key)) throw new ConfigError(`unsupported keyword "${e.key}" in config setup`, e.where, { keyword: e.key });
        if (e.key === "uniqueids") setupUniqueIds = e;
      }
    } else if (s.kind === "ca") {
      caSections.push(s.name);
    } else if (s.name === "%default") {
      defaults.push(s);
    } else {
      if (s.name.startsWith("%")) throw new ConfigError(`reserved conn name "${s.name}" (only %default)`, s.where);
      if (conns.has(s.name)) throw new ConfigError(`conn "${s.name}" defined twice (first at ${conns.get(s.name)!.where})`, s.where);
      conns.set(s.name, s);
    }
  }
  for (const s of [...defaults, ...conns.values()]) {
    for (const e of s.entries) {
      if (!CONN_KEYWORDS.has(e.key)) throw new ConfigError(`unsupported keyword "${e.key}" in conn ${s.name}`, e.where, { keyword: e.key });
    }
  }

  const out: IpsecConfig = { connections: [], secrets: new Map(), ignored: [], where: new Map(), caSections };
  for (const conn of conns.values()) {
    const merged: Merged = new Map();
    for (const d of defaults) apply(merged, d.entries);
    applyConn(merged, conn, conns, [conn.name]);
    for (const [k, e] of merged) if (e.value === "") merged.delete(k);
    if (!merged.has("uniqueids") && setupUniqueIds) merged.set("uniqueids", setupUniqueIds);
    const auto = merged.get("auto")?.value ?? "ignore";
    if (!["add", "start", "route", "ignore"].includes(auto)) {
      throw new ConfigError(`auto=${auto} is not one of add, start, route, ignore`, merged.get("auto")!.where);
    }
    if (auto === "ignore") {
      out.ignored.push(conn.name);
      continue;
    }
    const def = toConnectionDef(conn, merged, opts, out.secrets);
    out.connections.push(def);
    out.where.set(conn.name, conn.where);
  }
  return out;
}

function apply(merged: Merged, entries: Entry[]): void {
  for (const e of entries) if (e.key !== "also") merged.set(e.key, e);
}

/** Applies also= targets (in order, recursively) and then the conn's own entries. */
function applyConn(merged: Merged, conn: Section, conns: Map<string, Section>, stack: string[]): void {
  for (const e of conn.entries) {
    if (e.key !== "also") continue;
    for (const name of e.value.split(",").filter(Boolean)) {
      const target = conns.get(name);
      if (!target) throw new ConfigError(`also=${name}: no conn "${name}"`, e.where);
      if (stack.includes(name)) throw new ConfigError(`also=${name} makes a loop (${[...stack, name].join(" -> ")})`, e.where);
      applyConn(merged, target, conns, [...stack, name]);
    }
  }
  apply(merged, conn.entries);
}

function toConnectionDef(conn: Section, m: Merged, opts: ParseOptions, secrets: Map<string, SecretEntry>): fleet.ConnectionDef {
  const get = (k: string): Entry | undefined => m.get(k);
  // ---- orientation
  const left = get("left");
  const right = get("right");
  if (!left) throw new ConfigError(`conn ${conn.name} has no left=`, conn.where);
  if (!right) throw new ConfigError(`conn ${conn.name} has no right=`, conn.where);
  const leftAddrs = parseAddresses(left);
  const rightAddrs = parseAddresses(right);
  let localSide: "left" | "right" = "left";
  if (opts.localAddresses) {
    const mine = new Set(opts.localAddresses);
    const l = leftAddrs.some((a) => mine.has(a));
    const r = rightAddrs.some((a) => mine.has(a));
    if (l && r) throw new ConfigError(`conn ${conn.name}: both left=${left.value} and right=${right.value} are addresses of this host`, conn.where);
    if (!l && !r) {
      throw new ConfigError(
        `conn ${conn.name}: neither left=${left.value} nor right=${right.value} is an address of this host (${opts.localAddresses.join(", ") || "none"}); we cannot identify ourselves with either end`,
        conn.where,
      );
    }
    localSide = l ? "left" : "right";
  }
  const remoteSide = localSide === "left" ? "right" : "left";
  const side = (s: "left" | "right", k: string): Entry | undefined => get(`${s}${k}`);

  // ---- authentication
  const authby = get("authby");
  let auth = fleet.AuthMethod.AUTH_METHOD_PSK;
  if (authby) {
    if (authby.value === "secret" || authby.value === "psk") auth = fleet.AuthMethod.AUTH_METHOD_PSK;
    else if (authby.value === "rsasig" || authby.value === "pubkey" || authby.value === "ecdsasig" || authby.value === "rsa") auth = fleet.AuthMethod.AUTH_METHOD_PUBKEY;
    else throw new ConfigError(`authby=${authby.value} is not supported (secret or rsasig)`, authby.where);
  }
  const sideAuth = (s: "left" | "right"): fleet.AuthMethod => {
    const e = side(s, "auth");
    if (!e) return auth;
    if (e.value === "psk" || e.value === "secret") return fleet.AuthMethod.AUTH_METHOD_PSK;
    if (e.value === "pubkey" || e.value === "rsasig" || e.value === "ecdsa") return fleet.AuthMethod.AUTH_METHOD_PUBKEY;
    throw new ConfigError(`${s}auth=${e.value} is not supported (psk or pubkey)`, e.where);
  };

  const endpoint = (s: "left" | "right", addrs: string[], isLocal: boolean): fleet.Endpoint => {
    const subnets = [side(s, "subnet"), side(s, "subnets")].filter((e): e is Entry => !!e).flatMap(parseSubnets);
    const idEntry = side(s, "id");
    const certEntry = side(s, "cert");
    const caEntry = side(s, "ca");
    if (certEntry && !isLocal) throw new ConfigError(`${s}cert= on the remote end is not supported (the peer sends its certificate; set ${s}ca=)`, certEntry.where);
    if (caEntry && isLocal) throw new ConfigError(`${s}ca= on the local end has no effect here; set it on the remote end`, caEntry.where);
    const portEntry = side(s, "ikeport");
    return fleet.Endpoint.fromPartial({
      addresses: addrs,
      id: idEntry ? normalizeId(idEntry.value) : "",
      auth: sideAuth(s),
      subnets,
      certificatePem: certEntry ? readPem(certEntry, opts, "CERTIFICATE") : "",
      caPem: caEntry ? readPem(caEntry, opts, "CERTIFICATE") : "",
      port: portEntry ? parseIntIn(portEntry, 1, 65535) : 500,
    });
  };
  const local = endpoint(localSide, localSide === "left" ? leftAddrs : rightAddrs, true);
  const remote = endpoint(remoteSide, remoteSide === "left" ? leftAddrs : rightAddrs, false);
  if (local.addresses.includes("%any")) throw new ConfigError(`conn ${conn.name}: the local end (${localSide}) cannot be %any`, (localSide === "left" ? left : right).where);

  // ---- secrets
  let secretRef = "";
  if (opts.secrets) {
    const localNames = [local.id, ...local.addresses].filter(Boolean);
    const remoteNames = [remote.id, ...remote.addresses].filter((a) => a && a !== "%any");
    const kind = local.auth === fleet.AuthMethod.AUTH_METHOD_PSK ? "psk" : "private-key";
    const found = findSecret(opts.secrets, kind, localNames, remoteNames);
    if (!found) {
      throw new ConfigError(
        kind === "psk"
          ? `conn ${conn.name}: no PSK in ipsec.secrets for "${localNames.join(" ")}" and "${remoteNames.join(" ")}"`
          : `conn ${conn.name}: no private key (RSA/ECDSA) in ipsec.secrets for "${localNames.join(" ")}"`,
        conn.where,
      );
    }
    secretRef = found.where;
    secrets.set(found.where, found);
  }

  // ---- everything else
  const mode = get("type")?.value ?? "tunnel";
  if (mode !== "tunnel" && mode !== "transport") throw new ConfigError(`type=${mode} is not supported (tunnel or transport)`, get("type")!.where);
  const kx = get("keyexchange");
  if (kx && kx.value !== "ikev2") throw new ConfigError(`keyexchange=${kx.value}: only IKEv2 is supported (IKEv1 is deprecated, RFC 9395)`, kx.where);
  const v2 = get("ikev2");
  if (v2 && !["yes", "insist", "permit", "propose"].includes(v2.value)) throw new ConfigError(`ikev2=${v2.value}: only IKEv2 is supported`, v2.where);
  const lifetime = get("salifetime") ?? get("keylife") ?? get("lifetime");
  const margin = get("rekeymargin") ?? get("margintime");
  const fuzz = get("rekeyfuzz");
  const dpdaction = get("dpdaction");
  const dpddelay = get("dpddelay");
  const dpdtimeout = get("dpdtimeout");
  let dpdAction = fleet.DpdAction.DPD_ACTION_CLEAR;
  let dpdOn = !!dpddelay;
  if (dpdaction) {
    const a = dpdaction.value;
    if (a === "none") dpdOn = false;
    else if (a === "clear") (dpdAction = fleet.DpdAction.DPD_ACTION_CLEAR), (dpdOn = true);
    else if (a === "hold" || a === "trap") (dpdAction = fleet.DpdAction.DPD_ACTION_TRAP), (dpdOn = true);
    else if (a === "restart") (dpdAction = fleet.DpdAction.DPD_ACTION_RESTART), (dpdOn = true);
    else throw new ConfigError(`dpdaction=${a} is not one of none, clear, hold, restart`, dpdaction.where);
  }
  const auto = get("auto")!.value;
  const start = { add: fleet.StartAction.START_ACTION_ADD, start: fleet.StartAction.START_ACTION_START, route: fleet.StartAction.START_ACTION_ROUTE }[auto as "add"]!;
  const tries = get("keyingtries");
  const encap = get("forceencaps") ?? get("encapsulation");
  const unique = get("uniqueids");
  return fleet.ConnectionDef.fromPartial({
    name: conn.name,
    local,
    remote,
    ikeProposals: get("ike") ? translateProposals(get("ike")!, "ike") : [],
    espProposals: get("esp") ? translateProposals(get("esp")!, "esp") : [],
    ikeLifetimeSeconds: get("ikelifetime") ? parseTime(get("ikelifetime")!) : 10800,
    childLifetimeSeconds: lifetime ? parseTime(lifetime) : 3600,
    rekeyMarginSeconds: margin ? parseTime(margin) : 540,
    rekeyFuzzPercent: fuzz ? parsePercent(fuzz) : 100,
    dpdDelaySeconds: dpdOn ? (dpddelay ? parseTime(dpddelay) : 30) : 0,
    dpdTimeoutSeconds: dpdtimeout ? parseTime(dpdtimeout) : 150,
    dpdAction,
    startAction: start,
    mode,
    forceEncap: encap ? parseYesNo(encap) : false,
    keyingTries: tries ? (tries.value === "%forever" ? 0 : parseIntIn(tries, 0, 1000)) : 3,
    uniqueIds: unique ? unique.value !== "no" && unique.value !== "never" && parseUniqueIds(unique) : true,
    replayWindow: get("replay_window") ? parseIntIn(get("replay_window")!, 0, 1 << 20) : 1024,
    secretRef,
    mark: get("mark") ? parseIntIn(get("mark")!, 0, 0xffffffff) : 0,
  });
}

function parseAddresses(e: Entry): string[] {
  const out: string[] = [];
  for (const a of e.value.split(",").map((s) => s.trim()).filter(Boolean)) {
    if (a === "%any" || a === "%any4" || a === "%any6") out.push("%any");
    else if (a === "%defaultroute") throw new ConfigError(`${e.key}=%defaultroute is not supported: give the literal address (agents never look up routes or DNS at runtime)`, e.where);
    else if (isIP(a)) out.push(a);
    else throw new ConfigError(`${e.key}=${a} is not an IP address (names must be resolved before they reach an agent; use ${e.key}id=@${a} for the identity)`, e.where);
  }
  if (out.length === 0) throw new ConfigError(`${e.key}= is empty`, e.where);
  return out;
}

/** "10.1.0.0/24", "10.1.0.0/24[tcp/443]", "192.0.2.1" (host). */
function parseSubnets(e: Entry): string[] {
  return e.value
    .split(",")
    .map((s) => s.trim())
    .filter(Boolean)
    .map((s) => {
      const m = /^([0-9A-Fa-f.:]+)(?:\/(\d{1,3}))?(\[[^\]]*\])?$/.exec(s);
      if (!m || !isIP(m[1]!)) throw new ConfigError(`${e.key}: "${s}" is not a subnet (address/prefix)`, e.where);
      const max = isIP(m[1]!) === 4 ? 32 : 128;
      const len = m[2] === undefined ? max : Number(m[2]);
      if (len > max) throw new ConfigError(`${e.key}: prefix length /${len} too long for ${m[1]}`, e.where);
      return `${m[1]}/${len}${m[3] ?? ""}`;
    });
}

/** ipsec.conf times: "3600", "3600s", "60m", "8h", "1d". */
export function parseTime(e: Entry): number {
  const m = /^(\d+)([smhd]?)$/.exec(e.value);
  if (!m) throw new ConfigError(`${e.key}=${e.value} is not a time (e.g. 3600, 60m, 8h, 1d)`, e.where);
  const mult = { "": 1, s: 1, m: 60, h: 3600, d: 86400 }[m[2] as ""];
  const v = Number(m[1]) * mult;
  if (v > 0xffffffff) throw new ConfigError(`${e.key}=${e.value} is too long`, e.where);
  return v;
}

function parsePercent(e: Entry): number {
  const m = /^(\d+)%?$/.exec(e.value);
  if (!m) throw new ConfigError(`${e.key}=${e.value} is not a percentage (e.g. 100%)`, e.where);
  return Number(m[1]);
}

function parseIntIn(e: Entry, min: number, max: number): number {
  const v = /^(0x[0-9a-fA-F]+|\d+)$/.test(e.value) ? Number(e.value) : NaN;
  if (!Number.isInteger(v) || v < min || v > max) throw new ConfigError(`${e.key}=${e.value} must be an integer in ${min}..${max}`, e.where);
  return v;
}

function parseYesNo(e: Entry): boolean {
  if (e.value === "yes") return true;
  if (e.value === "no") return false;
  throw new ConfigError(`${e.key}=${e.value} must be yes or no`, e.where);
}

function parseUniqueIds(e: Entry): boolean {
  if (["yes", "replace", "keep"].includes(e.value)) return true;
  throw new ConfigError(`uniqueids=${e.value} must be yes, no, never, replace or keep`, e.where);
}

function readPem(e: Entry, opts: ParseOptions, label: string): string {
  if (!opts.read) throw new ConfigError(`${e.key}=${e.value}: cannot read files here (no file reader given)`, e.where);
  let text: string;
  try {
    text = opts.read(e.value, e.where.replace(/:\d+$/, "")).text;
  } catch (err) {
    throw new ConfigError(`${e.key}: cannot read "${e.value}" (${(err as NodeJS.ErrnoException).code ?? String(err)})`, e.where);
  }
  if (!text.includes(`-----BEGIN ${label}-----`)) throw new ConfigError(`${e.key}: "${e.value}" is not a PEM ${label.toLowerCase()} (DER is not supported)`, e.where);
  return text;
}

/** Libreswan algorithm names -> strongSwan's, so both spellings reach the engine the same way. */
const LIBRESWAN_TOKENS: Record<string, string> = {
  aes_gcm: "aes256gcm16",
  aes_gcm128: "aes128gcm16",
  aes_gcm256: "aes256gcm16",
  aes_gcm_16: "aes256gcm16",
  "aes_gcm_16_128": "aes128gcm16",
  "aes_gcm_16_256": "aes256gcm16",
  chacha20_poly1305: "chacha20poly1305",
  sha2_256: "sha256",
  sha2_384: "sha384",
  sha2_512: "sha512",
  dh14: "modp2048",
  dh15: "modp3072",
  dh16: "modp4096",
  dh19: "ecp256",
  dh20: "ecp384",
  dh21: "ecp521",
  dh31: "curve25519",
};

/**
 * "aes256gcm16-prfsha384-curve25519, aes256-sha256-modp2048!" -> one proposal per entry in
 * strongSwan syntax; Libreswan spellings (aes_gcm256-sha2_256-dh31, ";" separators) are
 * translated. Whether the transforms are acceptable is the engine's decision.
 */
export function translateProposals(e: Entry, kind: "ike" | "esp"): string[] {
  const list = e.value.replace(/!$/, "").split(/[,;]/).map((s) => s.trim()).filter(Boolean);
  if (list.length === 0) throw new ConfigError(`${e.key}= is empty`, e.where);
  return list.map((p) => {
    if (!/^[A-Za-z0-9_+-]+$/.test(p)) throw new ConfigError(`${e.key}: "${p}" is not a proposal (e.g. aes256gcm16-prfsha384-curve25519)`, e.where);
    const tokens = p.toLowerCase().split(/[-+]/).filter(Boolean);
    const aead = tokens.some((t) => /gcm|chacha20/.test(t));
    return tokens
      .map((t) => {
        const mapped = LIBRESWAN_TOKENS[t];
        if (!mapped) return t;
        // In an IKE proposal with an AEAD cipher, Libreswan's hash names the PRF.
        if (kind === "ike" && aead && /^sha/.test(mapped)) return `prf${mapped}`;
        return mapped;
      })
      .join("-");
  });
}

/** For callers that hold secrets by reference. */
export type { Secret };
