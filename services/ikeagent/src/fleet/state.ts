/**
 * The agent's persistent state (AGENT_STATE_DIR): the last good view and the sealed
 * secrets exactly as keymgr sealed them (still sealed on disk), and the enrollment
 * record. Files mode 0600.
 *
 * The view (`view.pb`) and each blob (`sealed/<ref>.pb`) are kept in two slots,
 * `<name>.0` and `<name>.1`, written alternately in place: a header (magic "FSS1",
 * sequence number, length, CRC-32 of sequence and payload) and the protobuf. Loading
 * takes the valid slot with the highest sequence, so a write torn by a crash leaves the
 * previous value in force (what temp file + rename gave, for about 20 µs of system calls
 * instead of 300: creating and renaming a file per view change was most of an agent's CPU
 * when 1,000 gateways change at once). A `<name>` file of the older format (one file,
 * written with rename) is still read, and removed by the first write of the name.
 * The enrollment record is written rarely: temp file + rename.
 */
import { closeSync, constants, existsSync, ftruncateSync, mkdirSync, openSync, readFileSync, readdirSync, renameSync, unlinkSync, writeFileSync, writeSync } from "node:fs";
import { join } from "node:path";
import { crc32 } from "node:zlib";
import { fleet } from "@fleetswan/proto";

const MAGIC = 0x46535331; // "FSS1"
const HEADER = 20; // magic u32, sequence u64, length u32, crc32 u32 (big endian)

interface Slots {
  /** Sequence of the newest valid slot (0n: none). */
  seq: bigint;
  /** The slot the next write goes to (never the one holding the newest value). */
  next: 0 | 1;
  /** A file of the older single-file format exists (removed after the first write). */
  legacy: boolean;
}

function unlinkIfExists(file: string): void {
  try {
    unlinkSync(file);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== "ENOENT") throw e;
  }
}

/** A slot file's payload and sequence, or undefined if missing, torn or damaged. */
function readSlot(file: string): { seq: bigint; data: Buffer } | undefined {
  let b: Buffer;
  try {
    b = readFileSync(file);
  } catch {
    return undefined;
  }
  if (b.length < HEADER || b.readUInt32BE(0) !== MAGIC) return undefined;
  const len = b.readUInt32BE(12);
  if (HEADER + len > b.length) return undefined;
  const data = b.subarray(HEADER, HEADER + len);
  if (crc32(data, crc32(b.subarray(4, 12))) !== b.readUInt32BE(16)) return undefined;
  return { seq: b.readBigUInt64BE(4), data };
}

export class AgentState {
  readonly #dir: string;
  readonly #secretsDir: string;
  readonly #slots = new Map<string, Slots>();

  constructor(dir: string) {
    this.#dir = dir;
    this.#secretsDir = join(dir, "sealed");
    mkdirSync(this.#secretsDir, { recursive: true, mode: 0o700 });
  }

  /** The newest value stored under `base` (slots first, then a file of the older format). */
  #load(base: string): Buffer | undefined {
    const s0 = readSlot(`${base}.0`);
    const s1 = readSlot(`${base}.1`);
    const legacy = existsSync(base);
    const best = s0 && (!s1 || s0.seq > s1.seq) ? 0 : s1 ? 1 : undefined;
    if (best === undefined) {
      this.#slots.set(base, { seq: 0n, next: 0, legacy });
      return legacy ? readFileSync(base) : undefined;
    }
    const slot = best === 0 ? s0! : s1!;
    this.#slots.set(base, { seq: slot.seq, next: best === 0 ? 1 : 0, legacy });
    return slot.data;
  }

  #save(base: string, data: Uint8Array): void {
    let st = this.#slots.get(base);
    if (!st) {
      this.#load(base);
      st = this.#slots.get(base)!;
    }
    const seq = st.seq + 1n;
    const buf = Buffer.allocUnsafe(HEADER + data.length);
    buf.writeUInt32BE(MAGIC, 0);
    buf.writeBigUInt64BE(seq, 4);
    buf.writeUInt32BE(data.length, 12);
    buf.set(data, HEADER);
    buf.writeUInt32BE(crc32(buf.subarray(HEADER), crc32(buf.subarray(4, 12))), 16);
    const fd = openSync(`${base}.${st.next}`, constants.O_WRONLY | constants.O_CREAT, 0o600);
    try {
      writeSync(fd, buf, 0, buf.length, 0);
      ftruncateSync(fd, buf.length);
    } finally {
      closeSync(fd);
    }
    st.seq = seq;
    st.next = st.next === 0 ? 1 : 0;
    if (st.legacy) {
      unlinkIfExists(base);
      st.legacy = false;
    }
  }

  #delete(base: string): void {
    for (const f of [base, `${base}.0`, `${base}.1`]) unlinkIfExists(f);
    this.#slots.delete(base);
  }

  /** Store the view (a message, or the bytes of its encoding as received). */
  saveView(v: fleet.GatewayView | Uint8Array): void {
    this.#save(join(this.#dir, "view.pb"), v instanceof Uint8Array ? v : fleet.GatewayView.encode(v).finish());
  }

  loadView(): fleet.GatewayView | undefined {
    const b = this.#load(join(this.#dir, "view.pb"));
    return b ? fleet.GatewayView.decode(b) : undefined;
  }

  /** Store a sealed blob (a message, or the bytes of its encoding as received). */
  saveSealed(ref: string, s: fleet.SealedSecret | Uint8Array): void {
    this.#save(join(this.#secretsDir, `${ref}.pb`), s instanceof Uint8Array ? s : fleet.SealedSecret.encode(s).finish());
  }

  deleteSealed(ref: string): void {
    this.#delete(join(this.#secretsDir, `${ref}.pb`));
  }

  loadSealed(): Map<string, fleet.SealedSecret> {
    const out = new Map<string, fleet.SealedSecret>();
    const refs = new Set<string>();
    for (const f of readdirSync(this.#secretsDir)) {
      const m = /^(.+)\.pb(?:\.[01])?$/.exec(f);
      if (m) refs.add(m[1]!);
    }
    for (const ref of refs) {
      try {
        const b = this.#load(join(this.#secretsDir, `${ref}.pb`));
        if (b) out.set(ref, fleet.SealedSecret.decode(b));
      } catch {
        /* a damaged file: keymgr's copy replaces it on the next sync */
      }
    }
    return out;
  }

  #write(file: string, data: Uint8Array | string): void {
    const tmp = `${file}.tmp-${process.pid}`;
    writeFileSync(tmp, data, { mode: 0o600 });
    renameSync(tmp, file);
  }

  saveEnrolled(keyId: string, gateway: string): void {
    this.#write(join(this.#dir, "enrolled.json"), JSON.stringify({ gateway, keyId, enrolledAt: new Date().toISOString() }) + "\n");
  }

  enrolledKeyId(): string | undefined {
    const f = join(this.#dir, "enrolled.json");
    if (!existsSync(f)) return undefined;
    try {
      return (JSON.parse(readFileSync(f, "utf8")) as { keyId?: string }).keyId;
    } catch {
      return undefined;
    }
  }
}
