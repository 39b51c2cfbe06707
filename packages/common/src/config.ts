import { readFileSync } from "node:fs";
import { LineCounter, parseDocument, isNode, type Document } from "yaml";
import { ConfigError } from "./errors.js";

/** A path into a config document: ["connections", 2, "esp_proposals"]. */
export type FieldPath = ReadonlyArray<string | number>;

/**
 * A parsed YAML document that can say where each field came from, so every error
 * reads "file:line:field: what is wrong".
 */
export class YamlSource {
  readonly data: unknown;
  readonly #doc: Document;
  readonly #lines: LineCounter;

  constructor(readonly file: string, text: string) {
    this.#lines = new LineCounter();
    this.#doc = parseDocument(text, { lineCounter: this.#lines, prettyErrors: false, uniqueKeys: true });
    const first = this.#doc.errors[0];
    if (first) {
      const pos = first.linePos?.[0];
      throw new ConfigError(first.message.split("\n")[0] ?? "invalid YAML", `${file}:${pos?.line ?? 1}`);
    }
    this.data = this.#doc.toJS({ maxAliasCount: 100 });
  }

  static fromFile(file: string): YamlSource {
    let text: string;
    try {
      text = readFileSync(file, "utf8");
    } catch (err) {
      throw new ConfigError(`cannot read file (${(err as NodeJS.ErrnoException).code ?? String(err)})`, file);
    }
    return new YamlSource(file, text);
  }

  /** "file:line:a.b[2].c" for a field path (the nearest existing parent's line if absent). */
  where(path: FieldPath): string {
    let line = 1;
    for (let n = path.length; n >= 0; n--) {
      const node = n === 0 ? this.#doc.contents : this.#doc.getIn(path.slice(0, n), true);
      if (isNode(node) && node.range) {
        line = this.#lines.linePos(node.range[0]).line;
        break;
      }
    }
    return `${this.file}:${line}:${formatPath(path)}`;
  }

  /** A ConfigError located at the field. */
  error(path: FieldPath, message: string, details: Record<string, unknown> = {}): ConfigError {
    return new ConfigError(message, this.where(path), details);
  }
}

/** a.b[2].c */
export function formatPath(path: FieldPath): string {
  let out = "";
  for (const p of path) out += typeof p === "number" ? `[${p}]` : out ? `.${p}` : p;
  return out;
}
