/**
 * Static checks of deploy/kubernetes: YAML, the Kubernetes API schemas (kubernetes-models),
 * the kustomize structure, and agreement with the code (ports, probes, sockets, state dir,
 * CLI commands and flags). No cluster needed.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import {
  ROOT,
  checkInvocation,
  registersAnything,
  fleetswanService,
  haveKustomize,
  kubectlKustomize,
  listFiles,
  loadCliCommands,
  loadDefaults,
  matches,
  matchesExpr,
  parseYamlFile,
  portNumber,
  rel,
  resolveKustomization,
  workloads,
  type Container,
  type K8sObject,
} from "./lib.js";

const BASE = join(ROOT, "deploy", "kubernetes", "base");
const OVERLAY = join(ROOT, "deploy", "kubernetes", "overlays", "example");
const SERVICES = ["controller", "keymgr", "ikeagent", "dataplane"] as const;

/** The model class for an apiVersion/kind, from kubernetes-models or the Operator's models. */
async function modelFor(apiVersion: string, kind: string): Promise<(new (data: unknown) => { validate(): void }) | undefined> {
  const [group, version] = apiVersion.includes("/") ? apiVersion.split("/") : ["", apiVersion];
  const candidates =
    group === "monitoring.coreos.com"
      ? [`@kubernetes-models/prometheus-operator/${group}/${version}/${kind}`]
      : group === ""
        ? [`kubernetes-models/${version}/${kind}`]
        : [`kubernetes-models/${group}/${version}/${kind}`];
  for (const c of candidates) {
    try {
      const m = (await import(c)) as Record<string, unknown>;
      return (m[kind] ?? m.default) as never;
    } catch {
      /* next */
    }
  }
  return undefined;
}

/** Every object of the base and the overlay, as kustomize would build them. */
function built(dir: string): { objects: K8sObject[]; how: string } {
  if (haveKustomize()) return { objects: kubectlKustomize(dir), how: "kubectl kustomize" };
  const { objects } = resolveKustomization(dir);
  return { objects, how: "the in-test resolver (kubectl not found)" };
}

test("every YAML file under deploy/ parses (strict: no duplicate keys)", () => {
  const files = listFiles("deploy", (f) => /\.ya?ml$/.test(f));
  assert.ok(files.length > 10, `expected the deploy/ manifests, found ${files.length}`);
  for (const f of files) assert.doesNotThrow(() => parseYamlFile(f), `${rel(f)} does not parse`);
});

test("kustomizations: every resource, generator file and patch target exists", () => {
  for (const dir of [BASE, OVERLAY]) {
    const { problems, objects } = resolveKustomization(dir);
    assert.deepEqual(problems, [], problems.join("\n"));
    assert.ok(objects.length > 0);
  }
  // Files in base/ that the kustomization forgets are dead manifests.
  const listed = new Set((parseYamlFile(join(BASE, "kustomization.yaml"))[0] as { resources: string[] }).resources);
  for (const f of listFiles("deploy/kubernetes/base", (p) => p.endsWith(".yaml") && !p.endsWith("kustomization.yaml"))) {
    assert.ok(listed.has(f.slice(BASE.length + 1)), `${rel(f)} is not listed in base/kustomization.yaml`);
  }
});

test("kubectl kustomize builds the base and the overlay", (t) => {
  if (!haveKustomize()) {
    t.skip("kubectl (with built-in kustomize) is not installed; the in-test resolver checked the structure");
    return;
  }
  for (const dir of [BASE, OVERLAY]) assert.ok(kubectlKustomize(dir).length > 20, `${rel(dir)} builds to too few objects`);
});

test("every built object validates against the Kubernetes API schemas", async () => {
  for (const dir of [BASE, OVERLAY]) {
    const { objects, how } = built(dir);
    const errors: string[] = [];
    for (const o of objects) {
      const Model = await modelFor(o.apiVersion, o.kind);
      if (!Model) {
        errors.push(`${o.apiVersion} ${o.kind}/${o.metadata.name}: no schema for this kind`);
        continue;
      }
      // kubectl prints long base64 values as multi-line plain scalars, which YAML folds
      // with spaces; the API server's base64 decoder ignores them, so do the same here.
      if (o.kind === "Secret" && o.data) {
        o.data = Object.fromEntries(Object.entries(o.data as Record<string, string>).map(([k, v]) => [k, v.replace(/\s+/g, "")]));
      }
      try {
        new Model(o).validate();
      } catch (err) {
        errors.push(`${rel(dir)} (${how}): ${o.kind}/${o.metadata.name}: ${(err as Error).message}`);
      }
    }
    assert.deepEqual(errors, [], errors.join("\n"));
  }
});

