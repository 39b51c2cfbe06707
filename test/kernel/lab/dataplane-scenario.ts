/**
 * Runs inside the UML guest (real 6.1 kernel with esp4): two netns gwA/gwB over a veth,
 * one `fleetswan dataplane --backend xfrm` per netns, everything installed through the
 * gRPC API only. Returns what happened as JSON for dataplane.itest.ts to judge.
 */
import { spawn, execFileSync, type ChildProcess } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, openSync } from "node:fs";
import { randomBytes } from "node:crypto";
import { fileURLToPath } from "node:url";
import * as grpc from "@grpc/grpc-js";
import { dataplane } from "@fleetswan/proto";

const CLI = fileURLToPath(new URL("../../../../bin/fleetswan.js", import.meta.url));
const DIR = "/tmp/fs-dp-lab";
const A = "ix-dpA";
const B = "ix-dpB";
const sh = (args: string[]): string => execFileSync(args[0], args.slice(1), { encoding: "utf8" });
const inNs = (ns: string, args: string[]): string => sh(["ip", "netns", "exec", ns, ...args]);
const tryNs = (ns: string, args: string[]): { ok: boolean; out: string } => {
  try {
    return { ok: true, out: inNs(ns, args) };
  } catch (e) {
    const x = e as { stdout?: string; stderr?: string };
    return { ok: false, out: `${x.stdout ?? ""}${x.stderr ?? ""}` };
  }
};
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

type Client = dataplane.DataplaneClient;
// eslint-disable-next-line @typescript-eslint/no-explicit-any
const call = (c: Client, fn: (...a: any[]) => unknown, req: unknown): Promise<any> =>
  new Promise((resolve, reject) => fn.call(c, req, (e: Error | null, r: unknown) => (e ? reject(e) : resolve(r))));

function startDataplane(ns: string, name: string, n: number, extra: string[] = []): ChildProcess {
  const log = openSync(`${DIR}/${name}-${n}.log`, "w");
  return spawn("ip", ["netns", "exec", ns, process.execPath, CLI, "dataplane", "--backend", "xfrm", "--socket", `${DIR}/${name}.sock`, "--metrics-port", "0", "--state-file", `${DIR}/${name}-state.json`, "--drift-interval", "2", ...extra], {
    stdio: ["ignore", log, log],
  });
}

async function waitFor(what: string, ok: () => boolean, ms = 90_000): Promise<void> {
  const end = Date.now() + ms;
  while (!ok()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(200);
  }
}

async function connect(name: string): Promise<Client> {
  const sock = `${DIR}/${name}.sock`;
  await waitFor(`${sock}`, () => existsSync(sock));
  return new dataplane.DataplaneClient(`unix:${sock}`, grpc.credentials.createInsecure());
}

const sel = (s: string, d: string): dataplane.Selector => ({ src: { address: s, length: 16 }, dst: { address: d, length: 16 }, protocol: 0, srcPort: 0, dstPort: 0 });

function sa(spi: number, src: string, dst: string, key: Buffer, direction: dataplane.Direction, soft = 0n): dataplane.SecurityAssociation {
  return {
    id: { dst, spi, protocol: 50 },
    src,
    mode: dataplane.Mode.MODE_TUNNEL,
    reqid: 1,
    encryption: dataplane.Encryption.ENCRYPTION_AES_GCM_16,
    encryptionKey: key,
    integrity: dataplane.Integrity.INTEGRITY_NONE,
    integrityKey: Buffer.alloc(0),
    encap: undefined,
    replayWindow: 32,
    esn: false,
    lifetime: { softBytes: soft, hardBytes: 0n, softPackets: 0n, hardPackets: 0n, softAddSeconds: 0n, hardAddSeconds: 0n },
    direction,
    selector: undefined,
    mark: 0,
    ifId: 0,
    connection: "a-b",
    childId: BigInt(spi),
  };
}

function policies(localNet: string, remoteNet: string, local: string, remote: string): dataplane.Policy[] {
  const D = dataplane.Direction;
  const mk = (direction: dataplane.Direction, s: string, d: string, ts: string, td: string): dataplane.Policy => ({
    selector: sel(s, d),
    direction,
    action: dataplane.PolicyAction.POLICY_ACTION_PROTECT,
    priority: 0,
    template: { src: ts, dst: td, mode: dataplane.Mode.MODE_TUNNEL, reqid: 1, protocol: 50 },
    mark: 0,
    ifId: 0,
    connection: "a-b",
  });
  return [mk(D.DIRECTION_OUT, localNet, remoteNet, local, remote), mk(D.DIRECTION_IN, remoteNet, localNet, remote, local), mk(D.DIRECTION_FWD, remoteNet, localNet, remote, local)];
}

