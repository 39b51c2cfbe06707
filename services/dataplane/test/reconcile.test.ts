/**
 * The desired-state service against the fake backend: idempotency, drift repair,
 * restart without changes, ownership, events, and the gRPC server on a Unix socket.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, statSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { dataplane } from "@fleetswan/proto";
import { FakeBackend } from "../src/fake/index.js";
import { Dataplane, ikeBypassPolicies } from "../src/reconcile.js";
import { derivePriority, BYPASS_IKE_PRIORITY } from "../src/priority.js";
import { startDataplaneServer, dataplaneClient } from "../src/server/grpc.js";
import { classifyNattDatagram } from "../src/server/relay.js";

const KEY = Buffer.from("00112233445566778899aabbccddeeff00112233", "hex");
const sel = (s: string, sl: number, d: string, dl: number): dataplane.Selector => ({ src: { address: s, length: sl }, dst: { address: d, length: dl }, protocol: 0, srcPort: 0, dstPort: 0 });

function sa(spi: number, o: Partial<dataplane.SecurityAssociation> = {}): dataplane.SecurityAssociation {
  return {
    id: { dst: "192.0.2.2", spi, protocol: 50 },
    src: "192.0.2.1",
    mode: dataplane.Mode.MODE_TUNNEL,
    reqid: 7,
    encryption: dataplane.Encryption.ENCRYPTION_AES_GCM_16,
    encryptionKey: KEY,
    integrity: dataplane.Integrity.INTEGRITY_NONE,
    integrityKey: Buffer.alloc(0),
    encap: undefined,
    replayWindow: 1024,
    esn: true,
    lifetime: undefined,
    direction: dataplane.Direction.DIRECTION_OUT,
    selector: sel("10.1.0.0", 16, "10.2.0.0", 16),
    mark: 0,
    ifId: 0,
    connection: "site-a",
    childId: 42n,
    ...o,
  };
}

function policy(o: Partial<dataplane.Policy> = {}): dataplane.Policy {
  return {
    selector: sel("10.1.0.0", 16, "10.2.0.0", 16),
    direction: dataplane.Direction.DIRECTION_OUT,
    action: dataplane.PolicyAction.POLICY_ACTION_TRAP,
    priority: 0,
    template: { src: "192.0.2.1", dst: "192.0.2.2", mode: dataplane.Mode.MODE_TUNNEL, reqid: 7, protocol: 50 },
    mark: 0,
    ifId: 0,
    connection: "site-a",
    ...o,
  };
}

const stateFile = () => join(mkdtempSync(join(tmpdir(), "fs-dp-")), "state", "dataplane-state.json");

test("priorities: most specific wins; IKE bypass below the derived range", () => {
  const wide = derivePriority(sel("10.0.0.0", 8, "10.2.0.0", 16));
  const narrow = derivePriority(sel("10.1.0.0", 16, "10.2.0.0", 16));
  const host = derivePriority(sel("10.1.0.1", 32, "10.2.0.1", 32));
  const withProto = derivePriority({ ...sel("10.1.0.0", 16, "10.2.0.0", 16), protocol: 6 });
  const withPorts = derivePriority({ ...sel("10.1.0.0", 16, "10.2.0.0", 16), protocol: 6, dstPort: 443 });
  assert.ok(host < narrow && narrow < wide, "longer prefixes get lower (winning) values");
  assert.ok(withPorts < withProto && withProto < narrow);
  // One IPv4 prefix bit outweighs protocol and both ports together.
  assert.ok(derivePriority(sel("10.1.0.0", 17, "10.2.0.0", 16)) < derivePriority({ ...sel("10.1.0.0", 16, "10.2.0.0", 16), protocol: 6, srcPort: 1, dstPort: 2 }));
  // IPv6 /64->/64 ranks like IPv4 /16->/16.
  assert.equal(derivePriority(sel("2001:db8:1::", 64, "2001:db8:2::", 64)), derivePriority(sel("10.1.0.0", 16, "10.2.0.0", 16)));
  assert.ok(BYPASS_IKE_PRIORITY < derivePriority(sel("0.0.0.0", 32, "0.0.0.0", 32)) - 100);
});

test("adds are idempotent; deletes of missing objects succeed; bypass installed at start", async () => {
  const fake = new FakeBackend();
  const dp = new Dataplane({ backend: fake, driftIntervalMs: 0 });
  await dp.start();
  assert.equal(fake.policies.size, ikeBypassPolicies().length, "8 IKE bypass policies (500/4500, in/out, v4/v6)");
  fake.takeCalls();
  await dp.addSa(sa(0xc0000001));
  await dp.addSa(sa(0xc0000001));
  const prio = await dp.addPolicy(policy());
  assert.equal(await dp.addPolicy(policy()), prio);
  assert.equal(prio, derivePriority(policy().selector!));
  assert.deepEqual(fake.takeCalls().map((c) => c.op), ["addSa", "addPolicy"], "repeats changed nothing");
  assert.equal(await dp.deleteSa({ dst: "192.0.2.9", spi: 0x999, protocol: 50 }), false);
  assert.equal(await dp.deletePolicy({ selector: sel("10.9.0.0", 16, "10.8.0.0", 16), direction: dataplane.Direction.DIRECTION_OUT, mark: 0 }), false);
  assert.equal(await dp.deleteSa({ dst: "192.0.2.2", spi: 0xc0000001, protocol: 50 }), true);
  const listed = await dp.listPolicies("site-a");
  assert.equal(listed.length, 1);
  assert.equal(listed[0].policy?.action, dataplane.PolicyAction.POLICY_ACTION_TRAP, "TRAP is reported as asked, though the kernel cannot tell it from PROTECT");
  await dp.stop();
});

test("drift: objects deleted behind our back are re-installed and reported", async () => {
  const fake = new FakeBackend();
  const dp = new Dataplane({ backend: fake, driftIntervalMs: 0 });
  await dp.start();
  await dp.addSa(sa(0xc0000001));
  await dp.addPolicy(policy());
  const events: dataplane.Event[] = [];
  dp.watch((e) => events.push(e));
  fake.flushBehindBack(); // like `ip xfrm state deleteall; ip xfrm policy deleteall`
  const r = await dp.reconcile();
  assert.equal(r.repaired, 2 + ikeBypassPolicies().length);
  assert.ok(fake.sas.has("192.0.2.2|3221225473|50"));
  assert.deepEqual(fake.sas.get("192.0.2.2|3221225473|50")!.sa.encryptionKey, KEY, "re-installed with its keys");
  const drift = events.filter((e) => e.kind?.$case === "drift").map((e) => e.kind!.value as dataplane.Drift);
  assert.ok(drift.some((d) => d.kind === "sa" && d.object === "192.0.2.2/esp/0xc0000001" && d.change === "deleted" && d.repaired));
  assert.ok(drift.some((d) => d.kind === "policy" && d.repaired));
  const again = await dp.reconcile();
  assert.equal(again.repaired, 0);
  await dp.stop();
});

test("restart with the persisted state changes nothing; state file is 0600 and atomic", async () => {
  const file = stateFile();
  const fake = new FakeBackend();
  const dp1 = new Dataplane({ backend: fake, stateFile: file, driftIntervalMs: 0 });
  await dp1.start();
  await dp1.addSa(sa(0xc0000001));
  await dp1.addPolicy(policy());
  await dp1.stop();
  assert.equal(statSync(file).mode & 0o777, 0o600);
  assert.equal(statSync(join(file, "..")).mode & 0o077, 0, "state dir not group/other accessible");
  assert.match(readFileSync(file, "utf8"), /"encryptionKey"/, "keys are in the file (hence 0600)");
  fake.takeCalls();
  const dp2 = new Dataplane({ backend: fake, stateFile: file, driftIntervalMs: 0 });
  const r = await dp2.start();
  assert.deepEqual(r, { repaired: 0, pruned: 0, unchanged: 2 + ikeBypassPolicies().length });
  assert.deepEqual(fake.takeCalls(), [], "no backend mutation on restart");
  await dp2.addSa(sa(0xc0000001));
  assert.deepEqual(fake.takeCalls(), [], "the reloaded entry compares equal");
  await dp2.stop();
});

test("ownership: prune everything in the owned reqid range that is not desired, never strangers'", async () => {
  const fake = new FakeBackend();
  const dp = new Dataplane({ backend: fake, driftIntervalMs: 0 });
  await dp.start();
  await dp.addSa(sa(0xc0000001));
  await dp.addPolicy(policy());
  await fake.addSa(sa(0xc0000002)); // ours (reqid 7, used by us) but not desired: an orphan
  await fake.addSa(sa(0xc0000003, { reqid: 99 })); // a reqid we never used, in the owned range (e.g. a lost state file)
  await fake.addSa(sa(0xc0000004, { reqid: 0x7fffffff })); // the top of the owned range
  await fake.addSa(sa(0xc0000005, { reqid: 0 })); // reqid 0: not ours
  await fake.addSa(sa(0xc0000006, { reqid: 0x80000000 })); // above the owned range: not ours
  const stranger = (reqid: number, dst: string) => policy({ selector: sel("10.1.0.0", 16, dst, 16), priority: 5000, template: { ...policy().template!, reqid } });
  await fake.addPolicy(stranger(0, "10.5.0.0")); // template reqid 0: not ours
  await fake.addPolicy(stranger(0x80000001, "10.6.0.0")); // above the range: not ours
  await fake.addPolicy(stranger(1234, "10.7.0.0")); // owned range, not desired: pruned
  await fake.addPolicy({ ...policy({ selector: sel("10.8.0.0", 16, "10.9.0.0", 16), priority: 5000 }), action: dataplane.PolicyAction.POLICY_ACTION_BYPASS, template: undefined }); // no template, not installed by us
  fake.takeCalls();
  const r = await dp.reconcile();
  assert.equal(r.pruned, 4);
  assert.deepEqual(
    fake.takeCalls().map((c) => `${c.op} ${c.object}`).sort(),
    ["deletePolicy 10.1.0.0/16->10.7.0.0/16 out", "deleteSa 192.0.2.2/esp/0xc0000002", "deleteSa 192.0.2.2/esp/0xc0000003", "deleteSa 192.0.2.2/esp/0xc0000004"],
  );
  assert.deepEqual([...fake.sas.keys()].map((k) => Number(k.split("|")[1]).toString(16)).sort(), ["c0000001", "c0000005", "c0000006"]);
  assert.equal(fake.policies.size, ikeBypassPolicies().length + 1 + 3, "desired, bypass and strangers' policies stay");
  assert.deepEqual(await dp.reconcile(), { repaired: 0, pruned: 0, unchanged: 2 + ikeBypassPolicies().length }, "a second reconcile changes nothing");
  // a policy we installed and the agent deleted from the table behind the backend's back (no template): pruned by key
  await dp.addPolicy({ ...policy({ selector: sel("10.1.0.0", 16, "10.3.0.0", 16) }), action: dataplane.PolicyAction.POLICY_ACTION_DROP, template: undefined });
  (dp as unknown as { policies: Map<string, unknown> }).policies.delete([...(dp as unknown as { policies: Map<string, unknown> }).policies.keys()].find((k) => k.startsWith("10.1.0.0|16|10.3.0.0"))!);
  assert.equal((await dp.reconcile()).pruned, 1);
  await dp.stop();
});

test("events: expire carries the agent's ids; backlog is bounded and overflow reported", async () => {
  const fake = new FakeBackend();
  const dp = new Dataplane({ backend: fake, driftIntervalMs: 0, eventBacklog: 2 });
  await dp.start();
  await dp.addSa(sa(0xc0000001));
  fake.emit({ $case: "expire", value: { id: { dst: "192.0.2.2", spi: 0xc0000001, protocol: 50 }, hard: false, childId: 0n, connection: "" } });
  for (let i = 0; i < 3; i++) fake.emit({ $case: "acquire", value: { policySelector: policy().selector, reqid: 7, packet: undefined, src: "192.0.2.1", dst: "192.0.2.2" } });
  const got: dataplane.Event[] = [];
  dp.watch((e) => got.push(e));
  assert.equal(got[0].kind?.$case, "error");
  assert.equal((got[0].kind!.value as dataplane.DataplaneError).code, "EVENT_OVERFLOW");
  assert.equal(got.length, 3);
  fake.emit({ $case: "expire", value: { id: { dst: "192.0.2.2", spi: 0xc0000001, protocol: 50 }, hard: true, childId: 0n, connection: "" } });
  const exp = got.at(-1)!.kind!.value as dataplane.Expire;
  assert.equal(exp.childId, 42n);
  assert.equal(exp.connection, "site-a");
  assert.equal(dp.sizes().sas, 0, "hard expire removes the SA from the desired state");
  await dp.stop();
});

test("gRPC: server on a 0600 Unix socket, idempotent calls, errors with codes, event stream", async (t) => {
  const fake = new FakeBackend();
  const dp = new Dataplane({ backend: fake, driftIntervalMs: 0 });
  await dp.start();
  const socket = join(mkdtempSync(join(tmpdir(), "fs-dp-")), "run", "dataplane.sock");
  const srv = await startDataplaneServer({ dataplane: dp, socket });
  t.after(async () => {
    await srv.close();
    await dp.stop();
  });
  assert.equal(statSync(socket).mode & 0o777, 0o600);
  const c = dataplaneClient(socket);
  t.after(() => c.close());
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  const call = (fn: (...a: any[]) => unknown, req: unknown): Promise<any> =>
    new Promise((resolve, reject) => fn.call(c, req, (e: Error | null, r: unknown) => (e ? reject(e) : resolve(r))));
  const caps = await call(c.getCapabilities, {});
  assert.equal(caps.backend, dataplane.Backend.BACKEND_FAKE);
  const { spi } = await call(c.allocateSpi, { src: "192.0.2.2", dst: "192.0.2.1", reqid: 7, min: 0, max: 0 });
  assert.ok(spi >= 0xc0000000 && spi <= 0xcfffffff);
  await call(c.addSa, { sa: sa(spi, { id: { dst: "192.0.2.1", spi, protocol: 50 }, src: "192.0.2.2", direction: dataplane.Direction.DIRECTION_IN }) });
  await call(c.addSa, { sa: sa(spi, { id: { dst: "192.0.2.1", spi, protocol: 50 }, src: "192.0.2.2", direction: dataplane.Direction.DIRECTION_IN }) });
  const pr = await call(c.addPolicy, { policy: policy() });
  assert.equal(pr.effectivePriority, derivePriority(policy().selector!));
  const list = await call(c.listSas, { connection: "site-a" });
  assert.equal(list.sas.length, 1);
  assert.equal(list.sas[0].sa?.encryptionKey.length, 0, "keys never leave the dataplane");
  assert.equal((await call(c.deleteSa, { id: { dst: "192.0.2.9", spi: 0x1000, protocol: 50 }, src: "" })).existed, false);
  await assert.rejects(call(c.addSa, { sa: sa(0x1000, { encryptionKey: Buffer.alloc(3) }) }), (e: Error & { code: number; metadata: { get(k: string): unknown[] } }) => {
    assert.equal(e.code, 3); // INVALID_ARGUMENT
    assert.deepEqual(e.metadata.get("fleetswan-code"), ["CONFIG_INVALID"]);
    return true;
  });
  fake.failNext = { op: "addPolicy", errno: 17 };
  await assert.rejects(call(c.addPolicy, { policy: policy({ selector: sel("10.5.0.0", 16, "10.6.0.0", 16) }) }), (e: Error & { code: number }) => e.code === 9);
  const stream = c.watchEvents({});
  const first = new Promise<dataplane.Event>((resolve) => stream.once("data", resolve));
  await new Promise((r) => setTimeout(r, 50));
  fake.emit({ $case: "acquire", value: { policySelector: policy().selector, reqid: 7, packet: sel("10.1.0.1", 32, "10.2.0.1", 32), src: "192.0.2.1", dst: "192.0.2.2" } });
  const ev = await first;
  assert.equal(ev.kind?.$case, "acquire");
  stream.cancel();
  stream.on("error", () => undefined);
});

test("NAT-T datagram classification (RFC 3948 §2.2, §2.3)", () => {
  assert.deepEqual(classifyNattDatagram(Buffer.from([0xff])), { kind: "keepalive" });
  const ike = classifyNattDatagram(Buffer.from("00000000aabbccdd", "hex"));
  assert.equal(ike.kind, "ike");
  assert.equal(classifyNattDatagram(Buffer.from("c0000001000000010000", "hex")).kind, "esp");
});
