/**
 * Standalone configuration sources for `fleetswan ikeagent`: the agent's own YAML file
 * (the same ConnectionDef shape a controller renders, documented in docs/ikeagent.md), or
 * a FreeS/WAN/Libreswan ipsec.conf + ipsec.secrets (via @fleetswan/ipsecconf). Both yield
 * an EngineConfig and a SecretLookup; errors are ConfigError with file:line.
 */
import { readFileSync } from "node:fs";
import { dirname, isAbsolute, resolve } from "node:path";
import { networkInterfaces } from "node:os";
import { ConfigError, Secret, YamlSource, type FieldPath } from "@fleetswan/common";
import { fleet } from "@fleetswan/proto";
import { loadIpsecConfig } from "@fleetswan/ipsecconf";
import type { EngineConfig, EngineSecret, SecretLookup } from "../engine-api.js";

export interface LoadedConfig {
  config: EngineConfig;
  secrets: SecretLookup;
  /** Gateway name (YAML `gateway:`), for diagnostics. */
  gateway: string;
  /** Where it came from, for logs. */
  source: string;
}

/** This host's addresses (non-internal), to orient ipsec.conf conns. */
export function hostAddresses(): string[] {
  return Object.values(networkInterfaces())
    .flat()
    .filter((a): a is NonNullable<typeof a> => !!a && !a.address.startsWith("fe80"))
    .map((a) => a.address);
}

// ------------------------------------------------------------------- YAML --

const TOP = new Set(["gateway", "self", "ca_certificates", "secrets", "connections"]);
const CONN_FIELDS = new Set([
  "name", "local", "remote", "ike_proposals", "esp_proposals", "ike_lifetime_seconds", "child_lifetime_seconds", "rekey_margin_seconds", "rekey_fuzz_percent",
  "child_lifetime_bytes", "child_lifetime_packets", "dpd_delay_seconds", "dpd_timeout_seconds", "dpd_action", "start_action", "mode", "force_encap", "keying_tries",
  "unique_ids", "replay_window", "secret_ref", "mark",
]);
const END_FIELDS = new Set(["addresses", "id", "auth", "subnets", "certificate_pem", "certificate_file", "ca_pem", "ca_file", "port"]);
const SECRET_FIELDS = new Set(["psk", "psk_file", "private_key_file", "certificate_file", "previous_psk", "previous_valid_until"]);

/** Documented defaults for fields left out of the YAML (proto3 zero values mean something else). */
const DEFAULTS: Record<string, unknown> = {
  ike_lifetime_seconds: 10800, child_lifetime_seconds: 3600, rekey_margin_seconds: 540, rekey_fuzz_percent: 100, dpd_delay_seconds: 30, dpd_timeout_seconds: 150,
  keying_tries: 3, unique_ids: true, replay_window: 1024, mode: "tunnel", start_action: "add", dpd_action: "clear",
};
const ENUMS: Record<string, Record<string, number>> = {
  auth: { psk: fleet.AuthMethod.AUTH_METHOD_PSK, pubkey: fleet.AuthMethod.AUTH_METHOD_PUBKEY },
  start_action: { add: fleet.StartAction.START_ACTION_ADD, start: fleet.StartAction.START_ACTION_START, route: fleet.StartAction.START_ACTION_ROUTE },
  dpd_action: { clear: fleet.DpdAction.DPD_ACTION_CLEAR, trap: fleet.DpdAction.DPD_ACTION_TRAP, restart: fleet.DpdAction.DPD_ACTION_RESTART },
};

