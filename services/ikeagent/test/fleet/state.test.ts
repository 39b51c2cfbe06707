import { test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, truncateSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fleet } from "@fleetswan/proto";
import { AgentState } from "../../src/fleet/state.js";

const view = (revision: bigint) => fleet.GatewayView.fromPartial({ gateway: "gw-a", revision, connections: [{ name: "a-b", secretRef: "psk.a-b" }] });
const sealed = (version: number) => fleet.SealedSecret.fromPartial({ gateway: "gw-a", secretRef: "psk.a-b", version, nonce: Buffer.alloc(12), ciphertext: Buffer.alloc(40, version) });

function tmp(t: { after: (fn: () => void) => void }): string {
  const dir = mkdtempSync(join(tmpdir(), "fs-state-"));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

test("state: views alternate between two slots; a new instance loads the newest", (t) => {
  const dir = tmp(t);
  const s = new AgentState(dir);
  assert.equal(s.loadView(), undefined);
  s.saveView(view(1n));
  s.saveView(fleet.GatewayView.encode(view(2n)).finish()); // the bytes as received
  s.saveView(view(3n));
  assert.deepEqual(readdirSync(dir).filter((f) => f.startsWith("view")).sort(), ["view.pb.0", "view.pb.1"]);
  assert.equal(statSync(join(dir, "view.pb.0")).mode & 0o777, 0o600);
  assert.equal(new AgentState(dir).loadView()?.revision, 3n);
  assert.equal(s.loadView()?.revision, 3n);
});

test("state: a torn or damaged write leaves the previous view in force", (t) => {
  const dir = tmp(t);
  const s = new AgentState(dir);
  s.saveView(view(1n)); // slot 0
  s.saveView(view(2n)); // slot 1
  const f = join(dir, "view.pb.1");
  const full = readFileSync(f);
  truncateSync(f, full.length - 5); // torn: shorter than its length says
  assert.equal(new AgentState(dir).loadView()?.revision, 1n);
  const bad = Buffer.from(full);
  bad[bad.length - 1]! ^= 1; // a flipped bit: CRC mismatch
  writeFileSync(f, bad);
  const s2 = new AgentState(dir);
  assert.equal(s2.loadView()?.revision, 1n);
  // The next write goes to the damaged slot, not over the good one.
  s2.saveView(view(3n));
  assert.equal(new AgentState(dir).loadView()?.revision, 3n);
  truncateSync(join(dir, "view.pb.1"), 3);
  assert.equal(new AgentState(dir).loadView()?.revision, 1n);
});

test("state: files of the single-file format are read, and replaced by the first write", (t) => {
  const dir = tmp(t);
  writeFileSync(join(dir, "view.pb"), fleet.GatewayView.encode(view(7n)).finish());
  new AgentState(dir); // creates sealed/
  writeFileSync(join(dir, "sealed", "psk.a-b.pb"), fleet.SealedSecret.encode(sealed(4)).finish());
  const s = new AgentState(dir);
  assert.equal(s.loadView()?.revision, 7n);
  assert.equal(s.loadSealed().get("psk.a-b")?.version, 4);
  s.saveView(view(8n));
  assert.equal(existsSync(join(dir, "view.pb")), false);
  assert.equal(new AgentState(dir).loadView()?.revision, 8n);
  s.saveSealed("psk.a-b", sealed(5));
  assert.equal(existsSync(join(dir, "sealed", "psk.a-b.pb")), false);
  assert.equal(new AgentState(dir).loadSealed().get("psk.a-b")?.version, 5);
});

test("state: sealed blobs by name, newest slot wins, delete removes every file", (t) => {
  const dir = tmp(t);
  const s = new AgentState(dir);
  s.saveSealed("psk.a-b", sealed(1));
  s.saveSealed("psk.a-b", fleet.SealedSecret.encode(sealed(2)).finish());
  s.saveSealed("cert.gw-a", fleet.SealedSecret.fromPartial({ ...sealed(9), secretRef: "cert.gw-a" }));
  const loaded = new AgentState(dir).loadSealed();
  assert.deepEqual([...loaded.keys()].sort(), ["cert.gw-a", "psk.a-b"]);
  assert.equal(loaded.get("psk.a-b")?.version, 2);
  s.deleteSealed("psk.a-b");
  assert.deepEqual(readdirSync(join(dir, "sealed")).sort(), ["cert.gw-a.pb.0"]);
  assert.deepEqual([...new AgentState(dir).loadSealed().keys()], ["cert.gw-a"]);
  // Written again after the delete: a fresh sequence, still the newest.
  s.saveSealed("psk.a-b", sealed(3));
  assert.equal(new AgentState(dir).loadSealed().get("psk.a-b")?.version, 3);
});
