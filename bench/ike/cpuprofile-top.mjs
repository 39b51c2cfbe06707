#!/usr/bin/env node
// Summarises a .cpuprofile (node --cpu-prof): top functions by self time, and by inclusive time.
// usage: node bench/ike/cpuprofile-top.mjs FILE.cpuprofile [N]
import { readFileSync } from "node:fs";
const [file, nArg] = process.argv.slice(2);
const n = Number(nArg ?? 30);
const prof = JSON.parse(readFileSync(file, "utf8"));
const byId = new Map(prof.nodes.map((x) => [x.id, x]));
const dt = new Map();
for (let i = 0; i < prof.samples.length; i++) dt.set(prof.samples[i], (dt.get(prof.samples[i]) ?? 0) + (prof.timeDeltas[i] ?? 0));
const parent = new Map();
for (const x of prof.nodes) for (const c of x.children ?? []) parent.set(c, x.id);
const key = (x) => `${x.callFrame.functionName || "(anonymous)"} ${x.callFrame.url.replace(/^.*\/(src|dist)\//, "").replace(/^node:/, "node:")}:${x.callFrame.lineNumber + 1}`;
const self = new Map(), incl = new Map();
let total = 0;
for (const x of prof.nodes) {
  const t = dt.get(x.id) ?? 0;
  total += t;
  self.set(key(x), (self.get(key(x)) ?? 0) + t);
  const seen = new Set();
  for (let id = x.id; id !== undefined; id = parent.get(id)) {
    const k = key(byId.get(id));
    if (seen.has(k)) continue;
    seen.add(k);
    incl.set(k, (incl.get(k) ?? 0) + t);
  }
}
const show = (title, m) => {
  console.log(`${title} (total ${(total / 1000).toFixed(0)} ms)`);
  for (const [k, v] of [...m].sort((a, b) => b[1] - a[1]).slice(0, n)) console.log(`${((100 * v) / total).toFixed(1).padStart(6)} %  ${k}`);
};
show("self time", self);
console.log();
show("inclusive time", incl);