/** `ip xfrm state` without counters/lifetimes: the identity and keys of each SA. */
const stateIds = (ns: string): string[] =>
  inNs(ns, ["ip", "xfrm", "state"])
    .split("\n")
    .filter((l) => /^src |proto esp spi|aead /.test(l.trim()))
    .map((l) => l.trim());

function makeNetns(): void {
  mkdirSync(DIR, { recursive: true });
  for (const ns of [A, B]) sh(["ip", "netns", "add", ns]);
  sh(["ip", "-n", A, "link", "add", "veth0", "type", "veth", "peer", "name", "veth0", "netns", B]);
  for (const [ns, outer, inner] of [[A, "192.0.2.1/24", "10.1.0.1/32"], [B, "192.0.2.2/24", "10.2.0.1/32"]]) {
    sh(["ip", "-n", ns, "link", "set", "lo", "up"]);
    sh(["ip", "-n", ns, "link", "set", "veth0", "up"]);
    sh(["ip", "-n", ns, "addr", "add", outer, "dev", "veth0"]);
    sh(["ip", "-n", ns, "addr", "add", inner, "dev", "lo"]);
  }
}

export async function main(): Promise<Record<string, unknown>> {
  makeNetns();
  const res: Record<string, unknown> = {};
  let pa = startDataplane(A, "a", 1);
  const pb = startDataplane(B, "b", 1);
  try {
    let ca = await connect("a");
    const cb = await connect("b");
    res.caps = dataplane.Capabilities.toJSON(await call(ca, ca.getCapabilities, {}));
    const events: dataplane.Event[] = [];
    const watch = (c: Client) => {
      const s = c.watchEvents({});
      s.on("data", (e: dataplane.Event) => events.push(e));
      s.on("error", () => undefined);
      return s;
    };
    let wa = watch(ca);
    const kAB = randomBytes(20);
    const kBA = randomBytes(20);
    const D = dataplane.Direction;
    // A -> B carries a tiny soft byte limit: the soft expire must arrive as an event.
    await call(ca, ca.addSa, { sa: sa(0xc000a001, "192.0.2.1", "192.0.2.2", kAB, D.DIRECTION_OUT, 2000n) });
    await call(ca, ca.addSa, { sa: sa(0xc000b001, "192.0.2.2", "192.0.2.1", kBA, D.DIRECTION_IN) });
    await call(cb, cb.addSa, { sa: sa(0xc000b001, "192.0.2.2", "192.0.2.1", kBA, D.DIRECTION_OUT) });
    await call(cb, cb.addSa, { sa: sa(0xc000a001, "192.0.2.1", "192.0.2.2", kAB, D.DIRECTION_IN) });
    for (const p of policies("10.1.0.0", "10.2.0.0", "192.0.2.1", "192.0.2.2")) await call(ca, ca.addPolicy, { policy: p });
    for (const p of policies("10.2.0.0", "10.1.0.0", "192.0.2.2", "192.0.2.1")) await call(cb, cb.addPolicy, { policy: p });
    // Repeats are harmless.
    await call(ca, ca.addSa, { sa: sa(0xc000a001, "192.0.2.1", "192.0.2.2", kAB, D.DIRECTION_OUT, 2000n) });
    res.ping1 = tryNs(A, ["ping", "-c", "5", "-i", "0.3", "-s", "600", "-W", "2", "-I", "10.1.0.1", "10.2.0.1"]);
    res.pingBack = tryNs(B, ["ping", "-c", "2", "-i", "0.3", "-W", "2", "-I", "10.2.0.1", "10.1.0.1"]);
    res.kernelStateA = inNs(A, ["ip", "-s", "xfrm", "state"]).replace(/(aead \S+ )0x[0-9a-f]+/g, "$1<key>");
    const listed = await call(ca, ca.listSas, { connection: "a-b" });
    res.listSas = listed.sas.map((s: dataplane.SaState) => ({ spi: s.sa!.id!.spi, direction: s.sa!.direction, bytes: String(s.counters!.bytes), packets: String(s.counters!.packets), keyLen: s.sa!.encryptionKey.length }));
    res.listPolicies = (await call(ca, ca.listPolicies, { connection: "a-b" })).policies.length;
    await waitFor("soft expire", () => events.some((e) => e.kind?.$case === "expire"), 10_000).catch(() => undefined);
    res.expire = events.filter((e) => e.kind?.$case === "expire").map((e) => dataplane.Event.toJSON(e));
    // Drift: delete every SA behind the dataplane's back.
    res.beforeDeleteall = stateIds(A);
    inNs(A, ["ip", "xfrm", "state", "deleteall"]);
    res.afterDeleteall = stateIds(A);
    await waitFor("drift repair", () => events.filter((e) => e.kind?.$case === "drift").length >= 2, 30_000).catch(() => undefined);
    res.drift = events.filter((e) => e.kind?.$case === "drift").map((e) => dataplane.Event.toJSON(e));
    res.afterRepair = stateIds(A);
    res.ping2 = tryNs(A, ["ping", "-c", "8", "-i", "0.3", "-W", "2", "-I", "10.1.0.1", "10.2.0.1"]);
    // Restart A with the same state file: nothing may change (SPIs, keys, policies).
    wa.cancel();
    ca.close();
    const beforeRestart = { state: stateIds(A), policy: inNs(A, ["ip", "xfrm", "policy"]) };
    pa.kill("SIGTERM");
    await new Promise((r) => pa.once("exit", r));
    res.afterStop = stateIds(A).length;
    pa = startDataplane(A, "a", 2);
    await sleep(500);
    ca = await connect("a");
    await waitFor("restart reconciled", () => /reconciled at start/.test(readFileSync(`${DIR}/a-2.log`, "utf8")));
    res.restartLog = readFileSync(`${DIR}/a-2.log`, "utf8").split("\n").filter((l) => /reconciled at start/.test(l));
    res.restartSame = JSON.stringify(beforeRestart) === JSON.stringify({ state: stateIds(A), policy: inNs(A, ["ip", "xfrm", "policy"]) });
    res.restartListSas = (await call(ca, ca.listSas, { connection: "" })).sas.map((s: dataplane.SaState) => s.sa!.id!.spi);
    res.ping3 = tryNs(A, ["ping", "-c", "3", "-i", "0.3", "-W", "2", "-I", "10.1.0.1", "10.2.0.1"]);
    res.stateFileMode = (sh(["stat", "-c", "%a", `${DIR}/a-state.json`]) as string).trim();
    res.socketMode = (sh(["stat", "-c", "%a", `${DIR}/a.sock`]) as string).trim();
    wa = watch(ca);
    wa.cancel();
    ca.close();
    cb.close();
  } finally {
    for (const p of [pa, pb]) p.kill("SIGTERM");
    await sleep(500);
    res.logA = readFileSync(`${DIR}/a-1.log`, "utf8").slice(-3000);
    for (const ns of [A, B]) spawnQuiet(["ip", "netns", "del", ns]);
  }
  return res;
}

