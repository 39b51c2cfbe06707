/**
 * docs/metrics.md lists every metric every service registers, with its type and labels,
 * and nothing that no service registers (except the sections for metrics that others
 * produce: Prometheus itself, the Node.js defaults, the NATS exporter).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { codeMetrics, docMetrics, readText } from "./lib.js";

const EXTERNAL = /^(up|process_|nodejs_|gnatsd_)/;

test("docs/metrics.md and the services' prom-client constructors agree (names, types, labels)", () => {
  const code = codeMetrics();
  const docs = docMetrics();
  assert.ok(code.length > 0, "found metrics in services/*/src");
  const problems: string[] = [];
  const dup = docs.filter((d, i) => docs.findIndex((x) => x.name === d.name) !== i);
  for (const d of dup) problems.push(`docs/metrics.md:${d.line}: ${d.name} is listed twice`);
  const codeByName = new Map<string, typeof code>();
  for (const c of code) codeByName.set(c.name, [...(codeByName.get(c.name) ?? []), c]);
  for (const [name, cs] of codeByName) {
    const d = docs.find((x) => x.name === name);
    const c = cs[0]!;
    if (!d) {
      problems.push(`${c.file}: ${name} (${c.type}) is not in docs/metrics.md`);
      continue;
    }
    if (d.type !== c.type) problems.push(`docs/metrics.md:${d.line}: ${name} is a ${c.type} in ${c.file}, documented as ${d.type}`);
    if (d.labels.join(",") !== c.labels.join(",")) problems.push(`docs/metrics.md:${d.line}: ${name} labels in ${c.file}: [${c.labels.join(", ")}], documented: [${d.labels.join(", ")}]`);
    for (const other of cs.slice(1)) {
      if (other.type !== c.type || other.labels.join() !== c.labels.join()) problems.push(`${name}: registered differently in ${c.file} and ${other.file}`);
    }
  }
  for (const d of docs) {
    if (!EXTERNAL.test(d.name) && !codeByName.has(d.name)) problems.push(`docs/metrics.md:${d.line}: ${d.name} is documented but no service registers it`);
  }
  assert.deepEqual(problems, [], problems.join("\n"));
});

test("docs/metrics.md: every row has a meaning and a PromQL example", () => {
  for (const d of docMetrics()) {
    const cells = d.row.split("|").slice(1, -1).map((c) => c.trim());
    assert.equal(cells.length, 5, `docs/metrics.md:${d.line}: five columns (name, type, labels, meaning, example)`);
    assert.ok(cells[3]!.length > 10, `docs/metrics.md:${d.line}: meaning`);
    assert.match(cells[4]!, /`[^`]+`/, `docs/metrics.md:${d.line}: a PromQL example in backticks`);
    assert.match(cells[1]!, /^(counter|gauge|histogram|summary)$/, `docs/metrics.md:${d.line}: type`);
  }
});

test("docs/metrics.md: label columns name their bounded values", () => {
  for (const d of docMetrics()) {
    if (EXTERNAL.test(d.name)) continue;
    const cell = d.row.split("|")[3]!.trim();
    if (d.labels.length === 0) assert.match(cell, /^(-|—|none)$/, `docs/metrics.md:${d.line}: "-" for no labels`);
    else assert.match(cell, /\(/, `docs/metrics.md:${d.line}: values (or the bound) in parentheses after each label`);
  }
  assert.match(readText("docs/metrics.md"), /bounded/i);
});