test("the overlay's Secrets are placeholders that fail closed, and every reference resolves", (t) => {
  for (const f of listFiles("deploy/kubernetes/overlays/example/secrets", () => true)) {
    assert.match(readFileSync(f, "utf8"), /REPLACE-ME/, `${rel(f)} must be a REPLACE-ME placeholder, never a real secret`);
  }
  if (!haveKustomize()) {
    t.skip("kubectl is not installed: generated Secret names (with hash suffixes) cannot be resolved");
    return;
  }
  const objects = kubectlKustomize(OVERLAY);
  const has = (kind: string, name: string) => objects.some((o) => o.kind === kind && o.metadata.name === name);
  const problems: string[] = [];
  for (const w of workloads(objects)) {
    const where = `${w.obj.kind}/${w.obj.metadata.name}`;
    for (const v of w.spec.volumes ?? []) {
      if (v.secret && !v.secret.optional && !has("Secret", v.secret.secretName)) problems.push(`${where}: Secret ${v.secret.secretName} does not exist`);
      if (v.configMap && !has("ConfigMap", v.configMap.name)) problems.push(`${where}: ConfigMap ${v.configMap.name} does not exist`);
    }
    for (const c of [...w.spec.containers, ...(w.spec.initContainers ?? [])]) {
      for (const e of (c as { envFrom?: Array<{ configMapRef?: { name: string } }> }).envFrom ?? []) {
        if (e.configMapRef && !has("ConfigMap", e.configMapRef.name)) problems.push(`${where}: ConfigMap ${e.configMapRef.name} does not exist`);
      }
    }
    if (w.spec.serviceAccountName && !has("ServiceAccount", w.spec.serviceAccountName)) problems.push(`${where}: ServiceAccount ${w.spec.serviceAccountName} does not exist`);
  }
  for (const o of objects) {
    if (o.kind !== "Namespace" && o.metadata.namespace !== "fleetswan") problems.push(`${o.kind}/${o.metadata.name} is not in namespace fleetswan`);
  }
  assert.deepEqual(problems, [], problems.join("\n"));
});

test("ports and probes agree with packages/common/src/defaults.ts", async () => {
  const { METRICS_PORT, IKE_PORT, NATT_PORT } = await loadDefaults();
  const { objects } = built(OVERLAY);
  const seen = new Set<string>();
  for (const w of workloads(objects)) {
    for (const c of w.spec.containers) {
      const svc = fleetswanService(c);
      if (!svc) continue;
      seen.add(svc);
      const port = METRICS_PORT[svc];
      assert.ok(port, `${w.obj.metadata.name}/${c.name}: unknown service ${svc}`);
      const where = `${w.obj.kind}/${w.obj.metadata.name} container ${c.name}`;
      assert.ok(c.ports?.some((p) => p.containerPort === port && (p.protocol ?? "TCP") === "TCP"), `${where}: metrics port ${port} not declared`);
      assert.equal(c.livenessProbe?.httpGet?.path, "/healthz", `${where}: liveness probe must be GET /healthz`);
      assert.equal(c.readinessProbe?.httpGet?.path, "/readyz", `${where}: readiness probe must be GET /readyz`);
      assert.equal(portNumber(c, c.livenessProbe!.httpGet!.port), port, `${where}: liveness probe port`);
      assert.equal(portNumber(c, c.readinessProbe!.httpGet!.port), port, `${where}: readiness probe port`);
      // A metrics port other than the default must be passed explicitly.
      const flag = c.args?.indexOf("--metrics-port") ?? -1;
      if (flag >= 0) assert.equal(Number(c.args![flag + 1]), port, `${where}: --metrics-port`);
      if (svc === "ikeagent") assert.ok(c.ports?.some((p) => p.containerPort === IKE_PORT && p.protocol === "UDP"), `${where}: UDP ${IKE_PORT}`);
      if (svc === "dataplane") assert.ok(c.ports?.some((p) => p.containerPort === NATT_PORT && p.protocol === "UDP"), `${where}: UDP ${NATT_PORT}`);
    }
  }
  assert.deepEqual([...seen].sort(), [...SERVICES].sort(), "every service runs somewhere");
  for (const s of objects.filter((o) => o.kind === "Service")) {
    const spec = (s as unknown as { spec: { selector?: Record<string, string>; ports: Array<{ port: number; name?: string }> } }).spec;
    const target = workloads(objects).find((w) => matches(spec.selector, w.labels));
    assert.ok(target, `Service ${s.metadata.name} selects no pod template`);
    for (const c of target.spec.containers) {
      const svc = fleetswanService(c);
      if (svc) assert.ok(spec.ports.some((p) => p.port === METRICS_PORT[svc]), `Service ${s.metadata.name}: port ${METRICS_PORT[svc]}`);
    }
  }
});

