/**
 * Parser for ipsec.secrets (ipsec.secrets(5), FreeS/WAN / Libreswan / strongSwan starter):
 *
 *   # index              : TYPE  value
 *   192.0.2.2 192.0.2.8  : PSK   "a long shared secret"
 *   @gwa.example @gwb    : PSK   0x6a2b...          (hex)  or  0sBase64...
 *   : RSA /etc/ipsec.d/private/gw.pem               (no index: default key)
 *   @gw : ECDSA gw-key.pem
 *   include /etc/ipsec.d/*.secrets                  (no wildcards here)
 *
 * An entry may continue on indented lines. Raw FreeS/WAN RSA keys in `{ ... }` and
 * EAP/XAUTH/PIN entries are rejected with the line.
 */
import { ConfigError, Secret } from "@fleetswan/common";
import type { FileReader } from "./lexer.js";

/** One secret from ipsec.secrets. */
export interface SecretEntry {
  /** Identities/addresses it applies to, normalized (leading "@" removed); empty = any. */
  ids: string[];
  kind: "psk" | "private-key";
  /** PSK bytes, or the PKCS#8/PEM private key text for "private-key". */
  value: Secret;
  /** For keys: the file it came from (as written). */
  keyFile?: string;
  /** "file:line". Also used as the secret reference. */
  where: string;
}

/**
 * Parses ipsec.secrets text. `read` loads key files and included files (relative to the
 * secrets file); without it, RSA/ECDSA entries are an error.
 */
