/**
 * Helpers for the static checks of deploy/, the Dockerfile and docs/ (test/ops/*.test.ts).
 * Nothing here needs root, a cluster, a Docker engine or the network.
 */
import { execFileSync, spawnSync } from "node:child_process";
import { existsSync, readFileSync, readdirSync, statSync } from "node:fs";
import { dirname, join, relative, resolve } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { parseAllDocuments } from "yaml";

/** The repository root (this file runs from test/dist/ops/). */
export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..", "..");
export const rel = (p: string): string => relative(ROOT, p);
export const readText = (p: string): string => readFileSync(join(ROOT, p), "utf8");

/** Which commands exist on this machine (tests skip with a printed reason when one is missing). */
export function have(cmd: string): boolean {
  return spawnSync("sh", ["-c", `command -v ${cmd}`], { stdio: "ignore" }).status === 0;
}

/** `kubectl kustomize` works offline (kustomize is built into kubectl). */
export function haveKustomize(): boolean {
  if (!have("kubectl")) return false;
  return spawnSync("kubectl", ["kustomize", "--help"], { stdio: "ignore" }).status === 0;
}

// ------------------------------------------------------------------ YAML ----

export interface K8sObject {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string; labels?: Record<string, string>; [k: string]: unknown };
  [k: string]: unknown;
}

/** Every YAML document of a file, parsed strictly (duplicate keys and syntax errors throw). */
export function parseYamlFile(file: string): unknown[] {
  const text = readFileSync(file, "utf8");
  const docs = parseAllDocuments(text, { uniqueKeys: true, prettyErrors: false });
  if (!Array.isArray(docs)) throw new Error(`${rel(file)}: not a YAML stream`);
  const out: unknown[] = [];
  for (const d of docs) {
    const err = d.errors[0];
    if (err) throw new Error(`${rel(file)}:${err.linePos?.[0]?.line ?? "?"}: ${err.message.split("\n")[0]}`);
    const v = d.toJS({ maxAliasCount: 100 }) as unknown;
    if (v !== null && v !== undefined) out.push(v);
  }
  return out;
}

export function listFiles(dir: string, pred: (f: string) => boolean): string[] {
  const abs = join(ROOT, dir);
  if (!existsSync(abs)) return [];
  const out: string[] = [];
  for (const e of readdirSync(abs)) {
    const p = join(abs, e);
    if (statSync(p).isDirectory()) out.push(...listFiles(join(dir, e), pred));
    else if (pred(p)) out.push(p);
  }
  return out.sort();
}

// ------------------------------------------------------------- kustomize ----

export interface Kustomization {
  namespace?: string;
  resources?: string[];
  patches?: Array<{ path?: string; patch?: string; target?: { group?: string; version?: string; kind?: string; name?: string } }>;
  secretGenerator?: Array<{ name: string; files?: string[]; literals?: string[]; envs?: string[] }>;
  configMapGenerator?: Array<{ name: string; files?: string[]; literals?: string[]; envs?: string[] }>;
  images?: Array<{ name: string; newName?: string; newTag?: string; digest?: string }>;
  [k: string]: unknown;
}

export function loadKustomization(dir: string): Kustomization {
  const file = ["kustomization.yaml", "kustomization.yml", "Kustomization"].map((f) => join(dir, f)).find((f) => existsSync(f));
  if (!file) throw new Error(`${rel(dir)}: no kustomization.yaml`);
  const [k] = parseYamlFile(file);
  return k as Kustomization;
}

/**
 * A small resolver for what our kustomizations use: resources (files and directories,
 * recursively), namespace, images, generators (names without the hash suffix) and
 * patches (each must target an object that exists). It reports problems instead of
 * throwing, so a test lists them all. `kubectl kustomize` does the real build where it
 * exists; this resolver runs everywhere.
 */
