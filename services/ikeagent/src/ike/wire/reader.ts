/**
 * A bounds-checked cursor over a buffer. Every read checks the remaining length first;
 * `sub(n)` confines a sub-parser to exactly n bytes, and `end(what)` rejects leftovers.
 * Offsets in errors are absolute (relative to the outermost buffer).
 */
import { DecodeErrorCode, IkeDecodeError } from "./errors.js";

/** Cursor over buf[start, end). */
export class Reader {
  private pos: number;

  constructor(
    private readonly buf: Buffer,
    private readonly start = 0,
    private readonly limit = buf.length,
    /** Absolute offset of buf[0] in the outermost buffer (for error messages). */
    private readonly base = 0,
  ) {
    this.pos = start;
  }

  /** Absolute offset of the next unread byte. */
  get offset(): number {
    return this.base + this.pos;
  }

  /** Bytes not yet read. */
  get remaining(): number {
    return this.limit - this.pos;
  }

  private need(n: number, what: string): void {
    if (n > this.remaining) {
      throw new IkeDecodeError(DecodeErrorCode.TRUNCATED, `truncated ${what}: need ${n} bytes, have ${this.remaining}`, this.offset, { what });
    }
  }

  u8(what: string): number {
    this.need(1, what);
    return this.buf[this.pos++]!;
  }

  u16(what: string): number {
    this.need(2, what);
    const v = this.buf.readUInt16BE(this.pos);
    this.pos += 2;
    return v;
  }

  u32(what: string): number {
    this.need(4, what);
    const v = this.buf.readUInt32BE(this.pos);
    this.pos += 4;
    return v;
  }

  /** A copy of the next n bytes (copies so decoded objects never alias the input). */
  bytes(n: number, what: string): Buffer {
    this.need(n, what);
    const out = Buffer.from(this.buf.subarray(this.pos, this.pos + n));
    this.pos += n;
    return out;
  }

  /** Everything left, copied. */
  rest(): Buffer {
    return this.bytes(this.remaining, "rest");
  }

  /** A reader confined to the next n bytes; this reader skips past them. */
  sub(n: number, what: string): Reader {
    this.need(n, what);
    const r = new Reader(this.buf, this.pos, this.pos + n, this.base);
    this.pos += n;
    return r;
  }

  /**
   * Read a length field that counts its own header: returns the body length
   * (declared - headerLen), after checking declared >= headerLen.
   */
  bodyLength(declared: number, headerLen: number, what: string, at: number): number {
    if (declared < headerLen) {
      throw new IkeDecodeError(DecodeErrorCode.BAD_LENGTH, `${what} length ${declared} < minimum ${headerLen}`, at, { what, declared });
    }
    return declared - headerLen;
  }

  /** Reject leftover bytes. */
  end(what: string): void {
    if (this.remaining !== 0) {
      throw new IkeDecodeError(DecodeErrorCode.TRAILING_BYTES, `${this.remaining} trailing bytes in ${what}`, this.offset, { what });
    }
  }
}

/**
 * A growable output buffer for encoders: one buffer, doubled when full. (It used to keep a
 * list of chunks with a new Buffer per u8/u16/u32; that allocation was the encoder's
 * biggest cost and a good part of the responder's garbage per handshake.)
 */
export class Writer {
  private buf: Buffer;
  private len = 0;

  constructor(capacity = 128) {
    this.buf = Buffer.allocUnsafe(capacity);
  }

  get length(): number {
    return this.len;
  }

  private room(n: number): void {
    if (this.len + n <= this.buf.length) return;
    let cap = this.buf.length * 2;
    while (cap < this.len + n) cap *= 2;
    const next = Buffer.allocUnsafe(cap);
    this.buf.copy(next, 0, 0, this.len);
    this.buf = next;
  }

  u8(v: number): this {
    this.room(1);
    this.buf[this.len++] = v & 0xff;
    return this;
  }

  u16(v: number): this {
    this.room(2);
    this.buf.writeUInt16BE(v & 0xffff, this.len);
    this.len += 2;
    return this;
  }

  u32(v: number): this {
    this.room(4);
    this.buf.writeUInt32BE(v >>> 0, this.len);
    this.len += 4;
    return this;
  }

  raw(b: Uint8Array): this {
    this.room(b.byteLength);
    this.buf.set(b, this.len);
    this.len += b.byteLength;
    return this;
  }

  /** The bytes written so far (a view: later writes never change them). */
  toBuffer(): Buffer {
    return this.buf.subarray(0, this.len);
  }
}
