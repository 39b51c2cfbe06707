import { test } from "node:test";
import assert from "node:assert/strict";
import { ReplayWindow, REPLAY_DUPLICATE, REPLAY_TOO_OLD, REPLAY_ZERO } from "../../src/userspace/replay.js";

const TWO32 = 0x100000000;

function take(w: ReplayWindow, low: number): number {
  const s = w.check(low);
  if (s >= 0) w.accept(s);
  return s;
}

test("replay: in-order, duplicate, out of order inside the window", () => {
  const w = new ReplayWindow(1024, false);
  for (let i = 1; i <= 100; i++) assert.equal(take(w, i), i);
  assert.equal(w.check(100), REPLAY_DUPLICATE);
  assert.equal(w.check(50), REPLAY_DUPLICATE);
  assert.equal(take(w, 200), 200);
  assert.equal(take(w, 150), 150, "a gap inside the window is accepted once");
  assert.equal(w.check(150), REPLAY_DUPLICATE);
});

test("replay: sequence number 0 is invalid without ESN (RFC 4303 §3.3.3)", () => {
  assert.equal(new ReplayWindow(64, false).check(0), REPLAY_ZERO);
});

test("replay: too old is left of the window, the edge is still inside", () => {
  const w = new ReplayWindow(64, false);
  take(w, 1000);
  assert.equal(w.check(1000 - 64), REPLAY_TOO_OLD);
  assert.equal(w.check(1000 - 63), 1000 - 63, "top - size + 1 is the window's left edge");
  assert.equal(take(w, 1000 - 63), 1000 - 63);
  assert.equal(w.check(1000 - 63), REPLAY_DUPLICATE);
});

test("replay: a big advance clears the whole bitmap (no stale bits)", () => {
  const w = new ReplayWindow(128, false);
  for (let i = 1; i <= 300; i++) take(w, i);
  take(w, 100_000);
  for (let s = 100_000 - 127; s < 100_000; s++) assert.equal(w.check(s), s, `seq ${s} must be fresh`);
  // advance by exactly one block boundary and check the reused word is clean
  const w2 = new ReplayWindow(64, false);
  for (let i = 1; i <= 64; i++) take(w2, i);
  take(w2, 64 + 96);
  for (let s = 64 + 96 - 63; s < 64 + 96; s++) assert.equal(w2.check(s), s);
});

test("replay: check() does not move the window; only accept() does (ICV first)", () => {
  const w = new ReplayWindow(32, false);
  take(w, 10);
  assert.equal(w.check(5000), 5000);
  assert.equal(w.top, 10);
  assert.equal(take(w, 9), 9);
});

test("replay: window 0 turns the check off", () => {
  const w = new ReplayWindow(0, false);
  assert.equal(take(w, 5), 5);
  assert.equal(take(w, 5), 5);
  assert.equal(take(w, 1), 1);
});

test("replay: window sizes that are not multiples of 32", () => {
  const w = new ReplayWindow(100, false);
  take(w, 1000);
  assert.equal(w.check(900), REPLAY_TOO_OLD);
  assert.equal(w.check(901), 901);
});

test("ESN: high bits inferred across the 2^32 wrap (RFC 4303 Appendix A2.2)", () => {
  const w = new ReplayWindow(1024, true);
  take(w, 0xfffffff0);
  assert.equal(w.top, 0xfffffff0);
  // low wraps to small numbers: next subspace
  assert.equal(take(w, 5), TWO32 + 5);
  // late packet from before the wrap, inside the window: previous subspace, accepted once
  assert.equal(take(w, 0xfffffff5), 0xfffffff5);
  assert.equal(w.check(0xfffffff5), REPLAY_DUPLICATE);
  // sequence 0 of the new subspace is valid with ESN
  assert.equal(take(w, 0), TWO32);
  assert.equal(w.check(0), REPLAY_DUPLICATE);
  // advance well into the new subspace; old low numbers now mean the next wrap
  take(w, 5000);
  assert.equal(w.top, TWO32 + 5000);
  assert.equal(w.check(4000), TWO32 + 4000);
  // low 10 is left of the window in this subspace, so Appendix A2.2 places it in the next
  // one (2^33 + 10): accepted by the window, then rejected by the ICV (wrong high bits)
  assert.equal(w.check(10), 2 * TWO32 + 10);
  assert.equal(w.check(3977), TWO32 + 3977, "the left edge of the window is inside");
});

test("ESN: first subspace has no lower neighbour", () => {
  const w = new ReplayWindow(1024, true);
  assert.equal(take(w, 1), 1);
  assert.equal(take(w, 3), 3);
  assert.equal(take(w, 2), 2);
});
