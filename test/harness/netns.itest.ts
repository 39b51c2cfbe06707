// Proves the netns harness: namespaces + veth + routes + forwarding, exec and
// spawn, and that destroy() leaves nothing of the run behind.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createTopology, listNetns } from './netns.js';
import { needRoot, skipReason } from './util.js';

test('netns: two namespaces ping across a veth; destroy removes everything', async (t) => {
  const skip = skipReason(needRoot());
  if (skip) { t.skip(skip); return; }
  const net = await createTopology({
    nodes: { a: { lo: ['10.1.0.1/32'] }, b: { lo: ['10.2.0.1/32'] } },
    links: [{ a: 'a', b: 'b', aAddr: '192.0.2.1/24', bAddr: '192.0.2.2/24' }],
    routes: [
      { node: 'a', to: '10.2.0.0/16', via: '192.0.2.2', src: '10.1.0.1' },
      { node: 'b', to: '10.1.0.0/16', via: '192.0.2.1', src: '10.2.0.1' },
    ],
  });
  t.after(() => net.destroy());
  assert.match(net.ns.a!, /^fs-a-[0-9a-z]+$/);
  assert.deepEqual((await listNetns()).filter((n) => n.endsWith(`-${net.runId}`)).sort(), [net.ns.a, net.ns.b].sort());

  const r = await net.exec('a', ['ping', '-c', '2', '-W', '2', '192.0.2.2']);
  assert.match(r.stdout, /2 received/);
  // site to site via the routes
  await net.exec('a', ['ping', '-c', '1', '-W', '2', '-I', '10.1.0.1', '10.2.0.1']);
  assert.equal(net.ifName('a', 'b'), 'v-b');

  // a spawned process lives in the namespace and is killed by destroy()
  const sleeper = net.spawn('b', ['sleep', '600']);
  const link = await net.exec('b', ['readlink', `/proc/${sleeper.pid}/ns/net`]);
  const mine = await net.exec('b', ['readlink', '/proc/self/ns/net']);
  assert.equal(link.stdout.trim(), mine.stdout.trim());

  await net.destroy();
  assert.equal(sleeper.running, false);
  assert.deepEqual((await listNetns()).filter((n) => n.endsWith(`-${net.runId}`)), []);
});

test('netns: a router in the middle forwards between two sites', async (t) => {
  const skip = skipReason(needRoot());
  if (skip) { t.skip(skip); return; }
  const net = await createTopology({
    nodes: { l: {}, r: { forward: true }, x: {} },
    links: [
      { a: 'l', b: 'r', aAddr: '198.51.100.2/24', bAddr: '198.51.100.1/24' },
      { a: 'r', b: 'x', aAddr: '203.0.113.1/24', bAddr: '203.0.113.2/24' },
    ],
    routes: [
      { node: 'l', to: 'default', via: '198.51.100.1' },
      { node: 'x', to: 'default', via: '203.0.113.1' },
    ],
  });
  t.after(() => net.destroy());
  const fwd = await net.exec('r', ['sysctl', '-n', 'net.ipv4.ip_forward']);
  assert.equal(fwd.stdout.trim(), '1');
  await net.exec('l', ['ping', '-c', '1', '-W', '2', '203.0.113.2']);
});
