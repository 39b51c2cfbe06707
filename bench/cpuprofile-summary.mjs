// Summarise V8 .cpuprofile files (bench/convergence.ts --profile DIR): self time by
// function and by package, and total (inclusive) time of the heaviest functions.
//   node bench/cpuprofile-summary.mjs DIR/*.cpuprofile [--top N]
import { readFileSync } from "node:fs";

const args = process.argv.slice(2);
const ti = args.indexOf("--top");
const top = ti >= 0 ? Number(args.splice(ti, 2)[1]) : 25;
const self = new Map();
const pkg = new Map();
const incl = new Map();
let total = 0;
const where = (cf) => {
  const u = cf.url || "";
  const m = u.match(/node_modules\/((?:@[^/]+\/)?[^/]+)/);
  if (m) return m[1];
  if (u.includes("/services/") || u.includes("/packages/")) return u.replace(/.*\/(services|packages)\//, "").replace(/\/dist\/.*/, "");
  if (u.startsWith("node:")) return "node:" + u.slice(5).split("/")[0];
  return u ? u.split("/").pop() : `(${cf.functionName || "native"})`;
};
for (const f of args) {
  const p = JSON.parse(readFileSync(f, "utf8"));
  const byId = new Map(p.nodes.map((n) => [n.id, n]));
  const parent = new Map();
  for (const n of p.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const dt = new Map();
  p.samples.forEach((id, i) => dt.set(id, (dt.get(id) ?? 0) + (p.timeDeltas[i] ?? 0)));
  for (const [id, us] of dt) {
    const n = byId.get(id);
    const cf = n.callFrame;
    const key = `${cf.functionName || "(anon)"} ${(cf.url || "").split("/").slice(-2).join("/")}:${cf.lineNumber + 1}`;
    self.set(key, (self.get(key) ?? 0) + us);
    const w = cf.url ? where(cf) : cf.functionName;
    pkg.set(w, (pkg.get(w) ?? 0) + us);
    total += us;
    const seen = new Set();
    for (let x = id; x !== undefined; x = parent.get(x)) {
      const c = byId.get(x).callFrame;
      const k = `${c.functionName || "(anon)"} ${(c.url || "").split("/").slice(-2).join("/")}:${c.lineNumber + 1}`;
      if (seen.has(k)) continue;
      seen.add(k);
      incl.set(k, (incl.get(k) ?? 0) + us);
    }
  }
}
const show = (title, m) => {
  console.log(`\n${title}`);
  for (const [k, us] of [...m].sort((a, b) => b[1] - a[1]).slice(0, top)) console.log(`${(us / 1000).toFixed(1).padStart(9)} ms ${((100 * us) / total).toFixed(1).padStart(5)}%  ${k}`);
};
console.log(`total sampled ${(total / 1000).toFixed(0)} ms`);
show("self time by package", pkg);
show("self time by function", self);
show("inclusive time", incl);
