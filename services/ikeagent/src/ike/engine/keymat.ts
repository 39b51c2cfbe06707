/**
 * The engine's keymat (strongSwan's keymat_v2): thin glue over src/ike/crypto that keeps
 * the IKE SA's keys and answers the questions tasks ask (derive IKE/CHILD keys, AUTH
 * octets, PSK AUTH, NAT-D hashes). Keys never leave this object except to the dataplane.
 */
import { deriveChildKeys, deriveIkeKeys, deriveInitialIkeKeys, prf, rekeySkeyseed, type ChildSaKeys, type IkeSaKeys } from "../crypto/prf.js";
import { ikeSaCiphers } from "../crypto/sk.js";
import { pskAuthData } from "../crypto/auth.js";
import type { NegotiatedAlgorithms } from "../proposal.js";
import type { SkCipher } from "../wire/index.js";

const NO_KEY = Buffer.alloc(0);

export class Keymat {
  readonly alg: NegotiatedAlgorithms;
  #keys: IkeSaKeys;
  readonly out: SkCipher;
  readonly in: SkCipher;

  private constructor(alg: NegotiatedAlgorithms, keys: IkeSaKeys, weAreInitiator: boolean) {
    this.alg = alg;
    this.#keys = keys;
    const c = ikeSaCiphers({ encr: alg.encr, encrKeyBits: alg.encrKeyBits, integ: alg.integ }, keys, weAreInitiator);
    this.out = c.out;
    this.in = c.in;
  }

  /** RFC 7296 §2.14: SKEYSEED = prf(Ni | Nr, g^ir); {SK_d, SK_a*, SK_e*, SK_p*} = prf+(SKEYSEED, Ni | Nr | SPIi | SPIr). */
  static initial(alg: NegotiatedAlgorithms, shared: Buffer, ni: Buffer, nr: Buffer, spiI: Buffer, spiR: Buffer, weAreInitiator: boolean): Keymat {
    return new Keymat(alg, deriveInitialIkeKeys(alg, shared, ni, nr, spiI, spiR), weAreInitiator);
  }

  /** The same, from keys derived elsewhere (the responder's IKE_SA_INIT in a crypto worker, crypto/ke-offload.ts). */
  static fromKeys(alg: NegotiatedAlgorithms, keys: IkeSaKeys, weAreInitiator: boolean): Keymat {
    return new Keymat(alg, keys, weAreInitiator);
  }

  /** RFC 7296 §2.18: SKEYSEED = prf(SK_d (old), g^ir (new) | Ni | Nr) with the old SA's PRF. */
  rekeyed(alg: NegotiatedAlgorithms, shared: Buffer, ni: Buffer, nr: Buffer, spiI: Buffer, spiR: Buffer, weAreInitiator: boolean): Keymat {
    const seed = rekeySkeyseed(this.alg.prf, this.#keys.skD, shared, ni, nr);
    const keys = deriveIkeKeys(alg, seed, ni, nr, spiI, spiR);
    seed.fill(0);
    return new Keymat(alg, keys, weAreInitiator);
  }

  /** RFC 7296 §2.17: KEYMAT = prf+(SK_d, [g^ir (new) |] Ni | Nr). */
  childKeys(esp: NegotiatedAlgorithms, ni: Buffer, nr: Buffer, pfsShared?: Buffer): ChildSaKeys {
    return deriveChildKeys(this.alg.prf, this.#keys.skD, { encr: esp.encr, encrKeyBits: esp.encrKeyBits, integ: esp.integ }, ni, nr, pfsShared);
  }

  /**
   * RFC 7296 §2.15: the octets an AUTH signs or MACs:
   *   InitiatorSignedOctets = RealMessage1 | NonceRData | prf(SK_pi, RestOfInitIDPayload)
   *   ResponderSignedOctets = RealMessage2 | NonceIData | prf(SK_pr, RestOfRespIDPayload)
   * `ofInitiator`: whose AUTH (the initiator's uses SK_pi).
   */
  authOctets(ofInitiator: boolean, realMessage: Buffer, nonce: Buffer, idBody: Buffer): Buffer {
    const key = ofInitiator ? this.#keys.skPi : this.#keys.skPr;
    return Buffer.concat([realMessage, nonce, prf(this.alg.prf, key, idBody)]);
  }

  /** RFC 7296 §2.15: AUTH = prf( prf(Shared Secret, "Key Pad for IKEv2"), <SignedOctets>). */
  pskAuth(psk: Buffer, octets: Buffer): Buffer {
    return pskAuthData(this.alg.prf, psk, octets);
  }

  /**
   * IKE_AUTH is done: only SK_d (CHILD SA keys, IKE rekey) and the ciphers are needed from
   * now on; SK_pi/SK_pr (AUTH, §2.15) and the copies of SK_e/SK_a are wiped and dropped.
   */
  authDone(): void {
    const { skD } = this.#keys;
    for (const [k, v] of Object.entries(this.#keys)) if (k !== "skD") (v as Buffer).fill(0);
    this.#keys = { skD, skAi: NO_KEY, skAr: NO_KEY, skEi: NO_KEY, skEr: NO_KEY, skPi: NO_KEY, skPr: NO_KEY };
  }

  wipe(): void {
    for (const k of Object.values(this.#keys)) (k as Buffer).fill(0);
  }
}

/** RFC 7296 §2.23 NAT-D and §2.6 cookies come from the crypto library as they are. */
export { natDetectionHash as natdHash, CookieJar } from "../crypto/index.js";
