/**
 * Kernel lab: our userspace ESP against the Linux kernel's ESP (the reference
 * implementation) inside User-Mode Linux. In the guest: netns A runs our backend (esp-peer
 * driver), netns B has kernel SAs/policies added with `ip xfrm` and the same keys. Ping both
 * ways for AES-GCM-128/256, ChaCha20-Poly1305 and AES-CBC+HMAC-SHA-256, with UDP
 * encapsulation and as plain ESP (IP protocol 50, through the addon's raw socket). A dumpcap
 * capture per case is decrypted on the host by tshark with the same keys (esp.enable_encryption_decode and an esp_sa UAT file), and
 * must show the inner ICMP packets.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, mkdtempSync, writeFileSync, readFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import { execFileSync } from "node:child_process";
import { makeSpec, xfrmCommands, tsharkEspSa, type AlgName } from "./tunnel-config.js";
import { DRIVER } from "./netlab.js";
import { addonPath } from "../../src/userspace/native.js";

// The project's kernel-lab harness (test/harness/kernel-lab.ts), loaded from the built test
// workspace by path: the dataplane package does not depend on the test workspace.
const KERNEL_LAB = new URL("../../../../../test/dist/harness/kernel-lab.js", import.meta.url);
type RunInUml = (argv: string[], opts: { mem?: string; timeoutMs?: number }) => Promise<{ code: number; output: string; console: string }>;
const skip = process.getuid?.() !== 0 ? "needs root" : !existsSync("/usr/bin/linux.uml") ? "user-mode-linux not installed" : !existsSync(addonPath()) ? "addon not built" : false;

const ALGS: AlgName[] = ["aes-gcm-128", "aes-gcm-256", "chacha20-poly1305", "aes-cbc-sha256"];

function guestScript(dir: string): string {
  const lines = ["set -u", "fail=0", "cd /tmp"];
  let i = 0;
  for (const encap of [true, false]) {
    for (const alg of ALGS) {
      i++;
      const spec = makeSpec(alg, encap, { spiAB: 0xc1000000 + i, spiBA: 0xc2000000 + i });
      const name = `${alg}-${encap ? "udp" : "esp"}`;
      writeFileSync(join(dir, `${name}.uat`), tsharkEspSa(spec).join("\n") + "\n");
      const A = `ua${i}`, B = `ub${i}`;
      lines.push(
        `echo "=== ${name}"`,
        `ip netns add ${A}; ip netns add ${B}`,
        `ip -n ${A} link set lo up; ip -n ${B} link set lo up`,
        `ip -n ${A} link add veth0 type veth peer name veth0 netns ${B}`,
        `ip -n ${A} addr add 192.0.2.1/24 dev veth0; ip -n ${B} addr add 192.0.2.2/24 dev veth0`,
        `ip -n ${A} link set veth0 up; ip -n ${B} link set veth0 up`,
        `ip -n ${A} addr add 10.1.0.1/32 dev lo; ip -n ${B} addr add 10.2.0.1/32 dev lo`,
        ...xfrmCommands(spec, "b").map((c) => `ip netns exec ${B} ${c} || { echo "xfrm failed: ${c.replace(/'/g, "")}"; fail=1; }`),
        // the kernel side needs a UDP_ENCAP socket on 4500 to take ESP-in-UDP: a tiny node one-liner via the addon
        encap ? `ip netns exec ${B} node -e 'const a=require(process.argv[1]);a.udpSocket(4,Buffer.from([0,0,0,0]),4500,true);setInterval(()=>{},1e6)' ${addonPath()} & ENC=$!` : "ENC=",
        `ip -n ${B} route add 10.1.0.0/16 via 192.0.2.1 src 10.2.0.1`,
        `ip netns exec ${B} dumpcap -q -i veth0 -w "$UML_XDIR/${name}.pcap" -f "udp port 4500 or ip proto 50" >/dev/null 2>&1 & CAP=$!`,
        `mkfifo /tmp/in${i}; (sleep 600 > /tmp/in${i} &)`,
        `ip netns exec ${A} node ${DRIVER} '${JSON.stringify({ spec, side: "a" })}' < /tmp/in${i} > /tmp/out${i} 2>&1 & DRV=$!`,
        `for t in $(seq 1 100); do grep -q ready /tmp/out${i} 2>/dev/null && break; sleep 0.3; done; cat /tmp/out${i}`,
        `sleep 1`,
        `if ip netns exec ${A} ping -c 3 -i 0.3 -W 3 -I 10.1.0.1 10.2.0.1 >/tmp/p${i} 2>&1 && ip netns exec ${B} ping -c 3 -i 0.3 -W 3 -I 10.2.0.1 10.1.0.1 >>/tmp/p${i} 2>&1; then echo "RESULT ${name} PASS"; else echo "RESULT ${name} FAIL"; cat /tmp/p${i}; ip -n ${B} -s xfrm state; fail=1; fi`,
        `sleep 1; kill $CAP $DRV $ENC 2>/dev/null; wait $CAP 2>/dev/null`,
        `ip netns del ${A}; ip netns del ${B}`,
      );
    }
  }
  lines.push("exit $fail");
  return lines.join("\n") + "\n";
}

test("UML: userspace ESP <-> kernel ESP, 4 transforms x {ESP-in-UDP, plain ESP}, tshark decrypts", { skip, timeout: 900_000 }, async () => {
  const { runInUml } = (await import(KERNEL_LAB.href)) as { runInUml: RunInUml };
  const dir = mkdtempSync("/var/tmp/fs-esp-uml-");
  try {
    const script = join(dir, "guest.sh");
    writeFileSync(script, guestScript(dir));
    const r = await runInUml(["bash", "-c", `UML_XDIR=${dir} bash ${script}`], { mem: "1G", timeoutMs: 800_000 });
    const out = r.output + r.console;
    writeFileSync(join(dir, "console.log"), out);
    const results = [...out.matchAll(/RESULT (\S+) (PASS|FAIL)/g)].map((m) => [m[1], m[2]]);
    console.log(results.map((x) => x.join(" ")).join("\n"));
    assert.equal(results.length, ALGS.length * 2, `guest output:\n${out.slice(-3000)}`);
    for (const [name, res] of results) assert.equal(res, "PASS", `${name}: ${out.slice(-3000)}`);
    // third, independent check: tshark decrypts our ESP with the same keys and sees the pings
    for (const [name] of results) {
      if (name!.startsWith("chacha20")) {
        // Wireshark 4.0 (Debian 12) has no ChaCha20-Poly1305 in its ESP decryption table;
        // the kernel interop above is the independent check for this transform.
        console.log(`${name}: tshark decryption check skipped (Wireshark 4.0 cannot decrypt ChaCha20-Poly1305 ESP)`);
        continue;
      }
      const pcap = join(dir, `${name}.pcap`);
      const uat = join(dir, "uat");
      execFileSync("mkdir", ["-p", uat]);
      writeFileSync(join(uat, "esp_sa"), readFileSync(join(dir, `${name}.uat`)));
      const t = execFileSync("tshark", ["-r", pcap, "-o", "esp.enable_encryption_decode:TRUE", "-o", "esp.enable_authentication_check:TRUE", "-Y", "icmp && ip.src==10.1.0.1 && ip.dst==10.2.0.1", "-T", "fields", "-e", "icmp.type"], { encoding: "utf8", env: { ...process.env, WIRESHARK_CONFIG_DIR: uat, XDG_CONFIG_HOME: uat } });
      const n = t.split("\n").filter((l) => l.trim() !== "").length;
      assert.ok(n >= 3, `${name}: tshark decrypted ${n} inner ICMP packets 10.1.0.1->10.2.0.1`);
    }
  } finally {
    if (!process.env.FS_KEEP) rmSync(dir, { recursive: true, force: true });
  }
});