test("images: one fleetswan image and tag for every service, third-party images pinned", () => {
  for (const dir of [BASE, OVERLAY]) {
    const { objects } = built(dir);
    const images = new Set<string>();
    for (const w of workloads(objects)) {
      for (const c of [...w.spec.containers, ...(w.spec.initContainers ?? [])]) {
        assert.ok(c.image, `${w.obj.metadata.name}/${c.name}: no image`);
        const tag = /:([^/:@]+)$/.exec(c.image)?.[1];
        assert.ok(tag && tag !== "latest", `${w.obj.metadata.name}/${c.name}: image ${c.image} must have a pinned tag`);
        if (c.image.includes("fleetswan")) images.add(c.image);
      }
    }
    if (haveKustomize()) {
      assert.equal(images.size, 1, `${rel(dir)}: fleetswan images differ: ${[...images].join(", ")}`);
      assert.match([...images][0]!, /^ghcr\.io\/fleetswan\/fleetswan:/);
    }
  }
});

test("least privilege: no privileged pod, minimal capabilities, no API tokens, empty RBAC", () => {
  const { objects } = built(OVERLAY);
  for (const w of workloads(objects)) {
    const name = `${w.obj.kind}/${w.obj.metadata.name}`;
    assert.equal(w.spec.automountServiceAccountToken, false, `${name}: automountServiceAccountToken must be false`);
    assert.ok(w.spec.serviceAccountName && w.spec.serviceAccountName !== "default", `${name}: own ServiceAccount`);
    for (const c of [...w.spec.containers, ...(w.spec.initContainers ?? [])]) {
      const sc = c.securityContext ?? {};
      const where = `${name} container ${c.name}`;
      assert.notEqual(sc.privileged, true, `${where}: privileged`);
      assert.equal(sc.allowPrivilegeEscalation, false, `${where}: allowPrivilegeEscalation must be false`);
      assert.equal(sc.readOnlyRootFilesystem, true, `${where}: readOnlyRootFilesystem`);
      assert.deepEqual(sc.capabilities?.drop, ["ALL"], `${where}: must drop ALL capabilities`);
      const add = [...(sc.capabilities?.add ?? [])].sort();
      const svc = fleetswanService(c);
      const allowed: Record<string, string[]> = { dataplane: ["NET_ADMIN", "NET_RAW"], ikeagent: ["NET_BIND_SERVICE"] };
      assert.deepEqual(add, svc ? (allowed[svc] ?? []) : [], `${where}: capabilities ${add.join(",") || "none"}`);
      assert.ok(c.resources?.requests?.cpu && c.resources?.requests?.memory && c.resources?.limits?.memory, `${where}: requests (cpu, memory) and a memory limit`);
      if (svc === "controller" || svc === "keymgr") {
        const runAs = sc.runAsUser ?? (w.spec.securityContext?.runAsUser as number | undefined);
        assert.ok(runAs !== undefined && runAs !== 0, `${where}: must run as a non-root user`);
      }
    }
  }
  for (const sa of objects.filter((o) => o.kind === "ServiceAccount")) {
    assert.equal((sa as { automountServiceAccountToken?: boolean }).automountServiceAccountToken, false, `ServiceAccount ${sa.metadata.name}`);
  }
  for (const r of objects.filter((o) => o.kind === "Role" || o.kind === "ClusterRole")) {
    assert.deepEqual((r as { rules?: unknown[] }).rules ?? [], [], `${r.kind} ${r.metadata.name} must grant nothing (the services do not call the API)`);
  }
  assert.equal(objects.filter((o) => o.kind === "ClusterRoleBinding").length, 0, "no ClusterRoleBinding");
});

