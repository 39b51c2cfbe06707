/**
 * The Grafana dashboard: valid JSON, unique panel ids, a datasource variable, and every
 * expression is valid PromQL (promtool, through a throw-away rule file) using only metrics
 * that docs/metrics.md lists.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { stringify } from "yaml";
import { baseMetricName, docMetrics, have, listFiles, promqlMetricNames, readText, rel } from "./lib.js";

interface Panel {
  id?: number;
  type: string;
  title?: string;
  targets?: Array<{ expr?: string; refId?: string }>;
  panels?: Panel[];
  datasource?: { uid?: string };
}
interface Dashboard {
  uid: string;
  title: string;
  panels: Panel[];
  templating: { list: Array<{ name: string; type: string; query?: unknown; definition?: string }> };
}

const files = listFiles("deploy/grafana", (f) => f.endsWith(".json"));
const dashboards = files.map((f) => ({ file: rel(f), d: JSON.parse(readText(rel(f))) as Dashboard }));
const allPanels = (ps: Panel[]): Panel[] => ps.flatMap((p) => [p, ...allPanels(p.panels ?? [])]);

/** Grafana variables replaced by values that make the expression plain PromQL. */
function substitute(expr: string): string {
  return expr
    .replace(/\$__rate_interval|\$__interval|\$\{__rate_interval\}|\$\{__interval\}|\$__range/g, "5m")
    .replace(/\$\{?(\w+)(?::\w+)?\}?/g, ".*");
}

test("dashboards: uid, title, unique panel ids, datasource variable", () => {
  assert.ok(dashboards.some((x) => x.file.endsWith("fleetswan-fleet.json")), "deploy/grafana/fleetswan-fleet.json");
  for (const { file, d } of dashboards) {
    assert.ok(d.uid && d.title, `${file}: uid and title`);
    const panels = allPanels(d.panels);
    const ids = panels.map((p) => p.id);
    assert.equal(new Set(ids).size, ids.length, `${file}: panel ids are unique`);
    assert.ok(d.templating.list.some((v) => v.type === "datasource"), `${file}: a datasource variable`);
    for (const p of panels.filter((x) => x.type !== "row")) {
      assert.equal(p.datasource?.uid, "${datasource}", `${file}: panel "${p.title}" uses the datasource variable`);
      assert.ok((p.targets ?? []).length > 0, `${file}: panel "${p.title}" has a query`);
    }
  }
});

test("dashboards: every expression uses only metrics that docs/metrics.md lists", () => {
  const known = new Set(docMetrics().map((m) => m.name));
  const unknown: string[] = [];
  for (const { file, d } of dashboards) {
    const exprs = [
      ...allPanels(d.panels).flatMap((p) => (p.targets ?? []).map((t) => ({ where: `panel "${p.title}"`, expr: t.expr ?? "" }))),
      ...d.templating.list.filter((v) => v.type === "query").map((v) => ({ where: `variable ${v.name}`, expr: String(v.definition ?? "") })),
    ];
    for (const { where, expr } of exprs) {
      const q = expr.replace(/^label_values\((.*),\s*\w+\)$/, "$1").replace(/^label_values\(\s*(\w+)\s*\)$/, "$1");
      for (const n of promqlMetricNames(substitute(q))) if (!known.has(baseMetricName(n, known))) unknown.push(`${file} ${where}: ${n}`);
    }
  }
  assert.deepEqual(unknown, [], `not in docs/metrics.md:\n${unknown.join("\n")}`);
});

test("dashboards: every panel expression is valid PromQL (promtool check rules)", (t) => {
  if (!have("promtool")) {
    t.skip("promtool is not installed (Debian package prometheus)");
    return;
  }
  const dir = mkdtempSync(join(tmpdir(), "fleetswan-grafana-"));
  try {
    for (const { file, d } of dashboards) {
      const rules = allPanels(d.panels).flatMap((p, i) => (p.targets ?? []).filter((x) => x.expr).map((x, j) => ({ record: `dashboard:panel_${i}_${j}`, expr: substitute(x.expr!) })));
      const f = join(dir, "rules.yaml");
      writeFileSync(f, stringify({ groups: [{ name: "dashboard", rules }] }));
      const r = spawnSync("promtool", ["check", "rules", f], { encoding: "utf8" });
      assert.equal(r.status, 0, `${file}: ${r.stdout}${r.stderr}`);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
