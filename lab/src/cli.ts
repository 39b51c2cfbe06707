#!/usr/bin/env node
/**
 * fleetswan-lab COMMAND: the whole fleet on one machine (docs/lab.md). The executable
 * ./fleetswan-lab at the repository root installs and builds, then runs this.
 */
import { parseArgs } from "node:util";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { existsSync } from "node:fs";
import { Lab } from "./lab.js";
import { DEFAULT_INSTANCE, DEFAULT_STATE_DIR, makeLabConfig, natsUrl } from "./model.js";
import { topologyState } from "./topology.js";
import { makeStepper, run } from "./util.js";

const REPO = resolve(dirname(fileURLToPath(import.meta.url)), "../../..");
const DEFAULT_SPEC = join(REPO, "lab", "fleet.yaml");

const USAGE = `usage: fleetswan-lab up [--kernel] [--spec FILE] [--no-verify] [--backend userspace|xfrm] [--prometheus]
       fleetswan-lab down [--kernel]
       fleetswan-lab status [--kernel]
       fleetswan-lab env                 print FLEETSWAN_NATS_URL for the fleetswan CLI
       fleetswan-lab fleetswan ARGS...   run the fleetswan CLI against the lab (e.g. status, conn down a-b)
       fleetswan-lab exec NODE CMD...    run CMD in a namespace: gw-a, host-a, ..., transit
       fleetswan-lab exec --kernel CMD   run a shell command inside the --kernel guest
  common options: --instance NAME (default ${DEFAULT_INSTANCE}) --state-dir DIR (default ${DEFAULT_STATE_DIR})

up:   starts nats-server, the controller, keymgr, gw-a and gw-b (fleetswan: dataplane
      --backend userspace + ikeagent, enrolled), gw-c (strongSwan), site hosts host-a/b/c,
      applies lab/fleet.yaml, waits for every tunnel, pings through each, prints the status.
      Running it again on a running lab restarts what died and checks again.
      --kernel runs the same fleet inside User-Mode Linux with the xfrm backend.
      --backend xfrm runs it on this host's kernel (needs ESP: CONFIG_INET_ESP).
      --prometheus also starts Prometheus (/usr/bin/prometheus) scraping every service of
      the lab, with deploy/prometheus/fleetswan-alerts.yaml loaded, and prints its URL.
down: stops every process and removes every namespace of the lab (logs are kept).`;

function out(s: string): void {
  process.stdout.write(s.endsWith("\n") ? s : s + "\n");
}

