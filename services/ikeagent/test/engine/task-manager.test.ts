import { test } from "node:test";
import assert from "node:assert/strict";
import { createLogger } from "@fleetswan/common";
import { ExchangeType } from "../../src/ike/wire/index.js";
import { IkeSa } from "../../src/ike/engine/sa.js";
import { DEFAULT_RETRANSMIT, TaskManager, type Task } from "../../src/ike/engine/task-manager.js";
import { IkeFailure } from "../../src/ike/engine/failure.js";

test("retransmission schedule: timeout(n) = base_timeout × 1.8^n, then give up (documented in task-manager.ts)", async (t) => {
  t.mock.timers.enable({ apis: ["setTimeout", "Date"] });
  const sends: number[] = [];
  let failure: IkeFailure | undefined;
  const sa = new IkeSa(1, true, Buffer.alloc(8, 1), { address: "192.0.2.1", port: 500 }, { address: "192.0.2.2", port: 500 });
  sa.tm = new TaskManager(sa, {
    log: createLogger("test", { level: "silent" }),
    retransmit: DEFAULT_RETRANSMIT,
    send: () => sends.push(Date.now()),
    respond: async () => undefined,
    onRetransmit: () => {},
  });
  const task: Task = {
    type: "ike_init",
    exchange: ExchangeType.IKE_SA_INIT,
    build: async () => [],
    process: async () => "done",
    failed: async (_sa, err) => void (failure = err),
  };
  sa.tm.queue(task);
  for (let i = 0; i < 10 && sends.length === 0; i++) await Promise.resolve();
  let failedAt = 0;
  for (let ms = 0; ms < 200_000; ms += 10) {
    t.mock.timers.tick(10);
    await Promise.resolve();
    if (failure && !failedAt) failedAt = Date.now();
  }
  const at = sends.map((s) => Math.round((s - sends[0]!) / 100) / 10);
  assert.deepEqual(at, [0, 4, 11.2, 24.2, 47.5, 89.5]);
  assert.equal(failure?.reason, "TIMEOUT");
  assert.equal(Math.round((failedAt - sends[0]!) / 100) / 10, 165.1);
});