export function parseIpsecSecrets(text: string, file: string, read?: FileReader, depth = 0): SecretEntry[] {
  if (depth > 10) throw new ConfigError("include nesting deeper than 10 (a loop?)", file);
  // Join continuation lines (indented) onto their entry, keeping the first line number.
  const logical: { text: string; where: string }[] = [];
  const lines = text.split(/\r?\n/);
  for (let i = 0; i < lines.length; i++) {
    const where = `${file}:${i + 1}`;
    const line = stripComment(lines[i]!).replace(/\s+$/, "");
    if (line.trim() === "") continue;
    const last = logical[logical.length - 1];
    if (/^\s/.test(line) && last) last.text += " " + line.trim();
    else logical.push({ text: line.trim(), where });
  }
  const out: SecretEntry[] = [];
  for (const { text: entry, where } of logical) {
    const inc = /^include\s+(\S+)$/.exec(entry);
    if (inc) {
      const target = inc[1]!;
      if (!read) throw new ConfigError("include is not allowed here (no file reader given)", where);
      if (/[*?[]/.test(target)) throw new ConfigError(`include with wildcards ("${target}") is not supported; list the files`, where);
      let loaded: { path: string; text: string };
      try {
        loaded = read(target, file);
      } catch (err) {
        throw new ConfigError(`cannot read included file "${target}" (${(err as NodeJS.ErrnoException).code ?? String(err)})`, where);
      }
      out.push(...parseIpsecSecrets(loaded.text, loaded.path, read, depth + 1));
      continue;
    }
    const colon = findColon(entry);
    if (colon < 0) throw new ConfigError('expected "[ids] : TYPE value" (missing ":")', where);
    const ids = splitQuoted(entry.slice(0, colon))
      .map(normalizeId)
      .filter((id) => id !== "%any" && id !== "0.0.0.0" && id !== "::");
    const rest = entry.slice(colon + 1).trim();
    const m = /^([A-Za-z0-9]+)\s*(.*)$/.exec(rest);
    if (!m) throw new ConfigError("missing secret type (PSK, RSA, ECDSA)", where);
    const type = m[1]!.toUpperCase();
    const arg = m[2]!.trim();
    if (type === "PSK") {
      out.push({ ids, kind: "psk", value: new Secret(parsePskValue(arg, where)), where });
    } else if (type === "RSA" || type === "ECDSA" || type === "PRIVATE" || type === "ED25519") {
      if (arg.startsWith("{")) throw new ConfigError(`raw ${type} keys in { } are not supported; give a PEM key file`, where);
      const words = splitQuoted(arg);
      if (words.length === 0) throw new ConfigError(`${type} needs a key file name`, where);
      if (words.length > 1) throw new ConfigError(`${type} key passphrases are not supported; decrypt the key file`, where);
      if (!read) throw new ConfigError(`${type} key file "${words[0]}" cannot be read here (no file reader given)`, where);
      let key: { path: string; text: string };
      try {
        key = read(words[0]!, file);
      } catch (err) {
        throw new ConfigError(`cannot read ${type} key file "${words[0]}" (${(err as NodeJS.ErrnoException).code ?? String(err)})`, where);
      }
      if (!/-----BEGIN [A-Z ]*PRIVATE KEY-----/.test(key.text)) throw new ConfigError(`"${words[0]}" is not a PEM private key`, where);
      out.push({ ids, kind: "private-key", value: new Secret(key.text), keyFile: words[0]!, where });
    } else {
      throw new ConfigError(`unsupported secret type "${type}" (supported: PSK, RSA, ECDSA)`, where);
    }
  }
  return out;
}

/** "@gw.example" -> "gw.example"; quotes removed. */
export function normalizeId(id: string): string {
  let s = id.trim();
  if (s.startsWith('"') && s.endsWith('"') && s.length >= 2) s = s.slice(1, -1);
  if (s.startsWith("@#")) return s; // FreeS/WAN hex ID, kept as written
  if (s.startsWith("@")) s = s.slice(1);
  return s;
}

/**
 * The most specific secret for a pair of identities, as FreeS/WAN picks it: an entry
 * naming both ends beats one naming one end, which beats one with no index.
 * Each of `local`/`remote` lists the names the end is known by (id and address).
 */
export function findSecret(entries: SecretEntry[], kind: SecretEntry["kind"], local: string[], remote: string[]): SecretEntry | undefined {
  let best: SecretEntry | undefined;
  let bestScore = -1;
  for (const e of entries) {
    if (e.kind !== kind) continue;
    let score: number;
    const hasLocal = e.ids.some((id) => local.includes(id));
    const hasRemote = e.ids.some((id) => remote.includes(id));
    if (e.ids.length === 0) score = 1;
    else if (kind === "private-key") score = hasLocal ? 3 : -1;
    else if (hasLocal && hasRemote) score = 3;
    else if (hasRemote && e.ids.length === 1) score = 2; // "remote : PSK" (one-id form)
    else if (hasLocal && e.ids.length === 1) score = 2;
    else score = -1;
    if (score > bestScore) {
      best = e;
      bestScore = score;
    }
  }
  return bestScore >= 0 ? best : undefined;
}

function parsePskValue(arg: string, where: string): Buffer {
  if (arg.startsWith('"')) {
    const end = arg.indexOf('"', 1);
    if (end < 0) throw new ConfigError("unterminated PSK string", where);
    if (arg.slice(end + 1).trim() !== "") throw new ConfigError("unexpected text after the PSK", where);
    return Buffer.from(arg.slice(1, end), "utf8");
  }
  if (/^0x[0-9a-fA-F_]+$/.test(arg)) {
    const hex = arg.slice(2).replace(/_/g, "");
    if (hex.length % 2) throw new ConfigError("hex PSK has an odd number of digits", where);
    return Buffer.from(hex, "hex");
  }
  if (/^0s[A-Za-z0-9+/=]+$/.test(arg)) return Buffer.from(arg.slice(2), "base64");
  if (arg === "") throw new ConfigError("PSK value is missing", where);
  throw new ConfigError('PSK must be "quoted", 0x<hex> or 0s<base64>', where);
}

function stripComment(line: string): string {
  let inQuote = false;
  for (let i = 0; i < line.length; i++) {
    const c = line[i];
    if (c === '"') inQuote = !inQuote;
    else if (c === "#" && !inQuote) return line.slice(0, i);
  }
  return line;
}

/** Index of the ":" separating ids from the secret (not inside quotes, not in an IPv6 address). */
function findColon(entry: string): number {
  let inQuote = false;
  for (let i = 0; i < entry.length; i++) {
    const c = entry[i];
    if (c === '"') inQuote = !inQuote;
    else if (c === ":" && !inQuote) {
      // A ':' inside a word is part of an IPv6 address; the separator stands alone or
      // starts the line, and is followed by blank or end.
      const before = i === 0 || /\s/.test(entry[i - 1]!);
      const after = i + 1 >= entry.length || /\s/.test(entry[i + 1]!);
      if (before && after) return i;
    }
  }
  return -1;
}

function splitQuoted(s: string): string[] {
  const out: string[] = [];
  const re = /"([^"]*)"|(\S+)/g;
  let m: RegExpExecArray | null;
  while ((m = re.exec(s))) out.push(m[1] ?? m[2]!);
  return out;
}