export function resolveKustomization(dir: string, problems: string[] = []): { objects: K8sObject[]; problems: string[] } {
  const k = loadKustomization(dir);
  let objects: K8sObject[] = [];
  for (const r of k.resources ?? []) {
    const p = resolve(dir, r);
    if (!existsSync(p)) {
      problems.push(`${rel(dir)}/kustomization.yaml: resource ${r} does not exist`);
      continue;
    }
    if (statSync(p).isDirectory()) objects.push(...resolveKustomization(p, problems).objects);
    else objects.push(...(parseYamlFile(p) as K8sObject[]));
  }
  for (const g of [...(k.secretGenerator ?? []).map((x) => ({ ...x, kind: "Secret" })), ...(k.configMapGenerator ?? []).map((x) => ({ ...x, kind: "ConfigMap" }))]) {
    for (const f of [...(g.files ?? []), ...(g.envs ?? [])]) {
      const path = f.includes("=") ? f.slice(f.indexOf("=") + 1) : f;
      if (!existsSync(resolve(dir, path))) problems.push(`${rel(dir)}/kustomization.yaml: ${g.kind} generator ${g.name}: file ${path} does not exist`);
    }
    objects.push({ apiVersion: "v1", kind: g.kind, metadata: { name: g.name } });
  }
  for (const p of k.patches ?? []) {
    let target = p.target;
    if (p.path) {
      const file = resolve(dir, p.path);
      if (!existsSync(file)) {
        problems.push(`${rel(dir)}/kustomization.yaml: patch ${p.path} does not exist`);
        continue;
      }
      if (!target) {
        const [doc] = parseYamlFile(file) as K8sObject[];
        target = { kind: doc?.kind, name: doc?.metadata?.name };
      }
    }
    if (!target?.kind || !target.name) {
      problems.push(`${rel(dir)}/kustomization.yaml: a patch without a target kind and name`);
      continue;
    }
    const hit = objects.some((o) => o.kind === target!.kind && o.metadata?.name === target!.name && (!target!.group || o.apiVersion.startsWith(target!.group + "/")));
    if (!hit) problems.push(`${rel(dir)}/kustomization.yaml: patch targets ${target.kind}/${target.name}, which is not among the resources`);
  }
  if (k.namespace) {
    objects = objects.map((o) => (o.kind === "Namespace" ? o : { ...o, metadata: { ...o.metadata, namespace: k.namespace } }));
  }
  return { objects, problems };
}

/** `kubectl kustomize DIR`, parsed. */
export function kubectlKustomize(dir: string): K8sObject[] {
  const out = execFileSync("kubectl", ["kustomize", dir], { encoding: "utf8", maxBuffer: 64 << 20 });
  return parseAllDocuments(out).map((d) => d.toJS() as K8sObject).filter(Boolean);
}

// ------------------------------------------------------------ pod specs ----

export interface Container {
  name: string;
  image?: string;
  command?: string[];
  args?: string[];
  ports?: Array<{ name?: string; containerPort: number; hostPort?: number; protocol?: string }>;
  env?: Array<{ name: string; value?: string; valueFrom?: unknown }>;
  livenessProbe?: Probe;
  readinessProbe?: Probe;
  startupProbe?: Probe;
  resources?: { requests?: Record<string, string>; limits?: Record<string, string> };
  securityContext?: {
    privileged?: boolean;
    allowPrivilegeEscalation?: boolean;
    readOnlyRootFilesystem?: boolean;
    runAsUser?: number;
    runAsNonRoot?: boolean;
    capabilities?: { add?: string[]; drop?: string[] };
  };
  volumeMounts?: Array<{ name: string; mountPath: string; readOnly?: boolean }>;
}
export interface Probe {
  httpGet?: { path: string; port: number | string };
}
export interface PodSpec {
  containers: Container[];
  initContainers?: Container[];
  volumes?: Array<{ name: string; emptyDir?: unknown; hostPath?: { path: string; type?: string }; secret?: { secretName: string; optional?: boolean }; configMap?: { name: string } }>;
  hostNetwork?: boolean;
  serviceAccountName?: string;
  automountServiceAccountToken?: boolean;
  securityContext?: Record<string, unknown>;
  nodeSelector?: Record<string, string>;
}
export interface Workload {
  obj: K8sObject;
  labels: Record<string, string>;
  spec: PodSpec;
}

export function workloads(objects: K8sObject[]): Workload[] {
  const out: Workload[] = [];
  for (const o of objects) {
    if (!["Deployment", "StatefulSet", "DaemonSet"].includes(o.kind)) continue;
    const t = (o as unknown as { spec: { template: { metadata?: { labels?: Record<string, string> }; spec: PodSpec } } }).spec.template;
    out.push({ obj: o, labels: t.metadata?.labels ?? {}, spec: t.spec });
  }
  return out;
}

