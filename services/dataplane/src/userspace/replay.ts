/**
 * Anti-replay window (RFC 4303 §3.4.3, Appendix A) as a bitmap of 32-bit words that is
 * advanced block by block (RFC 6479): the bitmap holds one block more than the window so
 * that a window advance only clears whole words and never shifts.
 *
 * Sequence numbers are kept as JavaScript numbers (exact up to 2^53, i.e. far beyond
 * what an SA carries before its lifetime ends). With ESN (RFC 4303 §2.2.1) only the low
 * 32 bits are on the wire; `check` infers the high 32 bits as in Appendix A2.2.
 *
 * Use: `const seq = w.check(low)`; if seq < 0 drop (replay / too old); else verify the
 * ICV with the high bits of `seq`, and only when it verifies call `w.accept(seq)`
 * (the window must never move for a packet that failed integrity, §3.4.3).
 */
const TWO32 = 0x100000000;

export const REPLAY_OK = 0;
/** Results of check(): a negative number is a reason to drop. */
export const REPLAY_DUPLICATE = -1;
export const REPLAY_TOO_OLD = -2;
/** Sequence number 0 without ESN (the first packet is 1, §3.3.3). */
export const REPLAY_ZERO = -3;

export class ReplayWindow {
  /** Highest authenticated sequence number so far (full 64-bit value), 0 = none. */
  top = 0;
  private readonly bitmap: Uint32Array;
  private readonly wordMask: number;

  /**
   * @param size window in packets; 0 turns the check off (every packet is accepted, the
   *   highest sequence number is still tracked to infer ESN high bits).
   * @param esn extended sequence numbers.
   */
  constructor(readonly size: number, readonly esn: boolean) {
    const words = size === 0 ? 1 : Math.ceil(size / 32) + 1;
    let n = 1;
    while (n < words) n <<= 1;
    this.bitmap = new Uint32Array(n);
    this.wordMask = n - 1;
  }

  /**
   * Full sequence number for the wire's low 32 bits, or a negative REPLAY_* reason.
   * Does not change the window.
   */
  check(low: number): number {
    low >>>= 0;
    let seq: number;
    if (!this.esn) {
      if (low === 0) return REPLAY_ZERO;
      seq = low;
    } else {
      // RFC 4303 Appendix A2.2: infer Seqh from the window position.
      const w = Math.max(this.size, 1);
      const tl = this.top % TWO32;
      const th = Math.floor(this.top / TWO32);
      if (tl >= w - 1) {
        // window lies within one sequence number subspace
        seq = low >= tl - w + 1 ? th * TWO32 + low : (th + 1) * TWO32 + low;
      } else {
        // window spans two subspaces
        const bottom = (tl - w + 1 + TWO32) % TWO32;
        seq = low >= bottom ? (th - 1) * TWO32 + low : th * TWO32 + low;
        if (seq < 0) seq = low; // before the first wrap there is no lower subspace
      }
      if (seq === 0) return REPLAY_ZERO;
    }
    if (this.size === 0) return seq;
    if (seq > this.top) return seq;
    if (seq + this.size <= this.top) return REPLAY_TOO_OLD;
    const bit = seq % 32;
    const word = Math.floor(seq / 32) & this.wordMask;
    return (this.bitmap[word]! >>> bit) & 1 ? REPLAY_DUPLICATE : seq;
  }

  /** Mark `seq` (from check(), after the ICV verified) as received; advance the window. */
  accept(seq: number): void {
    if (seq > this.top) {
      const topBlock = Math.floor(this.top / 32);
      const newBlock = Math.floor(seq / 32);
      const diff = Math.min(newBlock - topBlock, this.bitmap.length);
      for (let i = 1; i <= diff; i++) this.bitmap[(topBlock + i) & this.wordMask] = 0;
      this.top = seq;
    }
    if (this.size === 0) return;
    const word = Math.floor(seq / 32) & this.wordMask;
    this.bitmap[word] = (this.bitmap[word]! | (1 << (seq % 32))) >>> 0;
  }
}
