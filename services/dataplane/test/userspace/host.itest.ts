/**
 * Host itest (no kernel ESP needed): our userspace backend against itself in two network
 * namespaces over ESP-in-UDP. Ping through for every transform; a captured ESP packet sent
 * again is dropped as a replay; a packet with a bad ICV is dropped; neither reaches the TUN.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync, mkdtempSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { spawn } from "node:child_process";
import { createLab, Peer, sh, udpPayloadsFromPcap } from "./netlab.js";
import { makeSpec, type AlgName } from "./tunnel-config.js";
import { addonPath } from "../../src/userspace/native.js";
import { existsSync } from "node:fs";

const skip = process.getuid?.() !== 0 ? "needs root (netns, TUN)" : !existsSync(addonPath()) ? `addon not built (${addonPath()})` : !existsSync("/dev/net/tun") ? "no /dev/net/tun" : false;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

for (const alg of ["aes-gcm-128", "aes-gcm-256", "chacha20-poly1305", "aes-cbc-sha256"] as AlgName[]) {
  test(`host: userspace <-> userspace, ${alg}, ESP-in-UDP: ping both ways`, { skip, timeout: 60_000 }, async () => {
    const lab = createLab(`${process.pid}${alg.length}`);
    const spec = makeSpec(alg, true);
    const pa = new Peer(lab.a, spec, "a"), pb = new Peer(lab.b, spec, "b");
    try {
      await Promise.all([pa.ready(), pb.ready()]);
      sh(`ip netns exec ${lab.a} ping -c 3 -i 0.2 -W 2 -I 10.1.0.1 10.2.0.1`);
      sh(`ip netns exec ${lab.b} ping -c 3 -i 0.2 -W 2 -I 10.2.0.1 10.1.0.1`);
      const sb = await pb.stats();
      assert.ok(sb.stats.inPackets >= 6, `B received ${sb.stats.inPackets}`);
    } finally {
      pa.stop(); pb.stop(); await sleep(300); lab.destroy();
    }
  });
}

test("host: replayed ESP packet and bad ICV are dropped and counted, not delivered", { skip, timeout: 60_000 }, async () => {
  const lab = createLab(`${process.pid}r`);
  const spec = makeSpec("aes-gcm-256", true);
  const pa = new Peer(lab.a, spec, "a"), pb = new Peer(lab.b, spec, "b");
  const dir = mkdtempSync(join(tmpdir(), "fs-esp-"));
  try {
    await Promise.all([pa.ready(), pb.ready()]);
    const pcap = join(dir, "esp.pcap");
    const cap = spawn("ip", ["netns", "exec", lab.b, "tcpdump", "-i", "veth0", "-U", "-n", "-w", pcap, "udp port 4500 and src host 192.0.2.1"], { stdio: "ignore" });
    for (let i = 0; i < 100 && !(existsSync(pcap) && statSync(pcap).size >= 24); i++) await sleep(100);
    await sleep(500);
    sh(`ip netns exec ${lab.a} ping -c 2 -i 0.2 -W 2 -I 10.1.0.1 10.2.0.1`);
    await sleep(300);
    cap.kill("SIGINT");
    await new Promise((r) => cap.once("exit", r));
    const esp = udpPayloadsFromPcap(readFileSync(pcap)).filter((p) => p.readUInt32BE(0) === spec.spiAB);
    assert.ok(esp.length >= 2, `captured ${esp.length} ESP packets`);
    const before = await pb.stats();
    // send from A's namespace: the captured packet again, and one with a fresh sequence number but a bad ICV
    const bad = Buffer.from(esp[1]!);
    bad.writeUInt32BE(1000, 4);
    const sender = `const d=require("dgram").createSocket("udp4");const b=[${JSON.stringify(esp[0]!.toString("hex"))},${JSON.stringify(bad.toString("hex"))}];` +
      `let n=0;for(const h of b)d.send(Buffer.from(h,"hex"),4500,"192.0.2.2",()=>{if(++n===b.length)d.close()});`;
    sh(`ip netns exec ${lab.a} ${process.execPath} -e '${sender}'`);
    await sleep(500);
    const after = await pb.stats();
    assert.equal(after.stats.drops.replay! - before.stats.drops.replay!, 1, "replay counted");
    assert.equal(after.stats.drops.integrity! - before.stats.drops.integrity!, 1, "bad ICV counted");
    assert.equal(after.stats.inPackets, before.stats.inPackets, "nothing reached the TUN");
    const inSa = after.sas.find((s) => s.spi === spec.spiAB)!;
    assert.equal(inSa.replayErrors, 1);
    assert.equal(inSa.integrityErrors, 1);
  } finally {
    pa.stop(); pb.stop(); await sleep(300); lab.destroy(); rmSync(dir, { recursive: true, force: true });
  }
});

// TUN offloads (fsesp.cc, tun-offload.h): the sender's kernel hands the TUN 64 KiB TCP
// super-packets that we split (with fresh checksums) before ESP; the receiver writes runs of
// segments of one flow as one super-packet. The bytes must arrive unchanged, both ways.
test("host: TCP bulk transfer both ways arrives byte for byte (TSO split, coalesced TUN writes)", { skip, timeout: 120_000 }, async () => {
  const lab = createLab(`${process.pid}t`);
  const spec = makeSpec("aes-gcm-256", true);
  const pa = new Peer(lab.a, spec, "a"), pb = new Peer(lab.b, spec, "b");
  const MB = 24;
  const server = (addr: string) =>
    `const c=require("crypto"),s=require("net").createServer((k)=>{const h=c.createHash("sha256");let n=0;` +
    `k.on("data",(d)=>{h.update(d);n+=d.length});k.on("end",()=>{console.log(n+" "+h.digest("hex"));s.close()})});` +
    `s.listen(5201,"${addr}",()=>console.log("listening"))`;
  // deterministic bytes: a SHA-256 chain, so a lost, repeated or shifted octet changes the hash
  const client = (addr: string, local: string) =>
    `const c=require("crypto"),h=c.createHash("sha256");let x=Buffer.alloc(32),n=0;` +
    `const k=require("net").connect({port:5201,host:"${addr}",localAddress:"${local}"},()=>{` +
    `const more=()=>{while(n<${MB}*1048576){const b=Buffer.alloc(65536);for(let i=0;i<65536;i+=32){x=c.createHash("sha256").update(x).digest();x.copy(b,i)}` +
    `h.update(b);n+=b.length;if(!k.write(b)){k.once("drain",more);return}}k.end(()=>console.log(n+" "+h.digest("hex")))};more()})`;
  const run = async (srvNs: string, srvAddr: string, cliNs: string, cliAddr: string) => {
    const srv = spawn("ip", ["netns", "exec", srvNs, process.execPath, "-e", server(srvAddr)], { stdio: ["ignore", "pipe", "inherit"] });
    let out = "";
    srv.stdout!.on("data", (d: Buffer) => (out += d.toString()));
    for (let i = 0; i < 100 && !out.includes("listening"); i++) await sleep(50);
    const sent = sh(`ip netns exec ${cliNs} ${process.execPath} -e '${client(srvAddr, cliAddr)}'`).trim();
    await new Promise((r) => srv.once("exit", r));
    const got = out.split("\n").find((l) => / [0-9a-f]{64}$/.test(l));
    assert.equal(got, sent, `${cliAddr} -> ${srvAddr}: received length and SHA-256 equal what was sent`);
  };
  try {
    await Promise.all([pa.ready(), pb.ready()]);
    await run(lab.b, "10.2.0.1", lab.a, "10.1.0.1");
    await run(lab.a, "10.1.0.1", lab.b, "10.2.0.1");
    const sa = await pa.stats(), sb = await pb.stats();
    for (const [name, s] of [["A", sa], ["B", sb]] as const) {
      assert.equal(s.stats.drops.integrity, 0, `${name}: no integrity drops`);
      if (s.tun && s.tun.reads > 0) {
        assert.ok(s.tun.superPackets > 0, `${name}: TSO super-packets were split (${JSON.stringify(s.tun)})`);
        // the TypeScript reference crypto (FLEETSWAN_ESP_CRYPTO=ts) opens into fresh buffers, written one by one
        if (process.env.FLEETSWAN_ESP_CRYPTO !== "ts") assert.ok(s.tun.coalescedWrites > 0, `${name}: TCP segments were coalesced on write (${JSON.stringify(s.tun)})`);
        assert.equal(s.tun.dropped, 0, `${name}: no TUN offload drops`);
      }
    }
  } finally {
    pa.stop(); pb.stop(); await sleep(300); lab.destroy();
  }
});
