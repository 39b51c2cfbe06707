// Proves the NATS harness: real nats-server with JetStream, single node and a
// 3-node routed cluster that survives the loss of one node.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { connect, StringCodec, type NatsConnection } from 'nats';
import { startNats, startNatsCluster, NATS_SERVER } from './nats.js';
import { needExecutable, skipReason } from './util.js';

const sc = StringCodec();

test('nats: single JetStream server, KV put/get, restart keeps the store', async (t) => {
  const skip = skipReason(needExecutable(NATS_SERVER));
  if (skip) { t.skip(skip); return; }
  const nats = await startNats();
  t.after(() => nats.stop());
  let nc: NatsConnection = await connect({ servers: nats.url });
  t.after(() => nc.close());

  const bucket = `fs_h_${Date.now()}`;
  const kv = await nc.jetstream().views.kv(bucket);
  await kv.put('gw.a', sc.encode('up'));
  assert.equal((await kv.get('gw.a'))?.string(), 'up');

  // a restart on the same port and store keeps the data
  await nc.close();
  await nats.restart();
  nc = await connect({ servers: nats.url });
  const kv2 = await nc.jetstream().views.kv(bucket);
  assert.equal((await kv2.get('gw.a'))?.string(), 'up');
});

test('nats: confined user via config text cannot publish outside its subjects', async (t) => {
  const skip = skipReason(needExecutable(NATS_SERVER));
  if (skip) { t.skip(skip); return; }
  const nats = await startNats({
    jetstream: false,
    config: `authorization {
  users = [
    { user: admin, password: adminpw }
    { user: agent, password: agentpw, permissions: { publish: ["fs.agent.>"], subscribe: ["fs.agent.>", "_INBOX.>"] } }
  ]
}`,
  });
  t.after(() => nats.stop());
  const nc = await connect({ servers: nats.url, user: 'agent', pass: 'agentpw' });
  t.after(() => nc.close());
  const errors: string[] = [];
  (async () => { for await (const s of nc.status()) if (s.type === 'error') errors.push(String(s.data)); })().catch(() => {});
  nc.publish('fs.other', sc.encode('x'));
  await nc.flush();
  await assert.rejects(connect({ servers: nats.url, user: 'agent', pass: 'wrong' }));
  // the server reports the permissions violation asynchronously
  for (let i = 0; i < 50 && errors.length === 0; i++) await new Promise((r) => setTimeout(r, 50));
  assert.ok(errors.some((e) => /permissions[ _]violation/i.test(e)), `expected a permissions violation, got ${JSON.stringify(errors)}`);
});

test('nats: 3-node cluster, KV (R3) still writable after killing one node', async (t) => {
  const skip = skipReason(needExecutable(NATS_SERVER));
  if (skip) { t.skip(skip); return; }
  const cluster = await startNatsCluster(3);
  t.after(() => cluster.stop());
  const [n0, n1, n2] = cluster.nodes;
  assert.ok(n0 && n1 && n2);

  // connect only to the nodes that stay up
  const nc = await connect({ servers: [n1.url, n2.url] });
  t.after(() => nc.close());
  const kv = await nc.jetstream().views.kv(`fs_c_${Date.now()}`, { replicas: 3 });
  await kv.put('k', sc.encode('1'));

  await n0.kill();
  assert.equal(n0.running, false);
  // R3 stream keeps quorum with 2 of 3 (may need a leader election first)
  let ok = false;
  for (let i = 0; i < 40 && !ok; i++) {
    try { await kv.put('k', sc.encode('2')); ok = true; } catch { await new Promise((r) => setTimeout(r, 250)); }
  }
  assert.ok(ok, 'KV put failed after killing one of three nodes');
  assert.equal((await kv.get('k'))?.string(), '2');

  await n0.restart();
  assert.equal(n0.running, true);
  await kv.put('k', sc.encode('3'));
  assert.equal((await kv.get('k'))?.string(), '3');
});
