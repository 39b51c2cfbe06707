/**
 * Static checks of the Dockerfile (no Docker engine here): stages, COPY sources, ports,
 * users and the entry point agree with the repository and packages/common/src/defaults.ts.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { ROOT, loadDefaults, readText } from "./lib.js";

interface Instr {
  op: string;
  args: string;
  line: number;
}

/** Instructions with continuation lines joined and comments dropped. */
function parseDockerfile(text: string): Instr[] {
  const out: Instr[] = [];
  const lines = text.split("\n");
  for (let i = 0; i < lines.length; i++) {
    let l = lines[i]!;
    if (/^\s*(#|$)/.test(l)) continue;
    const start = i + 1;
    while (l.endsWith("\\") && i + 1 < lines.length) {
      i++;
      const next = lines[i]!;
      if (/^\s*#/.test(next)) continue;
      l = l.slice(0, -1) + " " + next.trim();
    }
    const m = /^\s*([A-Za-z]+)\s+(.*)$/.exec(l);
    if (m) out.push({ op: m[1]!.toUpperCase(), args: m[2]!.trim(), line: start });
  }
  return out;
}

const instrs = parseDockerfile(readText("Dockerfile"));
const stages: Array<{ name?: string; from: string; instrs: Instr[] }> = [];
for (const ins of instrs) {
  if (ins.op === "FROM") {
    const m = /^(\S+)(?:\s+AS\s+(\S+))?/i.exec(ins.args)!;
    stages.push({ from: m[1]!, name: m[2], instrs: [] });
  } else stages.at(-1)?.instrs.push(ins);
}
const finalStage = stages.at(-1)!;

test("Dockerfile: a builder stage and a runtime stage on Node 20 (package.json engines)", () => {
  assert.deepEqual(stages.map((s) => s.name), ["builder", "runtime"]);
  const engines = (JSON.parse(readText("package.json")) as { engines: { node: string } }).engines.node;
  const major = /(\d+)/.exec(engines)![1];
  const argDefaults = Object.fromEntries(instrs.filter((i) => i.op === "ARG").map((i) => i.args.split("=") as [string, string]));
  for (const s of stages) {
    const image = s.from.replace(/\$\{(\w+)\}/g, (_, v: string) => argDefaults[v] ?? "");
    assert.match(image, new RegExp(`^node:${major}[-.]`), `stage ${s.name} builds on ${image}`);
  }
});

test("Dockerfile: every COPY source exists (build context) or names an earlier stage", () => {
  const ignore = readText(".dockerignore").split("\n").map((l) => l.trim()).filter((l) => l && !l.startsWith("#"));
  const ignored = (p: string) => {
    let out = false;
    for (const pat of ignore) {
      const neg = pat.startsWith("!");
      const re = new RegExp("^" + pat.replace(/^!/, "").replace(/\/$/, "").replace(/[.+^$()|[\]]/g, "\\$&").replace(/\*\*\/?/g, "\u0000").replace(/\*/g, "[^/]*").replace(/\u0000/g, ".*") + "(/.*)?$");
      if (re.test(p)) out = !neg;
    }
    return out;
  };
  const seen: string[] = [];
  for (const s of stages) {
    for (const ins of s.instrs.filter((i) => i.op === "COPY" || i.op === "ADD")) {
      const parts = ins.args.split(/\s+/);
      const from = parts.find((p) => p.startsWith("--from="))?.slice(7);
      const paths = parts.filter((p) => !p.startsWith("--"));
      const sources = paths.slice(0, -1);
      if (from) {
        assert.ok(seen.includes(from), `line ${ins.line}: COPY --from=${from}: no earlier stage of that name`);
        continue;
      }
      for (const src of sources) {
        const p = src.replace(/\/$/, "");
        assert.ok(existsSync(join(ROOT, p)), `line ${ins.line}: COPY ${src}: not in the repository`);
        assert.ok(!ignored(p), `line ${ins.line}: COPY ${src} is excluded by .dockerignore`);
      }
    }
    if (s.name) seen.push(s.name);
  }
});

test("Dockerfile: the builder stage gets every npm workspace's package.json before npm ci", () => {
  const workspaces = (JSON.parse(readText("package.json")) as { workspaces: string[] }).workspaces;
  const builder = stages[0]!.instrs;
  const ci = builder.findIndex((i) => i.op === "RUN" && /npm ci/.test(i.args));
  const copied = builder.slice(0, ci).filter((i) => i.op === "COPY").flatMap((i) => i.args.split(/\s+/).filter((p) => !p.startsWith("--")).slice(0, -1)).map((p) => p.replace(/\/$/, ""));
  for (const w of workspaces) {
    const ok = copied.some((c) => c === `${w}/package.json` || w === c || w.startsWith(c + "/"));
    assert.ok(ok, `workspace ${w}: its package.json is not copied before npm ci`);
  }
});

test("Dockerfile: the native addon and TypeScript are built in the builder stage only", () => {
  const runs = stages[0]!.instrs.filter((i) => i.op === "RUN").map((i) => i.args).join("\n");
  assert.match(runs, /npm ci/);
  assert.match(runs, /npm run build:native -w @fleetswan\/dataplane/);
  const dp = JSON.parse(readText("services/dataplane/package.json")) as { scripts?: Record<string, string> };
  assert.match(dp.scripts?.["build:native"] ?? "", /node-gyp/, "services/dataplane has a build:native script that runs node-gyp");
  assert.ok(existsSync(join(ROOT, "services/dataplane/native/binding.gyp")), "the addon's binding.gyp");
  assert.match(runs, /tsc -b packages\/cli/);
  assert.match(runs, /npm prune --omit=dev/);
  const runtimeRuns = finalStage.instrs.filter((i) => i.op === "RUN").map((i) => i.args).join("\n");
  assert.doesNotMatch(runtimeRuns, /npm (ci|install|rebuild|run)|node-gyp|tsc/, "the runtime stage compiles nothing");
  assert.ok(existsSync(join(ROOT, "packages/cli/tsconfig.json")));
});

test("Dockerfile: ports, user and entry point agree with the code", async () => {
  const { METRICS_PORT, IKE_PORT, NATT_PORT } = await loadDefaults();
  const exposed = finalStage.instrs.filter((i) => i.op === "EXPOSE").flatMap((i) => i.args.split(/\s+/));
  for (const p of Object.values(METRICS_PORT)) assert.ok(exposed.includes(String(p)), `EXPOSE ${p}`);
  assert.ok(exposed.includes(`${IKE_PORT}/udp`) && exposed.includes(`${NATT_PORT}/udp`), "EXPOSE the IKE ports");
  const user = finalStage.instrs.filter((i) => i.op === "USER").at(-1)?.args;
  assert.ok(user && !/^(0|root)(:|$)/.test(user), `the image's default user is not root (USER ${user})`);
  const entry = finalStage.instrs.find((i) => i.op === "ENTRYPOINT");
  const argv = JSON.parse(entry!.args) as string[];
  assert.equal(argv[0], "node");
  const workdir = finalStage.instrs.filter((i) => i.op === "WORKDIR").at(-1)!.args;
  assert.ok(argv[1]!.startsWith(workdir + "/"), "the entry point is under WORKDIR");
  const inRepo = argv[1]!.slice(workdir.length + 1);
  assert.ok(existsSync(join(ROOT, inRepo)), `${inRepo} exists in the repository`);
  assert.match(readFileSync(join(ROOT, inRepo), "utf8"), /packages\/cli\/dist\/src\/main\.js/, "bin/fleetswan.js loads the built CLI");
});
