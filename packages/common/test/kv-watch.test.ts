import { test } from "node:test";
import assert from "node:assert/strict";
import { parseAckSubject } from "../src/kv-watch.js";

test("parseAckSubject: stream sequence and pending of both reply-subject forms", () => {
  // nats-server 2.9: $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<dseq>.<ts>.<pending>
  assert.deepEqual(parseAckSubject("$JS.ACK.KV_fleet-views.c1.1.42.7.1700000000000000000.3"), { streamSeq: 42, pending: 3 });
  // 2.10+: $JS.ACK.<domain>.<account>.<stream>.<consumer>.<delivered>.<sseq>.<dseq>.<ts>.<pending>.<token>
  assert.deepEqual(parseAckSubject("$JS.ACK._.ACCHASH.KV_fleet-views.c1.1.42.7.1700000000000000000.0.tok"), { streamSeq: 42, pending: 0 });
  assert.deepEqual(parseAckSubject("$JS.ACK._.ACCHASH.KV_fleet-views.c1.1.43.8.1700000000000000000.0"), { streamSeq: 43, pending: 0 });
  assert.equal(parseAckSubject(""), undefined);
  assert.equal(parseAckSubject("_INBOX.abc.def"), undefined);
  assert.equal(parseAckSubject("$JS.ACK.s.c.1.x.7.1.0"), undefined, "a sequence that is not a number");
});