/** The fleetswan service a container runs (its first argument), or undefined for others. */
export function fleetswanService(c: Container): string | undefined {
  if (!c.image?.includes("fleetswan") || c.command) return undefined;
  return c.args?.[0];
}

/** Resolves a named port of a container to its number. */
export function portNumber(c: Container, port: number | string): number | undefined {
  if (typeof port === "number") return port;
  return c.ports?.find((p) => p.name === port)?.containerPort;
}

export function matches(selector: Record<string, string> | undefined, labels: Record<string, string>): boolean {
  if (!selector) return false;
  return Object.entries(selector).every(([k, v]) => labels[k] === v);
}

export function matchesExpr(
  sel: { matchLabels?: Record<string, string>; matchExpressions?: Array<{ key: string; operator: string; values?: string[] }> } | undefined,
  labels: Record<string, string>,
): boolean {
  if (!sel) return false;
  const okLabels = Object.entries(sel.matchLabels ?? {}).every(([k, v]) => labels[k] === v);
  const okExpr = (sel.matchExpressions ?? []).every((e) => {
    const v = labels[e.key];
    if (e.operator === "In") return v !== undefined && (e.values ?? []).includes(v);
    if (e.operator === "NotIn") return v === undefined || !(e.values ?? []).includes(v);
    if (e.operator === "Exists") return v !== undefined;
    if (e.operator === "DoesNotExist") return v === undefined;
    return false;
  });
  return okLabels && okExpr;
}

// ----------------------------------------------------------- the code ----

/** packages/common/src/defaults.ts, as built (dist). */
export async function loadDefaults(): Promise<{
  METRICS_PORT: Record<string, number>;
  DATAPLANE_SOCKET: string;
  IKEAGENT_SOCKET: string;
  AGENT_STATE_DIR: string;
  CONFIG_DIR: string;
  IKE_PORT: number;
  NATT_PORT: number;
}> {
  return (await import("@fleetswan/common")) as never;
}

export interface CliCommandInfo {
  name: string;
  usage: string;
}

/**
 * The `fleetswan` subcommands that the CLI registers (packages/cli, as built). Returns
 * undefined with a reason when the CLI is not built; the test workspace does not reference
 * the CLI package, so it is loaded from its dist at run time.
 */
export async function loadCliCommands(): Promise<{ commands?: CliCommandInfo[]; reason?: string }> {
  const main = join(ROOT, "packages", "cli", "dist", "src", "main.js");
  if (!existsSync(main)) return { reason: "packages/cli is not built (npm run build)" };
  try {
    const m = (await import(pathToFileURL(main).href)) as { allCommands: CliCommandInfo[] };
    return { commands: m.allCommands };
  } catch (err) {
    return { reason: `cannot load packages/cli: ${(err as Error).message.split("\n")[0]}` };
  }
}

/**
 * Whether services/NAME/src/index.ts exports any command yet (`commands: CliCommand[] = []`
 * is the skeleton every service started from).
 */
export function registersAnything(service: string): boolean {
  const index = join(ROOT, "services", service, "src", "index.ts");
  if (!existsSync(index)) return false;
  return !/export const commands:\s*CliCommand\[\]\s*=\s*\[\s*\]/.test(readFileSync(index, "utf8"));
}

/**
 * Problems with one invocation of the CLI (`fleetswan ARGS`): the command must be
 * registered and every --flag must appear in its usage text.
 */
export function checkInvocation(where: string, args: string[], commands: CliCommandInfo[]): string[] {
  const [name, ...rest] = args;
  const cmd = commands.find((c) => c.name === name);
  if (!cmd) return [`${where}: "fleetswan ${name}" is not a registered command (have: ${commands.map((c) => c.name).join(", ")})`];
  const problems: string[] = [];
  for (const a of rest) {
    const m = /^(--[a-z0-9-]+)/.exec(a);
    if (m && !new RegExp(`${m[1]}(?![a-z0-9-])`).test(cmd.usage)) problems.push(`${where}: "fleetswan ${name}" has no option ${m[1]} (its usage does not mention it)`);
  }
  return problems;
}

// ------------------------------------------------------------ metrics ----

export interface CodeMetric {
  name: string;
  type: "counter" | "gauge" | "histogram" | "summary";
  labels: string[];
  file: string;
}

