/**
 * The systemd units for plain hosts: `systemd-analyze verify` (offline), the hardening
 * settings and capabilities per service, and the commands they run.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { ROOT, checkInvocation, have, loadCliCommands, loadDefaults, registersAnything } from "./lib.js";

const SERVICES = ["controller", "keymgr", "ikeagent", "dataplane"] as const;
const unitPath = (s: string) => join(ROOT, "deploy", "systemd", `fleetswan-${s}.service`);

/** key -> values (a key may repeat). */
function parseUnit(text: string): Map<string, string[]> {
  const m = new Map<string, string[]>();
  for (const line of text.split("\n")) {
    const kv = /^([A-Za-z]+)=(.*)$/.exec(line.trim());
    if (!kv) continue;
    m.set(kv[1]!, [...(m.get(kv[1]!) ?? []), kv[2]!]);
  }
  return m;
}

const CAPS: Record<string, string[]> = {
  controller: [],
  keymgr: [],
  ikeagent: ["CAP_NET_BIND_SERVICE"],
  dataplane: ["CAP_NET_ADMIN", "CAP_NET_RAW"],
};
const FAMILIES: Record<string, string[]> = {
  controller: ["AF_INET", "AF_INET6", "AF_UNIX"],
  keymgr: ["AF_INET", "AF_INET6", "AF_UNIX"],
  ikeagent: ["AF_INET", "AF_INET6", "AF_NETLINK", "AF_UNIX"],
  dataplane: ["AF_INET", "AF_INET6", "AF_NETLINK", "AF_UNIX"],
};

test("systemd units: systemd-analyze verify reports nothing", (t) => {
  if (!have("systemd-analyze")) {
    t.skip("systemd-analyze is not installed");
    return;
  }
  for (const s of SERVICES) {
    const r = spawnSync("systemd-analyze", ["verify", unitPath(s)], { encoding: "utf8" });
    // Lines about other units (the host's own) are not ours.
    const ours = (r.stdout + r.stderr).split("\n").filter((l) => l.includes(`fleetswan-${s}.service`));
    assert.equal(r.status, 0, `verify fleetswan-${s}.service: ${r.stderr}`);
    assert.deepEqual(ours, [], ours.join("\n"));
  }
});

test("systemd units: exposure score (systemd-analyze security --offline) is at most 2.5", (t) => {
  if (!have("systemd-analyze")) {
    t.skip("systemd-analyze is not installed");
    return;
  }
  for (const s of SERVICES) {
    const r = spawnSync("systemd-analyze", ["security", "--offline=yes", unitPath(s)], { encoding: "utf8" });
    const m = /Overall exposure level for \S+: (\d+\.\d+)/.exec(r.stdout);
    if (!m) {
      t.skip(`systemd-analyze security --offline is not supported here: ${r.stderr.split("\n")[0]}`);
      return;
    }
    assert.ok(Number(m[1]) <= 2.5, `fleetswan-${s}.service exposure ${m[1]}`);
  }
});

test("systemd units: hardening, capabilities and address families per service", async () => {
  const { AGENT_STATE_DIR, DATAPLANE_SOCKET } = await loadDefaults();
  const runDir = DATAPLANE_SOCKET.slice(0, DATAPLANE_SOCKET.lastIndexOf("/"));
  for (const s of SERVICES) {
    const u = parseUnit(readFileSync(unitPath(s), "utf8"));
    const one = (k: string) => u.get(k)?.at(-1);
    const where = `fleetswan-${s}.service`;
    for (const [k, v] of [["ProtectSystem", "strict"], ["ProtectHome", "yes"], ["PrivateTmp", "yes"], ["NoNewPrivileges", "yes"], ["ProtectKernelModules", "yes"], ["ProtectKernelTunables", "yes"], ["RestrictSUIDSGID", "yes"], ["LockPersonality", "yes"], ["SystemCallArchitectures", "native"]]) {
      assert.equal(one(k!), v, `${where}: ${k}=${v}`);
    }
    assert.ok(u.get("SystemCallFilter")?.includes("@system-service"), `${where}: SystemCallFilter=@system-service`);
    assert.notEqual(one("MemoryDenyWriteExecute"), "yes", `${where}: Node's JIT needs W+X pages`);
    const caps = (one("CapabilityBoundingSet") ?? "").split(/\s+/).filter(Boolean).sort();
    assert.deepEqual(caps, CAPS[s], `${where}: CapabilityBoundingSet`);
    assert.deepEqual((one("AmbientCapabilities") ?? "").split(/\s+/).filter(Boolean).sort(), CAPS[s], `${where}: AmbientCapabilities`);
    assert.deepEqual(one("RestrictAddressFamilies")!.split(/\s+/).sort(), FAMILIES[s], `${where}: RestrictAddressFamilies`);
    const rw = (u.get("ReadWritePaths") ?? []).flatMap((v) => v.split(/\s+/));
    if (s === "dataplane" || s === "ikeagent") assert.ok(rw.includes(runDir), `${where}: ReadWritePaths=${runDir}`);
    if (s === "ikeagent") assert.ok(rw.includes(AGENT_STATE_DIR), `${where}: ReadWritePaths=${AGENT_STATE_DIR}`);
    if (s === "controller" || s === "keymgr") {
      assert.equal(one("DynamicUser"), "yes", `${where}: DynamicUser`);
      assert.deepEqual(rw, [], `${where}: writes nowhere`);
    } else {
      assert.equal(one("User"), "fleetswan", `${where}: User=fleetswan (deploy/systemd/fleetswan.sysusers.conf)`);
    }
  }
});

test("systemd units: ExecStart runs a registered CLI command with options it knows", async (t) => {
  const { commands, reason } = await loadCliCommands();
  if (!commands) {
    t.skip(reason!);
    return;
  }
  for (const s of SERVICES) {
    await t.test(`fleetswan-${s}.service`, (st) => {
      const exec = parseUnit(readFileSync(unitPath(s), "utf8")).get("ExecStart")!.at(-1)!;
      const argv = exec.split(/\s+/);
      assert.equal(argv[0], "/usr/bin/node");
      assert.equal(argv[1], "/opt/fleetswan/bin/fleetswan.js");
      assert.equal(argv[2], s, `fleetswan-${s}.service runs "fleetswan ${s}"`);
      if (!commands.some((x) => x.name === s) && !registersAnything(s)) {
        st.skip(`services/${s} registers no CLI command yet: "fleetswan ${s}" cannot be checked`);
        return;
      }
      const problems = checkInvocation(`fleetswan-${s}.service ExecStart`, argv.slice(2), commands);
      assert.deepEqual(problems, [], problems.join("\n"));
    });
  }
});
