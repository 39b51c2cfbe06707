/**
 * Alert rules: promtool check and unit tests, the PrometheusRule copy for the Operator,
 * metric names against docs/metrics.md, runbook links against docs/troubleshooting.md.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { join } from "node:path";
import { ROOT, baseMetricName, docMetrics, have, listFiles, parseYamlFile, promqlMetricNames, readText, rel } from "./lib.js";

const RULES = join(ROOT, "deploy", "prometheus", "fleetswan-alerts.yaml");
interface Rule {
  alert?: string;
  record?: string;
  expr: string;
  for?: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
}
const groups = (parseYamlFile(RULES)[0] as { groups: Array<{ name: string; rules: Rule[] }> }).groups;
const rules = groups.flatMap((g) => g.rules);

test("promtool check rules", (t) => {
  if (!have("promtool")) {
    t.skip("promtool is not installed (Debian package prometheus)");
    return;
  }
  const r = spawnSync("promtool", ["check", "rules", RULES], { encoding: "utf8" });
  assert.equal(r.status, 0, r.stdout + r.stderr);
  process.stdout.write(`# ${r.stdout.trim().split("\n").join(" ")}\n`);
});

test("promtool test rules (deploy/prometheus/tests)", (t) => {
  if (!have("promtool")) {
    t.skip("promtool is not installed (Debian package prometheus)");
    return;
  }
  const files = listFiles("deploy/prometheus/tests", (f) => f.endsWith(".yaml"));
  assert.ok(files.length > 0);
  const r = spawnSync("promtool", ["test", "rules", ...files], { encoding: "utf8" });
  assert.equal(r.status, 0, r.stdout + r.stderr);
});

test("every alert has a unit test, a severity, a summary and a runbook that exists", () => {
  const tests = listFiles("deploy/prometheus/tests", (f) => f.endsWith(".yaml")).map((f) => parseYamlFile(f)[0] as { tests: Array<{ alert_rule_test?: Array<{ alertname: string; exp_alerts: unknown[] }> }> });
  const tested = new Set(tests.flatMap((t) => t.tests.flatMap((x) => (x.alert_rule_test ?? []).filter((a) => a.exp_alerts.length > 0).map((a) => a.alertname))));
  const troubleshooting = readText("docs/troubleshooting.md");
  const anchors = new Set(
    troubleshooting
      .split("\n")
      .filter((l) => /^#+\s/.test(l))
      .map((l) => l.replace(/^#+\s*/, "").toLowerCase().replace(/[^a-z0-9 -]/g, "").replace(/ /g, "-")),
  );
  for (const r of rules.filter((x) => x.alert)) {
    assert.ok(tested.has(r.alert!), `alert ${r.alert} has no unit test that expects it to fire`);
    assert.match(r.labels?.severity ?? "", /^(critical|warning|info)$/, `${r.alert}: severity`);
    assert.ok(r.annotations?.summary, `${r.alert}: summary`);
    const rb = r.annotations?.runbook;
    if (rb) {
      const [file, anchor] = rb.split("#");
      assert.equal(file, "docs/troubleshooting.md", `${r.alert}: runbook in docs/troubleshooting.md`);
      assert.ok(anchors.has(anchor!), `${r.alert}: docs/troubleshooting.md has no section #${anchor}`);
    }
  }
});

test("alert expressions use only metrics that docs/metrics.md lists", () => {
  const known = new Set(docMetrics().map((m) => m.name));
  const unknown: string[] = [];
  for (const r of rules) {
    for (const n of promqlMetricNames(r.expr)) if (!known.has(baseMetricName(n, known))) unknown.push(`${r.alert ?? r.record}: ${n}`);
  }
  assert.deepEqual(unknown, [], `not in docs/metrics.md:\n${unknown.join("\n")}`);
});

test("deploy/kubernetes/base/prometheusrule.yaml has the same groups (node deploy/prometheus/sync-prometheusrule.mjs)", () => {
  const pr = parseYamlFile(join(ROOT, "deploy", "kubernetes", "base", "prometheusrule.yaml"))[0] as { spec: { groups: unknown } };
  assert.deepEqual(pr.spec.groups, groups, `${rel(RULES)} and the PrometheusRule differ: run node deploy/prometheus/sync-prometheusrule.mjs`);
});