/** Loads agent.yaml. */
export function loadYamlConfig(file: string): LoadedConfig {
  const src = YamlSource.fromFile(file);
  const base = dirname(file);
  const readRel = (p: string, at: FieldPath): string => {
    const full = isAbsolute(p) ? p : resolve(base, p);
    try {
      return readFileSync(full, "utf8");
    } catch (err) {
      throw src.error(at, `cannot read "${p}" (${(err as NodeJS.ErrnoException).code ?? String(err)})`);
    }
  };
  const data = (src.data ?? {}) as Record<string, unknown>;
  if (typeof data !== "object" || Array.isArray(data)) throw src.error([], "expected a mapping at the top level");
  for (const k of Object.keys(data)) if (!TOP.has(k)) throw src.error([k], `unknown key "${k}" (expected ${[...TOP].join(", ")})`);
  const obj = (v: unknown, at: FieldPath): Record<string, unknown> => {
    if (v === null || typeof v !== "object" || Array.isArray(v)) throw src.error(at, "expected a mapping");
    return v as Record<string, unknown>;
  };
  const list = (v: unknown, at: FieldPath): unknown[] => {
    if (v === undefined) return [];
    if (!Array.isArray(v)) throw src.error(at, "expected a list");
    return v;
  };
  const str = (v: unknown, at: FieldPath): string => {
    if (typeof v !== "string" && typeof v !== "number") throw src.error(at, "expected a string");
    return String(v);
  };

  // secrets
  const secretMap = new Map<string, EngineSecret>();
  const secrets = data.secrets === undefined ? {} : obj(data.secrets, ["secrets"]);
  for (const [ref, raw] of Object.entries(secrets)) {
    const at: FieldPath = ["secrets", ref];
    const s = obj(raw, at);
    for (const k of Object.keys(s)) if (!SECRET_FIELDS.has(k)) throw src.error([...at, k], `unknown key "${k}" (expected ${[...SECRET_FIELDS].join(", ")})`);
    if (s.psk !== undefined || s.psk_file !== undefined) {
      const value = s.psk !== undefined ? str(s.psk, [...at, "psk"]) : readRel(str(s.psk_file, [...at, "psk_file"]), [...at, "psk_file"]).trim();
      if (Buffer.byteLength(value) < 16) throw src.error([...at, s.psk !== undefined ? "psk" : "psk_file"], "PSK shorter than 16 bytes is refused (use 32 random bytes or more)");
      const e: EngineSecret = { kind: "psk", current: new Secret(value) };
      if (s.previous_psk !== undefined) e.previous = new Secret(str(s.previous_psk, [...at, "previous_psk"]));
      if (s.previous_valid_until !== undefined) e.previousValidUntil = new Date(str(s.previous_valid_until, [...at, "previous_valid_until"]));
      secretMap.set(ref, e);
    } else if (s.private_key_file !== undefined) {
      const key = readRel(str(s.private_key_file, [...at, "private_key_file"]), [...at, "private_key_file"]);
      if (!/-----BEGIN [A-Z ]*PRIVATE KEY-----/.test(key)) throw src.error([...at, "private_key_file"], "not a PEM private key");
      const chain = s.certificate_file !== undefined ? readRel(str(s.certificate_file, [...at, "certificate_file"]), [...at, "certificate_file"]) : undefined;
      secretMap.set(ref, { kind: "private-key", current: new Secret(key), ...(chain ? { certificateChainPem: chain } : {}) });
    } else throw src.error(at, "a secret needs psk, psk_file or private_key_file");
  }

  const cas = list(data.ca_certificates, ["ca_certificates"]).map((v, i) => {
    const s = str(v, ["ca_certificates", i]);
    return s.includes("-----BEGIN CERTIFICATE-----") ? s : readRel(s, ["ca_certificates", i]);
  });

  const connections: fleet.ConnectionDef[] = [];
  const names = new Set<string>();
  list(data.connections, ["connections"]).forEach((raw, i) => {
    const at: FieldPath = ["connections", i];
    const c = obj(raw, at);
    for (const k of Object.keys(c)) if (!CONN_FIELDS.has(k)) throw src.error([...at, k], `unknown key "${k}"`);
    const name = str(c.name, [...at, "name"]);
    if (!/^[A-Za-z0-9._-]{1,64}$/.test(name)) throw src.error([...at, "name"], `invalid connection name "${name}" ([A-Za-z0-9._-], 1..64)`);
    if (names.has(name)) throw src.error([...at, "name"], `duplicate connection name "${name}"`);
    names.add(name);
    const json: Record<string, unknown> = { ...DEFAULTS, ...c };
    for (const e of ["dpd_action", "start_action"] as const) {
      const v = json[e];
      if (typeof v === "string") {
        const n = ENUMS[e]![v];
        if (n === undefined) throw src.error([...at, e], `${e} must be one of ${Object.keys(ENUMS[e]!).join(", ")}`);
        json[e] = n;
      }
    }
    if (json.mode !== "tunnel" && json.mode !== "transport") throw src.error([...at, "mode"], "mode must be tunnel or transport");
    for (const side of ["local", "remote"] as const) {
      const sat: FieldPath = [...at, side];
      const e = c[side] === undefined ? {} : { ...obj(c[side], sat) };
      for (const k of Object.keys(e)) if (!END_FIELDS.has(k)) throw src.error([...sat, k], `unknown key "${k}" (expected ${[...END_FIELDS].join(", ")})`);
      if (typeof e.auth === "string") {
        const n = ENUMS.auth![e.auth];
        if (n === undefined) throw src.error([...sat, "auth"], "auth must be psk or pubkey");
        e.auth = n;
      }
      if (e.certificate_file !== undefined) e.certificate_pem = readRel(str(e.certificate_file, [...sat, "certificate_file"]), [...sat, "certificate_file"]);
      if (e.ca_file !== undefined) e.ca_pem = readRel(str(e.ca_file, [...sat, "ca_file"]), [...sat, "ca_file"]);
      delete e.certificate_file;
      delete e.ca_file;
      json[side] = e;
    }
    for (const p of ["ike_proposals", "esp_proposals"]) if (typeof json[p] === "string") json[p] = [json[p]];
    const ref = json.secret_ref;
    if (ref !== undefined && !secretMap.has(String(ref))) throw src.error([...at, "secret_ref"], `no secret "${ref}" under secrets:`);
    connections.push(fleet.ConnectionDef.fromJSON(json));
  });
  const self = data.self === undefined ? undefined : fleet.GatewaySelf.fromJSON(obj(data.self, ["self"]));
  return {
    config: { revision: 0n, ...(self ? { self } : {}), connections, policyGroups: [], caCertificates: cas },
    secrets: (ref) => secretMap.get(ref),
    gateway: typeof data.gateway === "string" ? data.gateway : "",
    source: file,
  };
}

// -------------------------------------------------------------- ipsec.conf --

/** Loads ipsec.conf (+ ipsec.secrets), oriented by this host's addresses. */
export function loadIpsecConf(confFile: string, secretsFile: string | undefined, localAddresses: string[] = hostAddresses()): LoadedConfig {
  const parsed = loadIpsecConfig(confFile, secretsFile, localAddresses);
  const map = new Map<string, EngineSecret>();
  for (const [ref, e] of parsed.secrets) {
    if (e.kind === "psk") map.set(ref, { kind: "psk", current: e.value });
    else map.set(ref, { kind: "private-key", current: e.value });
  }
  for (const c of parsed.connections) {
    if (c.secretRef || !secretsFile) continue;
    throw new ConfigError(`conn ${c.name} has no secret`, parsed.where.get(c.name) ?? confFile);
  }
  return { config: { revision: 0n, connections: parsed.connections, policyGroups: [], caCertificates: [] }, secrets: (ref) => map.get(ref), gateway: "", source: confFile };
}