test("gateway DaemonSet: hostNetwork on labelled nodes, shared socket dir, agent state on the host", async () => {
  const { DATAPLANE_SOCKET, IKEAGENT_SOCKET, AGENT_STATE_DIR } = await loadDefaults();
  const { objects } = built(OVERLAY);
  const ds = workloads(objects).find((w) => w.obj.kind === "DaemonSet");
  assert.ok(ds, "a DaemonSet");
  assert.equal(ds.spec.hostNetwork, true);
  assert.ok(Object.keys(ds.spec.nodeSelector ?? {}).length > 0, "runs only on labelled gateway nodes");
  const byService = (s: string): Container => ds.spec.containers.find((c) => fleetswanService(c) === s)!;
  const dp = byService("dataplane");
  const agent = byService("ikeagent");
  assert.ok(dp && agent, "dataplane and ikeagent in the same pod");
  const runDir = dirname(DATAPLANE_SOCKET);
  assert.equal(dirname(IKEAGENT_SOCKET), runDir);
  const runMount = (c: Container) => c.volumeMounts?.find((m) => m.mountPath === runDir)?.name;
  assert.ok(runMount(dp) && runMount(dp) === runMount(agent), `${runDir} is one volume in both containers`);
  assert.ok(ds.spec.volumes?.find((v) => v.name === runMount(dp))?.emptyDir !== undefined, `${runDir} is an emptyDir`);
  const stateMount = agent.volumeMounts?.find((m) => m.mountPath === AGENT_STATE_DIR);
  assert.ok(stateMount, `the agent mounts ${AGENT_STATE_DIR}`);
  const stateVol = ds.spec.volumes?.find((v) => v.name === stateMount.name);
  assert.equal(stateVol?.hostPath?.path, AGENT_STATE_DIR, "agent state on a hostPath");
  assert.ok(!dp.volumeMounts?.some((m) => m.mountPath === AGENT_STATE_DIR), "the dataplane does not see the agent's key");
  const init = ds.spec.initContainers?.find((c) => c.volumeMounts?.some((m) => m.name === stateMount.name));
  assert.ok(init, "an init container sets the modes of the state directory");
  assert.match((init.args ?? []).join(" "), /chmod 0700[^\n]*\n[^]*chmod 0600/, "0700 for the directory, 0600 for the files");
});

