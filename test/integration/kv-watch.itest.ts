/**
 * KeyWatcher (every service's KV watch) on a 3-node NATS cluster: the node that holds the
 * watcher's consumer is killed; changes and deletes made afterwards through a surviving
 * node still arrive, through a new consumer.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { connect, type NatsConnection } from "nats";
import { KeyWatcher, createLogger, type KvChange } from "@fleetswan/common";
import { startNatsCluster, waitFor, needExecutable, skipReason, NATS_SERVER } from "../harness/index.js";

const log = createLogger("itest", { level: process.env.FLEETSWAN_TEST_LOG ?? "silent" });
const text = (c: KvChange | undefined) => (c ? `${c.op}:${new TextDecoder().decode(c.value)}@${c.revision}` : "nothing");

test("KV watch on a 3-node cluster: the node holding the consumer dies, later changes still arrive", { timeout: 180_000 }, async (t) => {
  const skip = skipReason(needExecutable(NATS_SERVER));
  if (skip) { t.skip(skip); return; }
  const cleanup: Array<() => Promise<unknown>> = [];
  t.after(async () => { for (const f of cleanup.reverse()) await f().catch(() => undefined); });
  const cluster = await startNatsCluster(3);
  cleanup.push(() => cluster.stop());
  const conn = async (first: number): Promise<NatsConnection> => {
    const c = await connect({ servers: [...cluster.servers.slice(first), ...cluster.servers.slice(0, first)], noRandomize: true, maxReconnectAttempts: -1, reconnectTimeWait: 200 });
    cleanup.push(() => c.close());
    return c;
  };
  const admin = await conn(0);
  const kv = await admin.jetstream().views.kv("watch-test", { history: 1, replicas: 3 });
  await kv.put("a", "1");
  const jsm = await admin.jetstreamManager();
  const leaderName = (await jsm.streams.info("KV_watch-test")).cluster?.leader;
  const leader = cluster.nodes.findIndex((n) => n.name === leaderName);
  assert.ok(leader >= 0, `stream leader ${leaderName} is one of the nodes`);

  // The watcher connects to the leader's node (its consumer is created there too).
  const seen = new Map<string, KvChange>();
  let syncs = 0;
  const w = new KeyWatcher({ nc: await conn(leader), bucket: "watch-test", key: ">", log, heartbeatMs: 500, onChange: (c) => seen.set(c.key, c), onSynced: () => syncs++ });
  cleanup.push(async () => w.stop());
  w.start();
  await w.waitSynced(10_000);
  assert.equal(text(seen.get("a")), `PUT:1@${(await kv.get("a"))!.revision}`, "initial value with its KV revision");
  await kv.put("a", "2");
  await waitFor("change before the kill", () => text(seen.get("a")).startsWith("PUT:2"), { timeoutMs: 10_000 });

  // The node that holds the watcher's consumer dies (with it, the watcher's connection, if
  // the consumer is on the stream leader as usual).
  const consumers = await jsm.consumers.list("KV_watch-test").next();
  assert.equal(consumers.length, 1, "one consumer: the watcher's");
  const victim = cluster.nodes.findIndex((n) => n.name === consumers[0]!.cluster?.leader);
  assert.ok(victim >= 0, `the consumer's node ${consumers[0]!.cluster?.leader} is one of the nodes`);
  t.diagnostic(`stream leader n${leader}, consumer on n${victim}, watcher connected to n${leader}`);
  await cluster.nodes[victim]!.kill();
  const survivor = await conn((victim + 1) % 3);
  // Requests fail until the stream has a new leader.
  const kv2 = await waitFor("bucket through a surviving node", () => survivor.jetstream().views.kv("watch-test", { bindOnly: true }).catch(() => undefined), { timeoutMs: 60_000, intervalMs: 500 });
  await waitFor("put after the kill", () => kv2.put("a", "3").then(() => true, () => false), { timeoutMs: 60_000, intervalMs: 500 });
  await kv2.put("b", "x");
  await kv2.delete("b");
  await waitFor("changes after the kill", () => text(seen.get("a")).startsWith("PUT:3") && seen.get("b")?.op === "DEL", { timeoutMs: 30_000, intervalMs: 200 })
    .catch((e) => { throw new Error(`${(e as Error).message}: a=${text(seen.get("a"))} b=${text(seen.get("b"))} syncs=${syncs}`); });
  assert.ok(syncs >= 2, `the watcher resubscribed (synced ${syncs} times)`);
});
