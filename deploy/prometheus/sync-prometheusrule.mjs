#!/usr/bin/env node
// Writes deploy/kubernetes/base/prometheusrule.yaml from deploy/prometheus/fleetswan-alerts.yaml,
// so that the Prometheus Operator and a plain Prometheus load the same rules.
// test/ops/prometheus.test.ts fails when the two disagree. Usage: node deploy/prometheus/sync-prometheusrule.mjs
import { readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { parse, stringify } from "yaml";

const here = dirname(fileURLToPath(import.meta.url));
const rules = parse(readFileSync(join(here, "fleetswan-alerts.yaml"), "utf8"));
const out = {
  apiVersion: "monitoring.coreos.com/v1",
  kind: "PrometheusRule",
  metadata: { name: "fleetswan-alerts", labels: { "app.kubernetes.io/name": "fleetswan" } },
  spec: { groups: rules.groups },
};
const header = "# GENERATED from deploy/prometheus/fleetswan-alerts.yaml by deploy/prometheus/sync-prometheusrule.mjs: edit that file, then run the script.\n";
writeFileSync(join(here, "..", "kubernetes", "base", "prometheusrule.yaml"), header + stringify(out, { lineWidth: 0 }));