test("selectors: every Service, PDB, NetworkPolicy and monitor selects pods that exist", () => {
  const { objects } = built(OVERLAY);
  const pods = workloads(objects);
  const podNames = (labels: Record<string, string>) => pods.filter((w) => matches(labels, w.labels) || false);
  for (const o of objects) {
    const spec = (o as { spec?: Record<string, unknown> }).spec ?? {};
    const name = `${o.kind}/${o.metadata.name}`;
    if (o.kind === "PodDisruptionBudget" || o.kind === "ServiceMonitor" || o.kind === "PodMonitor") {
      const sel = spec.selector as Parameters<typeof matchesExpr>[0];
      const targets = o.kind === "ServiceMonitor" ? objects.filter((s) => s.kind === "Service").map((s) => s.metadata.labels ?? {}) : pods.map((w) => w.labels);
      assert.ok(targets.some((l) => matchesExpr(sel, l)), `${name} selects nothing`);
    }
    if (o.kind === "PodMonitor") {
      const sel = spec.selector as Parameters<typeof matchesExpr>[0];
      const portNames = pods.filter((w) => matchesExpr(sel, w.labels)).flatMap((w) => w.spec.containers.flatMap((c) => c.ports?.map((p) => p.name) ?? []));
      for (const ep of spec.podMetricsEndpoints as Array<{ port: string }>) assert.ok(portNames.includes(ep.port), `${name}: no pod port named ${ep.port}`);
    }
    if (o.kind === "ServiceMonitor") {
      const sel = spec.selector as Parameters<typeof matchesExpr>[0];
      const svcs = objects.filter((s) => s.kind === "Service" && matchesExpr(sel, s.metadata.labels ?? {}));
      for (const ep of spec.endpoints as Array<{ port: string }>) {
        for (const s of svcs) assert.ok((s as unknown as { spec: { ports: Array<{ name?: string }> } }).spec.ports.some((p) => p.name === ep.port), `${name}: Service ${s.metadata.name} has no port ${ep.port}`);
      }
    }
    if (o.kind === "NetworkPolicy") {
      const sel = spec.podSelector as Parameters<typeof matchesExpr>[0];
      const empty = !sel || (Object.keys(sel.matchLabels ?? {}).length === 0 && (sel.matchExpressions ?? []).length === 0);
      assert.ok(empty || pods.some((w) => matchesExpr(sel, w.labels)), `${name} selects no pod`);
    }
    if (o.kind === "Service") assert.ok(podNames((spec.selector ?? {}) as Record<string, string>).length > 0, `${name} selects no pod`);
  }
});

test("availability: controller has 2 replicas, NATS 3 with JetStream, PDBs keep quorum", () => {
  const { objects } = built(OVERLAY);
  const get = (kind: string, name: string) => objects.find((o) => o.kind === kind && o.metadata.name === name) as { spec: Record<string, unknown> } | undefined;
  assert.equal(get("Deployment", "fleetswan-controller")?.spec.replicas, 2);
  assert.equal(get("Deployment", "fleetswan-keymgr")?.spec.replicas, 1);
  assert.equal(get("StatefulSet", "fleetswan-nats")?.spec.replicas, 3);
  const conf = (get("ConfigMap", "fleetswan-nats-config") as unknown as { data: Record<string, string> }).data["nats.conf"]!;
  assert.match(conf, /jetstream\s*\{/);
  assert.equal((conf.match(/nats:\/\/fleetswan-nats-\d\.fleetswan-nats-headless:6222/g) ?? []).length, 3, "three routes");
  assert.equal(get("PodDisruptionBudget", "fleetswan-nats")?.spec.maxUnavailable, 1);
  assert.equal(get("PodDisruptionBudget", "fleetswan-controller")?.spec.minAvailable, 1);
});

test("fleetswan containers run registered CLI commands with options the CLI knows", async (t) => {
  const { commands, reason } = await loadCliCommands();
  if (!commands) {
    t.skip(reason!);
    return;
  }
  const { objects } = built(OVERLAY);
  for (const w of workloads(objects)) {
    for (const c of w.spec.containers) {
      const svc = fleetswanService(c);
      if (!svc) continue;
      const where = `${w.obj.kind}/${w.obj.metadata.name} container ${c.name}`;
      await t.test(where, (st) => {
        // A service whose package registers no command yet is reported, not failed: the
        // check becomes strict as soon as the command exists.
        if (!commands.some((x) => x.name === svc) && !registersAnything(svc)) {
          st.skip(`services/${svc} registers no CLI command yet: "fleetswan ${svc}" cannot be checked`);
          return;
        }
        const problems = checkInvocation(where, c.args ?? [], commands);
        assert.deepEqual(problems, [], problems.join("\n"));
      });
    }
  }
});

test("the files the manifests mention exist in the repository", () => {
  for (const f of listFiles("deploy/kubernetes", (p) => p.endsWith(".yaml"))) {
    const text = readFileSync(f, "utf8");
    for (const m of text.matchAll(/\b((?:deploy|docs|services|packages)\/[A-Za-z0-9_./-]*[A-Za-z0-9_])/g)) {
      const p = m[1]!.replace(/\/$/, "");
      assert.ok(existsSync(join(ROOT, p)), `${rel(f)} mentions ${p}, which does not exist`);
    }
  }
});