async function main(argv: string[]): Promise<number> {
  const cmd = argv[0];
  if (!cmd || cmd === "--help" || cmd === "-h" || cmd === "help") {
    out(USAGE);
    return cmd ? 0 : 2;
  }
  // `fleetswan` and `exec` pass the rest through untouched
  const passthrough = cmd === "fleetswan" || cmd === "exec";
  const { values, positionals } = parseArgs({
    args: argv.slice(1),
    options: {
      instance: { type: "string" },
      "state-dir": { type: "string" },
      kernel: { type: "boolean" },
      spec: { type: "string" },
      "no-verify": { type: "boolean" },
      backend: { type: "string" },
      prometheus: { type: "boolean" },
    },
    strict: !passthrough,
    allowPositionals: true,
  });
  const instance = (values.instance as string | undefined) ?? DEFAULT_INSTANCE;
  const stateDir = (values["state-dir"] as string | undefined) ?? (instance === DEFAULT_INSTANCE ? DEFAULT_STATE_DIR : `${DEFAULT_STATE_DIR}-${instance}`);
  if (process.getuid?.() !== 0 && cmd !== "env") {
    process.stderr.write("fleetswan-lab: must run as root (network namespaces, nats-server, charon)\n");
    return 1;
  }
  const loaded = Lab.load(stateDir);
  const backend = (values.backend as string | undefined) ?? "userspace";
  if (backend !== "userspace" && backend !== "xfrm") throw new Error(`--backend must be userspace or xfrm (got "${backend}")`);
  const lab = loaded ?? new Lab(makeLabConfig({ instance, stateDir, repoDir: REPO, backend }));
  const step = makeStepper();

  switch (cmd) {
    case "up": {
      if (values.kernel) {
        const { kernelUp } = await import("./kernel.js");
        return kernelUp({ repoDir: REPO, step });
      }
      const t0 = Date.now();
      const specFile = (values.spec as string | undefined) ?? (instance === DEFAULT_INSTANCE && existsSync(DEFAULT_SPEC) ? DEFAULT_SPEC : undefined);
      try {
        await lab.up({ specFile, verify: !values["no-verify"], step });
      } catch (e) {
        process.stderr.write(`\nfleetswan-lab up failed: ${(e as Error).message}\n\nDaemons:\n${lab.describe()}\n` +
          `The lab is left as it is for inspection; \`./fleetswan-lab down\` removes it.\n`);
        return 1;
      }
      step(`lab up in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
      if (values.prometheus) {
        const { labPrometheus, startLabPrometheus } = await import("./prometheus.js");
        const running = labPrometheus(lab.c);
        if (running) step(`Prometheus already runs: ${running.url}`);
        else {
          step("starting Prometheus (scrapes controller, keymgr, every ikeagent and dataplane; alert rules loaded)");
          const p = await startLabPrometheus(lab.c);
          await p.waitTargetsUp(60_000);
          step(`Prometheus: ${p.url} (every target up)`);
        }
      }
      await printStatus(lab);
      return 0;
    }
    case "down": {
      if (values.kernel) {
        const { kernelDown } = await import("./kernel.js");
        await kernelDown({ step });
        return 0;
      }
      const { stopLabPrometheus } = await import("./prometheus.js");
      await stopLabPrometheus(lab.c, { removeData: true });
      await lab.down(step);
      step(`lab "${lab.c.instance}" is down (logs kept in ${join(stateDir, "logs")})`);
      return 0;
    }
    case "status": {
      if (values.kernel) {
        const { kernelStatus } = await import("./kernel.js");
        const k = kernelStatus({});
        out(`kernel lab (User-Mode Linux): ${k.running ? "running" : "not running"}\n${k.text}`);
        return k.running ? 0 : 3;
      }
      if (!loaded) {
        const t = await topologyState(lab.c);
        out(`lab "${instance}": not running${t.present.length ? ` (but namespaces exist: ${t.present.join(", ")}; run down)` : ""}`);
        return 3;
      }
      await printStatus(lab);
      return 0;
    }
    case "env":
      out(`export FLEETSWAN_NATS_URL=${natsUrl(lab.c)}`);
      return 0;
    case "fleetswan": {
      const r = await lab.fleetswan(argv.slice(1), { allowFail: true, timeoutMs: 600_000 });
      process.stdout.write(r.stdout);
      process.stderr.write(r.stderr);
      return r.code;
    }
    case "exec": {
      if (argv.includes("--kernel")) {
        const { kernelExec } = await import("./kernel.js");
        const script = argv.slice(1).filter((a) => a !== "--kernel").join(" ");
        const r = await kernelExec({}, script);
        process.stdout.write(r.output);
        return r.code;
      }
      const [node, ...rest] = argv.slice(1);
      if (!node || rest.length === 0) throw new Error("usage: fleetswan-lab exec NODE CMD...");
      const r = await run(["ip", "netns", "exec", lab.ns(node), ...rest], { allowFail: true, timeoutMs: 3_600_000 });
      process.stdout.write(r.stdout);
      process.stderr.write(r.stderr);
      return r.code;
    }
    default:
      process.stderr.write(`fleetswan-lab: unknown command "${cmd}"\n${USAGE}\n`);
      return 2;
  }
}

async function printStatus(lab: Lab): Promise<void> {
  const c = lab.c;
  out(`\nfleetswan-lab "${c.instance}" (state and logs: ${c.stateDir})`);
  out(`\nDaemons:\n${lab.describe()}`);
  const st = await lab.fleetswan(["status"], { allowFail: true, timeoutMs: 20_000 });
  out(`\n$ fleetswan status\n${st.stdout}${st.stderr}`);
  for (const g of lab.c.gateways.filter((x) => x.kind === "strongswan")) {
    const r = await lab.swanctl(g, ["--list-sas"], { allowFail: true });
    out(`$ swanctl --list-sas   (strongSwan on ${g.name})\n${r.stdout.trim() || r.stderr.trim()}\n`);
  }
  out("Prometheus metrics (from this host):");
  for (const m of lab.metricsUrls()) out(`  ${m.name.padEnd(18)} ${m.url}`);
  const { labPrometheus } = await import("./prometheus.js");
  const prom = labPrometheus(c);
  if (prom) out(`Prometheus (scraping the lab, alert rules loaded): ${prom.url}   (e.g. ${prom.url}/alerts)`);
  out(`\nUse the fleetswan CLI:  export FLEETSWAN_NATS_URL=${natsUrl(c)}   (or ./fleetswan-lab fleetswan status)`);
  out(`Poke around:            ip netns exec ${lab.ns("host-a")} ping ${lab.gw("gw-b").hostAddr}`);
  out(`                        ./fleetswan-lab exec gw-c swanctl --list-sas --uri unix://${c.stateDir}/gw-c/charon.vici`);
  out(`Stop everything:        ./fleetswan-lab down`);
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (e: unknown) => {
    process.stderr.write(`fleetswan-lab: ${(e as Error).stack ?? String(e)}\n`);
    process.exit(1);
  },
);