function spawnQuiet(args: string[]): void {
  try {
    sh(args);
  } catch {
    /* cleanup */
  }
}

/**
 * Kernel-mode NAT-T: both dataplanes own UDP 4500 (--natt-port 4500, UDP_ENCAP_ESPINUDP set
 * through the fsesp addon), SAs with encap 4500/4500 installed through gRPC; ping through
 * ESP-in-UDP (tcpdump on the wire), and IKE datagrams with the non-ESP marker travel both
 * ways through the same sockets: from a plain UDP socket in A to B's RelayIke stream, and
 * from B's RelayIke stream (sendIke) to A's RelayIke stream.
 */
export async function natt(): Promise<Record<string, unknown>> {
  makeNetns();
  const res: Record<string, unknown> = {};
  const pa = startDataplane(A, "na", 1, ["--natt-port", "4500"]);
  const pb = startDataplane(B, "nb", 1, ["--natt-port", "4500"]);
  try {
    const ca = await connect("na");
    const cb = await connect("nb");
    const D = dataplane.Direction;
    const kAB = randomBytes(20);
    const kBA = randomBytes(20);
    const encap = { srcPort: 4500, dstPort: 4500 };
    const esa = (spi: number, src: string, dst: string, key: Buffer, d: dataplane.Direction) => ({ ...sa(spi, src, dst, key, d), encap, connection: "natt" });
    await call(ca, ca.addSa, { sa: esa(0xc000c001, "192.0.2.1", "192.0.2.2", kAB, D.DIRECTION_OUT) });
    await call(ca, ca.addSa, { sa: esa(0xc000d001, "192.0.2.2", "192.0.2.1", kBA, D.DIRECTION_IN) });
    await call(cb, cb.addSa, { sa: esa(0xc000d001, "192.0.2.2", "192.0.2.1", kBA, D.DIRECTION_OUT) });
    await call(cb, cb.addSa, { sa: esa(0xc000c001, "192.0.2.1", "192.0.2.2", kAB, D.DIRECTION_IN) });
    for (const p of policies("10.1.0.0", "10.2.0.0", "192.0.2.1", "192.0.2.2")) await call(ca, ca.addPolicy, { policy: p });
    for (const p of policies("10.2.0.0", "10.1.0.0", "192.0.2.2", "192.0.2.1")) await call(cb, cb.addPolicy, { policy: p });
    // RelayIke streams (the agent's side), hello first.
    const relayed: Record<string, dataplane.IkeDatagram[]> = { a: [], b: [] };
    const relay = (c: Client, side: string) => {
      const s = c.relayIke();
      s.on("data", (d: dataplane.IkeDatagram) => relayed[side]!.push(d));
      s.on("error", () => undefined);
      s.write({ remoteAddress: "", remotePort: 0, localAddress: "", payload: Buffer.alloc(0), hello: true, keepalive: false });
      return s;
    };
    const ra = relay(ca, "a");
    const rb = relay(cb, "b");
    await sleep(500);
    // The 4500 sockets carry the encap option (ss shows it as a UDP socket bound to 4500 in each netns).
    res.sockets = inNs(A, ["ss", "-uanp", "sport", "=", ":4500"]);
    // ESP-in-UDP on the wire while pinging: tcpdump in B on veth0, UDP 4500 with a non-zero SPI.
    const dump = spawn("ip", ["netns", "exec", B, "tcpdump", "-l", "-n", "-i", "veth0", "-c", "6", "udp", "port", "4500", "and", "udp[8:4]", "!=", "0"], { stdio: ["ignore", "pipe", "pipe"] });
    const dumpDone = new Promise((r) => dump.once("exit", r));
    let dumpOut = "";
    dump.stdout!.on("data", (d: Buffer) => (dumpOut += d.toString()));
    dump.stderr!.on("data", (d: Buffer) => (dumpOut += d.toString()));
    await sleep(1500);
    res.ping = tryNs(A, ["ping", "-c", "5", "-i", "0.3", "-s", "600", "-W", "2", "-I", "10.1.0.1", "10.2.0.1"]);
    await sleep(500);
    dump.kill("SIGINT"); // exits by itself after 6 packets
    await Promise.race([dumpDone, sleep(5000)]);
    res.tcpdump = dumpOut;
    res.stateA = inNs(A, ["ip", "-s", "xfrm", "state"]).replace(/(aead \S+ )0x[0-9a-f]+/g, "$1<key>");
    res.listSas = (await call(ca, ca.listSas, { connection: "natt" })).sas.map((s: dataplane.SaState) => ({ spi: s.sa!.id!.spi, encap: s.sa!.encap, packets: String(s.counters!.packets) }));
    // IKE from a plain UDP socket in A (ephemeral port) to B:4500 with the non-ESP marker.
    inNs(A, [process.execPath, "-e", `const s=require("dgram").createSocket("udp4");s.bind(0,"192.0.2.1",()=>s.send(Buffer.concat([Buffer.alloc(4),Buffer.from("ike-from-a")]),4500,"192.0.2.2",()=>s.close()));`]);
    // IKE from B's agent through B's relay (sendIke) to A:4500, which relays it to A's agent.
    rb.write({ remoteAddress: "192.0.2.1", remotePort: 4500, localAddress: "", payload: Buffer.from("ike-from-b"), hello: false, keepalive: false });
    await waitFor("relayed IKE", () => relayed.a!.length >= 1 && relayed.b!.length >= 1, 15_000).catch(() => undefined);
    const j = (d: dataplane.IkeDatagram) => ({ remote: `${d.remoteAddress}:${d.remotePort}`, payload: Buffer.from(d.payload).toString(), keepalive: d.keepalive });
    res.relayedA = relayed.a!.map(j);
    res.relayedB = relayed.b!.map(j);
    // ESP still flows after the IKE traffic on the same sockets.
    res.ping2 = tryNs(B, ["ping", "-c", "3", "-i", "0.3", "-W", "2", "-I", "10.2.0.1", "10.1.0.1"]);
    res.xfrmStat = inNs(B, ["cat", "/proc/net/xfrm_stat"]).split("\n").filter((l) => /\s[1-9]/.test(l));
    ra.end();
    rb.end();
    ca.close();
    cb.close();
  } finally {
    for (const p of [pa, pb]) p.kill("SIGTERM");
    await sleep(500);
    res.logA = readFileSync(`${DIR}/na-1.log`, "utf8").slice(-3000);
    res.logB = readFileSync(`${DIR}/nb-1.log`, "utf8").slice(-3000);
    for (const ns of [A, B]) spawnQuiet(["ip", "netns", "del", ns]);
  }
  return res;
}
