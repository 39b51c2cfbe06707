/**
 * Lexer for ipsec.conf (FreeS/WAN, Libreswan, strongSwan's starter: ipsec.conf(5)).
 *
 *   # comment
 *   version 2                    <- section-level lines start in column 0
 *   config setup
 *       uniqueids=yes            <- parameters are indented
 *   conn %default
 *       keyexchange=ikev2
 *   conn net-to-net
 *       left=192.0.2.2           # comments may follow a value
 *       leftid="@gw a"           # double quotes keep spaces and '#'
 *       leftsubnets={10.1.0.0/24 10.2.0.0/24}   # Libreswan list syntax
 *       rightsubnet=             # empty value: unset what %default or also= set
 *   include /etc/ipsec.d/*.conf  <- include (no globbing, see below)
 *
 * The lexer only splits text into sections of key/value entries with their line numbers;
 * the meaning of keywords is in conf.ts.
 */
import { ConfigError } from "@fleetswan/common";

/** One `key=value` line. */
export interface Entry {
  key: string;
  /** The value with quotes removed; "" means "unset". */
  value: string;
  /** "file:line" for error messages. */
  where: string;
}

/** `config setup`, `conn NAME` or `ca NAME`. */
export interface Section {
  kind: "config" | "conn" | "ca";
  name: string;
  where: string;
  entries: Entry[];
}

/** Reads an included file; resolves relative to the including file. */
export type FileReader = (path: string, from: string) => { path: string; text: string };

/** Splits ipsec.conf text into sections. `include` lines are expanded with `read`. */
export function lexIpsecConf(text: string, file: string, read?: FileReader, depth = 0): Section[] {
  if (depth > 10) throw new ConfigError("include nesting deeper than 10 (a loop?)", file);
  const sections: Section[] = [];
  let current: Section | undefined;
  const lines = text.split(/\r?\n/);
  for (let i = 0; i < lines.length; i++) {
    const where = `${file}:${i + 1}`;
    const raw = lines[i]!;
    const line = stripComment(raw, where).replace(/\s+$/, "");
    if (line.trim() === "") continue;
    if (!/^\s/.test(line)) {
      // Section-level line.
      const words = splitWords(line, where);
      const head = words[0]!;
      if (head === "version") {
        if (words[1] !== "2" && words[1] !== "2.0") throw new ConfigError(`unsupported ipsec.conf version "${words[1] ?? ""}" (only 2)`, where);
        current = undefined;
        continue;
      }
      if (head === "include") {
        if (words.length !== 2) throw new ConfigError("include takes exactly one file name", where);
        if (!read) throw new ConfigError("include is not allowed here (no file reader given)", where);
        const target = words[1]!;
        if (/[*?[]/.test(target)) throw new ConfigError(`include with wildcards ("${target}") is not supported; list the files`, where);
        let inc: { path: string; text: string };
        try {
          inc = read(target, file);
        } catch (err) {
          throw new ConfigError(`cannot read included file "${target}" (${(err as NodeJS.ErrnoException).code ?? String(err)})`, where);
        }
        sections.push(...lexIpsecConf(inc.text, inc.path, read, depth + 1));
        current = undefined;
        continue;
      }
      if (head === "config" || head === "conn" || head === "ca") {
        if (words.length !== 2) throw new ConfigError(`"${head}" needs exactly one name`, where);
        if (head === "config" && words[1] !== "setup") throw new ConfigError(`unknown section "config ${words[1]}" (only "config setup")`, where);
        if (head !== "config" && !/^[A-Za-z0-9._%-]{1,64}$/.test(words[1]!)) {
          throw new ConfigError(`invalid ${head} name "${words[1]}" (letters, digits, . _ - only, up to 64)`, where);
        }
        current = { kind: head, name: words[1]!, where, entries: [] };
        sections.push(current);
        continue;
      }
      throw new ConfigError(`unexpected "${head}" at the start of a line (parameters must be indented; sections are config/conn/ca/include/version)`, where);
    }
    // Parameter line.
    if (!current) throw new ConfigError("indented parameter outside of a config/conn/ca section", where);
    const m = /^\s+([A-Za-z][A-Za-z0-9_-]*)\s*=\s*(.*)$/.exec(line);
    if (!m) throw new ConfigError(`expected "keyword=value", got "${line.trim()}"`, where);
    const key = m[1]!.toLowerCase();
    let value = m[2]!.trim();
    if (value.startsWith('"')) {
      if (!value.endsWith('"') || value.length < 2) throw new ConfigError(`unterminated quoted value for ${key}`, where);
      value = value.slice(1, -1);
    } else if (value.startsWith("{")) {
      if (!value.endsWith("}")) throw new ConfigError(`unterminated {list} for ${key} (lists must be on one line)`, where);
      value = value.slice(1, -1).trim().split(/[\s,]+/).filter(Boolean).join(",");
    } else if (/\s/.test(value)) {
      throw new ConfigError(`value of ${key} contains spaces; quote it ("...")`, where);
    }
    if (current.entries.some((e) => e.key === key)) throw new ConfigError(`duplicate keyword "${key}" in ${current.kind} ${current.name}`, where);
    current.entries.push({ key, value, where });
  }
  return sections;
}

/** Removes a trailing "# comment" that is not inside double quotes. */
function stripComment(line: string, where: string): string {
  let inQuote = false;
  for (let i = 0; i < line.length; i++) {
    const c = line[i];
    if (c === '"') inQuote = !inQuote;
    else if (c === "#" && !inQuote) return line.slice(0, i);
  }
  if (inQuote) throw new ConfigError("unterminated double quote", where);
  return line;
}

/** Splits a section-level line on blanks, honouring double quotes. */
function splitWords(line: string, where: string): string[] {
  const out: string[] = [];
  const re = /"([^"]*)"|(\S+)/g;
  let m: RegExpExecArray | null;
  while ((m = re.exec(line))) out.push(m[1] ?? m[2]!);
  if (out.length === 0) throw new ConfigError("empty line", where);
  return out;
}
