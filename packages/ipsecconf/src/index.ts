/**
 * @fleetswan/ipsecconf: FreeS/WAN / Libreswan / strongSwan-starter `ipsec.conf` and
 * `ipsec.secrets` -> fleet.v1.ConnectionDef[] plus secrets. Used by the ikeagent's
 * standalone mode (`fleetswan ikeagent --ipsec-conf`) and by the controller's import.
 */
import { readFileSync } from "node:fs";
import { dirname, isAbsolute, resolve } from "node:path";
import { ConfigError } from "@fleetswan/common";
import { parseIpsecConf, type IpsecConfig } from "./conf.js";
import { parseIpsecSecrets, type SecretEntry } from "./secrets.js";
import type { FileReader } from "./lexer.js";

export { parseIpsecConf, parseTime, translateProposals, type IpsecConfig, type ParseOptions } from "./conf.js";
export { parseIpsecSecrets, findSecret, normalizeId, type SecretEntry } from "./secrets.js";
export { lexIpsecConf, type Entry, type Section, type FileReader } from "./lexer.js";

/** Reads files relative to the directory of the referring file. */
export const fsReader: FileReader = (path, from) => {
  const full = isAbsolute(path) ? path : resolve(dirname(from), path);
  return { path: full, text: readFileSync(full, "utf8") };
};

/**
 * Loads ipsec.conf and (optionally) ipsec.secrets from disk.
 * `localAddresses` orients each conn (see ParseOptions).
 */
export function loadIpsecConfig(confPath: string, secretsPath?: string, localAddresses?: string[]): IpsecConfig {
  const read = (p: string): string => {
    try {
      return readFileSync(p, "utf8");
    } catch (err) {
      throw new ConfigError(`cannot read file (${(err as NodeJS.ErrnoException).code ?? String(err)})`, p);
    }
  };
  let secrets: SecretEntry[] | undefined;
  if (secretsPath) secrets = parseIpsecSecrets(read(secretsPath), secretsPath, fsReader);
  return parseIpsecConf({ confText: read(confPath), confFile: confPath, secrets, localAddresses, read: fsReader });
}
