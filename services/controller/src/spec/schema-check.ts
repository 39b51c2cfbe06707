import type { FieldPath } from "@fleetswan/common";
import type { JsonSchema } from "./schema.js";

export interface SchemaProblem {
  path: (string | number)[];
  message: string;
}

function typeOf(v: unknown): string {
  if (v === null) return "null";
  if (Array.isArray(v)) return "list";
  if (typeof v === "number") return Number.isInteger(v) ? "integer" : "number";
  if (typeof v === "object") return "mapping";
  return typeof v;
}

const TYPE_NAMES: Record<string, string> = { object: "mapping", array: "list", string: "string", integer: "integer", number: "number", boolean: "boolean" };

function matchesType(v: unknown, t: NonNullable<JsonSchema["type"]>): boolean {
  switch (t) {
    case "object": return typeof v === "object" && v !== null && !Array.isArray(v);
    case "array": return Array.isArray(v);
    case "string": return typeof v === "string";
    case "integer": return typeof v === "number" && Number.isInteger(v);
    case "number": return typeof v === "number";
    case "boolean": return typeof v === "boolean";
  }
}

const show = (v: unknown): string => (typeof v === "string" ? JSON.stringify(v) : typeOf(v) === "mapping" || typeOf(v) === "list" ? `a ${typeOf(v)}` : String(v));

/**
 * Validate `value` against the subset of JSON Schema that FLEET_SPEC_SCHEMA uses
 * ($ref to $defs, type, properties, additionalProperties, propertyNames, required,
 * enum, const, items, min/maxItems, uniqueItems, pattern, min/maxLength,
 * minimum/maximum, anyOf). Every problem carries the path of the field.
 */
export function checkSchema(root: JsonSchema, value: unknown): SchemaProblem[] {
  const out: SchemaProblem[] = [];
  walk(root, root, value, [], out);
  return out;
}

const regexCache = new Map<string, RegExp>();
const re = (p: string): RegExp => {
  let r = regexCache.get(p);
  if (!r) regexCache.set(p, (r = new RegExp(p)));
  return r;
};

function resolve(root: JsonSchema, s: JsonSchema): JsonSchema {
  if (!s.$ref) return s;
  const name = s.$ref.replace(/^#\/\$defs\//, "");
  const target = root.$defs?.[name];
  if (!target) throw new Error(`schema: unknown $ref ${s.$ref}`);
  const { $ref: _r, ...rest } = s;
  return { ...resolve(root, target), ...rest };
}

function walk(root: JsonSchema, schema: JsonSchema, v: unknown, path: (string | number)[], out: SchemaProblem[]): void {
  const s = resolve(root, schema);
  if (s.anyOf) {
    const tries = s.anyOf.map((alt) => {
      const p: SchemaProblem[] = [];
      walk(root, alt, v, path, p);
      return p;
    });
    if (tries.some((p) => p.length === 0)) return;
    out.push({ path, message: `${show(v)} is not valid here${s.description ? ` (${s.description})` : ""}` });
    return;
  }
  if (s.const !== undefined && v !== s.const) {
    out.push({ path, message: `must be ${JSON.stringify(s.const)}, got ${show(v)}` });
    return;
  }
  if (s.enum && !s.enum.includes(v as string)) {
    out.push({ path, message: `must be one of ${s.enum.join(", ")}; got ${show(v)}` });
    return;
  }
  if (s.type && !matchesType(v, s.type)) {
    out.push({ path, message: `expected a ${TYPE_NAMES[s.type]}, got ${show(v)}` });
    return;
  }
  if (typeof v === "string") {
    if (s.minLength !== undefined && v.length < s.minLength) out.push({ path, message: `must not be empty` });
    if (s.maxLength !== undefined && v.length > s.maxLength) out.push({ path, message: `longer than ${s.maxLength} characters` });
    if (s.pattern && !re(s.pattern).test(v)) out.push({ path, message: `${show(v)} does not match ${s.pattern}` });
  }
  if (typeof v === "number") {
    if (s.minimum !== undefined && v < s.minimum) out.push({ path, message: `${v} is below the minimum ${s.minimum}` });
    if (s.maximum !== undefined && v > s.maximum) out.push({ path, message: `${v} is above the maximum ${s.maximum}` });
  }
  if (Array.isArray(v)) {
    if (s.minItems !== undefined && v.length < s.minItems) out.push({ path, message: `needs at least ${s.minItems} item${s.minItems === 1 ? "" : "s"}, got ${v.length}` });
    if (s.maxItems !== undefined && v.length > s.maxItems) out.push({ path, message: `takes at most ${s.maxItems} items, got ${v.length}` });
    if (s.uniqueItems) {
      const seen = new Set<string>();
      v.forEach((item, i) => {
        const k = JSON.stringify(item);
        if (seen.has(k)) out.push({ path: [...path, i], message: `duplicate item ${show(item)}` });
        seen.add(k);
      });
    }
    if (s.items) v.forEach((item, i) => walk(root, s.items!, item, [...path, i], out));
  }
  if (typeof v === "object" && v !== null && !Array.isArray(v)) {
    const obj = v as Record<string, unknown>;
    for (const r of s.required ?? []) {
      if (!(r in obj)) out.push({ path, message: `missing required field "${r}"` });
    }
    for (const [k, child] of Object.entries(obj)) {
      if (s.propertyNames?.pattern && !re(s.propertyNames.pattern).test(k)) {
        out.push({ path: [...path, k], message: `name ${JSON.stringify(k)} does not match ${s.propertyNames.pattern}` });
      }
      const prop = s.properties?.[k];
      if (prop) walk(root, prop, child, [...path, k], out);
      else if (s.additionalProperties === false) {
        const allowed = Object.keys(s.properties ?? {});
        out.push({ path: [...path, k], message: `unknown field "${k}"${allowed.length ? ` (allowed: ${allowed.join(", ")})` : ""}` });
      } else if (typeof s.additionalProperties === "object") walk(root, s.additionalProperties, child, [...path, k], out);
    }
  }
}

export type { FieldPath };
