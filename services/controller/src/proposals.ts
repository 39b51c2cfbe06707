/**
 * A small checker for IKE and ESP proposals in strongSwan syntax
 * ("aes256gcm16-prfsha384-curve25519"). Only strong transforms are allowed; the
 * IKE engine has its own parser, this one exists so that the controller rejects a
 * weak fleet spec before any gateway sees it.
 *
 * Transform types follow RFC 7296 §3.3.2 (ENCR, PRF, INTEG, D-H) plus ESN for ESP
 * (RFC 4303 §2.2.1). AEAD ciphers (RFC 4106 AES-GCM, RFC 7634 ChaCha20-Poly1305)
 * carry their own integrity, so an INTEG transform with them is an error.
 */

export const AEAD_CIPHERS = ["aes128gcm16", "aes256gcm16", "chacha20poly1305"] as const;
export const CBC_CIPHERS = ["aes128", "aes256"] as const;
export const INTEGRITY = ["sha256", "sha384", "sha512"] as const;
export const PRFS = ["prfsha256", "prfsha384", "prfsha512"] as const;
export const DH_GROUPS = ["modp2048", "modp3072", "modp4096", "ecp256", "ecp384", "ecp521", "curve25519"] as const;
export const ESN = ["esn", "noesn"] as const;

/** Known but refused, with the reason shown to the operator. */
const WEAK: Record<string, string> = {
  des: "DES is broken (56-bit key)",
  "3des": "3DES has a 64-bit block (Sweet32) and is deprecated (RFC 8221)",
  blowfish: "not an IETF IPsec cipher; 64-bit block",
  cast128: "64-bit block",
  null: "no encryption",
  md5: "MD5 is broken",
  sha1: "SHA-1 is deprecated for IPsec integrity (RFC 8221/8247)",
  prfmd5: "MD5 is broken",
  prfsha1: "SHA-1 PRF is deprecated (RFC 8247)",
  modp768: "768-bit MODP group is breakable",
  modp1024: "1024-bit MODP group is too weak (RFC 8247)",
  modp1536: "1536-bit MODP group is too weak (RFC 8247)",
  aes128ccm16: "allowed by RFCs but not supported by fleetswan; use aes128gcm16",
  aes192: "use aes128 or aes256",
  aes192gcm16: "use aes128gcm16 or aes256gcm16",
  aes128gcm8: "8-byte ICV is too short (RFC 8221)",
  aes256gcm8: "8-byte ICV is too short (RFC 8221)",
  aes128gcm12: "12-byte ICV: use the 16-byte variant",
  aes256gcm12: "12-byte ICV: use the 16-byte variant",
  sha256_96: "truncated non-standard HMAC-SHA256 (Linux 2.6 bug compatibility)",
};

export type ProposalKind = "ike" | "esp";

export interface ProposalProblem {
  /** The offending token, or the whole proposal for structural problems. */
  token: string;
  message: string;
}

const has = (list: readonly string[], t: string): boolean => list.includes(t);

/** Check one proposal; returns the problems (empty = fine). */
export function checkProposal(proposal: string, kind: ProposalKind): ProposalProblem[] {
  const problems: ProposalProblem[] = [];
  const text = proposal.trim().toLowerCase();
  if (!text) return [{ token: proposal, message: "empty proposal" }];
  const tokens = text.split("-");
  let aead = 0, cbc = 0, integ = 0, prf = 0, dh = 0, esn = 0;
  for (const t of tokens) {
    if (has(AEAD_CIPHERS, t)) aead++;
    else if (has(CBC_CIPHERS, t)) cbc++;
    else if (has(INTEGRITY, t)) integ++;
    else if (has(PRFS, t)) {
      if (kind === "esp") problems.push({ token: t, message: `"${t}" is a PRF: PRFs belong in IKE proposals, not ESP` });
      prf++;
    } else if (has(DH_GROUPS, t)) dh++;
    else if (has(ESN, t)) {
      if (kind === "ike") problems.push({ token: t, message: `"${t}" (extended sequence numbers) only applies to ESP proposals` });
      esn++;
    } else if (t in WEAK) problems.push({ token: t, message: `weak algorithm "${t}": ${WEAK[t]}` });
    else problems.push({ token: t, message: `unknown algorithm "${t}" (allowed: ${allowedList(kind)})` });
  }
  if (problems.length > 0) return problems;
  if (aead + cbc === 0) problems.push({ token: proposal, message: `proposal "${proposal}" has no encryption algorithm` });
  if (aead > 0 && integ > 0 && cbc === 0) {
    problems.push({ token: proposal, message: `proposal "${proposal}" combines an AEAD cipher with an integrity algorithm; AEAD ciphers need none` });
  }
  if (cbc > 0 && integ === 0) problems.push({ token: proposal, message: `proposal "${proposal}" uses a non-AEAD cipher without an integrity algorithm (add sha256, sha384 or sha512)` });
  if (kind === "ike") {
    if (aead > 0 && prf === 0 && integ === 0) problems.push({ token: proposal, message: `IKE proposal "${proposal}" with an AEAD cipher needs a PRF (prfsha256, prfsha384 or prfsha512)` });
    if (dh === 0) problems.push({ token: proposal, message: `IKE proposal "${proposal}" has no Diffie-Hellman group` });
  }
  return problems;
}

export function allowedList(kind: ProposalKind): string {
  const parts: readonly string[] = kind === "ike"
    ? [...AEAD_CIPHERS, ...CBC_CIPHERS, ...INTEGRITY, ...PRFS, ...DH_GROUPS]
    : [...AEAD_CIPHERS, ...CBC_CIPHERS, ...INTEGRITY, ...DH_GROUPS, ...ESN];
  return parts.join(", ");
}

/** Normalise (lower case, trimmed) a proposal after it passed checkProposal. */
export function normaliseProposal(p: string): string {
  return p.trim().toLowerCase();
}
