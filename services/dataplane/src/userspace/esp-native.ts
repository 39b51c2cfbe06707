/**
 * ESP seal/open in the addon (native/esp-native.cc): one long-lived OpenSSL EVP context per
 * SA inside node's own OpenSSL, whole batches per call. Same contract and byte-identical
 * output as EspCrypto (esp.ts, the reference implementation; test/userspace/esp-native.test.ts
 * proves it for every transform). Sequence numbers, replay, SA choice and policy stay in
 * TypeScript and are passed in per packet through a job array (JOB_* word offsets below).
 *
 * Keys: copied into OpenSSL's contexts when the SA is created (the temporary copies are zeroed),
 * wiped when it is freed (NativeSa.free, called when the SA is deleted or expires). Never
 * printed: errors name the SA and the algorithm only.
 */
import type { dataplane } from "@fleetswan/proto";
import { algoOf, type EspDropReason } from "./esp.js";
import type { FsespAddon } from "./native.js";

/** Words per job in the Uint32Array shared with the addon. */
export const JOB_WORDS = 20;
export const JOB_HANDLE = 0;
export const JOB_SPI = 1;
export const JOB_SEQ_LO = 2;
export const JOB_SEQ_HI = 3;
/** seal: next header in; open: next header out. */
export const JOB_NH = 4;
export const JOB_IN_OFF = 5;
export const JOB_IN_LEN = 6;
export const JOB_OUT_OFF = 7;
export const JOB_OUT_LEN = 8;
export const JOB_STATUS = 9;
export const JOB_ERRNO = 10;
export const JOB_FD = 11;
export const JOB_FAMILY = 12;
export const JOB_PORT = 13;
export const JOB_ADDR = 14;
/** Free for the caller (the backend keeps the inner packet length here). */
export const JOB_USER = 18;

export const ST_OK = 0;
export const ST_BAD_HANDLE = 1;
export const ST_MALFORMED = 2;
export const ST_INTEGRITY = 3;
export const ST_PADDING = 4;
export const ST_CRYPTO = 5;
export const ST_NO_ROOM = 6;
export const ST_SEND = 7;

/** Drop reason for an espOpen status (ST_OK excluded). */
export function openDropReason(status: number): EspDropReason {
  switch (status) {
    case ST_INTEGRITY: return "integrity";
    case ST_PADDING: return "padding";
    case ST_BAD_HANDLE: return "no_sa";
    default: return "malformed";
  }
}

export interface NativeSaOptions {
  cipher: string;
  encrypt: boolean;
  esn: boolean;
  key: Buffer;
  salt?: Buffer;
  hmac?: string;
  authKey?: Buffer;
  icvLen: number;
}

/** The addon's ESP functions (absent in test fakes and in builds before they existed). */
export interface EspAddon {
  espSaCreate(o: NativeSaOptions): number;
  espSaFree(handle: number): void;
  /** Seal jobs into `out` (16-octet aligned); returns octets used. `ivs`: tests only (CBC IVs). */
  espSeal(data: Buffer, jobs: Uint32Array, n: number, out: Buffer, ivs?: Buffer): number;
  /** Seal and sendmmsg (JOB_FD, JOB_FAMILY, JOB_PORT, JOB_ADDR); returns packets sent. */
  espSealSend(data: Buffer, jobs: Uint32Array, n: number): number;
  /** Verify and decrypt in place; returns packets that verified. */
  espOpen(data: Buffer, jobs: Uint32Array, n: number): number;
}

/** The addon if it has the native ESP functions. */
export function espAddon(addon: FsespAddon | undefined): (FsespAddon & EspAddon) | undefined {
  const a = addon as (FsespAddon & Partial<EspAddon>) | undefined;
  return a && typeof a.espSaCreate === "function" && typeof a.espOpen === "function" && typeof a.espSealSend === "function"
    ? (a as FsespAddon & EspAddon)
    : undefined;
}

/** Create the native SA for one direction; returns its handle (> 0). */
export function createNativeSa(addon: EspAddon, sa: dataplane.SecurityAssociation, encrypt: boolean): number {
  const a = algoOf(sa);
  const key = Buffer.from(sa.encryptionKey.subarray(0, a.keyLen));
  const salt = a.aead ? Buffer.from(sa.encryptionKey.subarray(a.keyLen)) : undefined;
  const authKey = a.hmac ? Buffer.from(sa.integrityKey) : undefined;
  try {
    return addon.espSaCreate({ cipher: a.cipher, encrypt, esn: sa.esn, key, salt, hmac: a.hmac, authKey, icvLen: a.icvLen });
  } finally {
    key.fill(0);
    salt?.fill(0);
    authKey?.fill(0);
  }
}
