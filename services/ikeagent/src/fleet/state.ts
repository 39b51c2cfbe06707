/**
 * The agent's persistent state (AGENT_STATE_DIR): the last good view and the sealed
 * secrets exactly as keymgr sealed them (still sealed on disk), and the enrollment
 * record. Writes are atomic (temp file + rename), files mode 0600.
 */
import { existsSync, mkdirSync, readFileSync, readdirSync, renameSync, unlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { fleet } from "@fleetswan/proto";

export class AgentState {
  readonly #dir: string;
  readonly #secretsDir: string;

  constructor(dir: string) {
    this.#dir = dir;
    this.#secretsDir = join(dir, "sealed");
    mkdirSync(this.#secretsDir, { recursive: true, mode: 0o700 });
  }

  #write(file: string, data: Uint8Array | string): void {
    const tmp = `${file}.tmp-${process.pid}`;
    writeFileSync(tmp, data, { mode: 0o600 });
    renameSync(tmp, file);
  }

  saveView(v: fleet.GatewayView): void {
    this.#write(join(this.#dir, "view.pb"), fleet.GatewayView.encode(v).finish());
  }

  loadView(): fleet.GatewayView | undefined {
    const f = join(this.#dir, "view.pb");
    return existsSync(f) ? fleet.GatewayView.decode(readFileSync(f)) : undefined;
  }

  saveSealed(ref: string, s: fleet.SealedSecret): void {
    this.#write(join(this.#secretsDir, `${ref}.pb`), fleet.SealedSecret.encode(s).finish());
  }

  deleteSealed(ref: string): void {
    const f = join(this.#secretsDir, `${ref}.pb`);
    if (existsSync(f)) unlinkSync(f);
  }

  loadSealed(): Map<string, fleet.SealedSecret> {
    const out = new Map<string, fleet.SealedSecret>();
    for (const f of readdirSync(this.#secretsDir)) {
      if (!f.endsWith(".pb")) continue;
      try {
        out.set(f.slice(0, -3), fleet.SealedSecret.decode(readFileSync(join(this.#secretsDir, f))));
      } catch {
        /* a damaged file: keymgr's copy replaces it on the next sync */
      }
    }
    return out;
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