/**
 * Metrics registered by the services: every prom-client constructor
 * (`new Counter|Gauge|Histogram|Summary({ name: "fleetswan_...", labelNames: [...] })`)
 * in services/star/src and packages/star/src.
 */
export function codeMetrics(): CodeMetric[] {
  const files = [
    ...readdirSync(join(ROOT, "services")).flatMap((s) => listFiles(join("services", s, "src"), (f) => f.endsWith(".ts") && !f.endsWith(".d.ts"))),
    ...readdirSync(join(ROOT, "packages")).flatMap((s) => listFiles(join("packages", s, "src"), (f) => f.endsWith(".ts") && !f.endsWith(".d.ts") && !f.includes("/gen/"))),
  ];
  const out: CodeMetric[] = [];
  const ctor = /new\s+(?:client\.|prom\.)?(Counter|Gauge|Histogram|Summary)\s*(?:<[^>]*>)?\s*\(\s*\{/g;
  for (const file of files) {
    const text = readFileSync(file, "utf8");
    for (const m of text.matchAll(ctor)) {
      // The object literal: up to the matching closing brace.
      let depth = 0;
      let end = m.index! + m[0].length - 1;
      for (; end < text.length; end++) {
        if (text[end] === "{") depth++;
        else if (text[end] === "}" && --depth === 0) break;
      }
      const body = text.slice(m.index! + m[0].length - 1, end + 1);
      const name = /\bname:\s*["'`](fleetswan_[a-z0-9_]+)["'`]/.exec(body)?.[1];
      if (!name) continue;
      const labelText = /\blabelNames:\s*\[([^\]]*)\]/.exec(body)?.[1] ?? "";
      const labels = [...labelText.matchAll(/["'`]([a-zA-Z_][a-zA-Z0-9_]*)["'`]/g)].map((x) => x[1]!).sort();
      out.push({ name, type: m[1]!.toLowerCase() as CodeMetric["type"], labels, file: rel(file) });
    }
  }
  return out;
}

export interface DocMetric {
  name: string;
  type: string;
  labels: string[];
  line: number;
  row: string;
}

/**
 * docs/metrics.md: one table row per metric,
 * | `name` | type | `label` (values), ... or - | meaning | `PromQL` |
 */
export function docMetrics(): DocMetric[] {
  const lines = readText("docs/metrics.md").split("\n");
  const out: DocMetric[] = [];
  lines.forEach((row, i) => {
    const m = /^\|\s*`([a-zA-Z_:][a-zA-Z0-9_:]*)`\s*\|([^|]*)\|([^|]*)\|/.exec(row);
    if (!m) return;
    const labels = [...m[3]!.matchAll(/`([a-zA-Z_][a-zA-Z0-9_]*)`/g)].map((x) => x[1]!).sort();
    out.push({ name: m[1]!, type: m[2]!.trim(), labels, line: i + 1, row });
  });
  return out;
}

const PROMQL_WORDS = new Set([
  "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset", "atan2",
  "inf", "nan", "le", "quantile",
]);

/**
 * Metric names used in a PromQL expression: identifiers that are not functions, keywords,
 * label names (inside {} or by/without/on/ignoring lists), durations or strings.
 */
export function promqlMetricNames(expr: string): string[] {
  let e = expr.replace(/"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`/g, '""'); // strings
  e = e.replace(/\{[^}]*\}/g, "{}"); // label matchers
  e = e.replace(/\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)/g, " "); // label lists
  e = e.replace(/\[[^\]]*\]/g, "[]"); // ranges
  const names = new Set<string>();
  for (const m of e.matchAll(/(?<![\w.$])([a-zA-Z_:][a-zA-Z0-9_:]*)(?![\w])/g)) {
    const id = m[1]!;
    const after = e.slice(m.index! + id.length).trimStart();
    if (after.startsWith("(")) continue; // a function
    if (PROMQL_WORDS.has(id.toLowerCase())) continue;
    if (/^\d/.test(id)) continue;
    names.add(id);
  }
  return [...names];
}

/** A histogram's or summary's series (_bucket, _sum, _count) map to the metric's name. */
export function baseMetricName(series: string, known: Set<string>): string {
  if (known.has(series)) return series;
  for (const suf of ["_bucket", "_sum", "_count"]) {
    if (series.endsWith(suf) && known.has(series.slice(0, -suf.length))) return series.slice(0, -suf.length);
  }
  return series;
}
