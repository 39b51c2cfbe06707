/** Unit: lab/fleet.yaml is the rendering of the lab's model (so `up` and the e2e tests build one fleet). */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { labTunnels, makeLabConfig, parsePingSummary, analyseFlow, renderLabSpec, renderSwanctlConf } from '@fleetswan/lab';
import { REPO } from './common.js';

test('lab/fleet.yaml equals renderLabSpec(default lab)', () => {
  const c = makeLabConfig({ repoDir: REPO });
  assert.equal(readFileSync(resolve(REPO, 'lab/fleet.yaml'), 'utf8'), renderLabSpec(c),
    'lab/fleet.yaml is out of date: regenerate it from lab/src/spec.ts (see docs/lab.md)');
});

test('the default lab is a full mesh: a-b (fleet), a-c and b-c (strongSwan peer)', () => {
  const t = labTunnels(makeLabConfig({ repoDir: REPO }));
  assert.deepEqual(t.map((x) => `${x.name}:${x.kind}`), ['a-b:fleet', 'a-c:peer', 'b-c:peer']);
});

test('gw-c swanctl.conf has one responder connection per fleet gateway with encap and matching PSKs', () => {
  const c = makeLabConfig({ repoDir: REPO });
  const conf = renderSwanctlConf(c.gateways[2]!, labTunnels(c));
  assert.match(conf, /a-c \{[\s\S]*remote_addrs = 192\.0\.2\.1[\s\S]*encap = yes/);
  assert.match(conf, /b-c \{[\s\S]*remote_addrs = 192\.0\.2\.2/);
  const spec = renderLabSpec(c);
  for (const m of conf.matchAll(/secret = "([^"]+)"/g)) assert.ok(spec.includes(m[1]!), 'PSK in swanctl.conf and in the spec agree');
});

test('ping summary and flow loss accounting', () => {
  assert.deepEqual(parsePingSummary('5 packets transmitted, 4 received, 20% packet loss, time 4005ms\nrtt min/avg/max/mdev = 0.1/0.25/0.4/0.1 ms'),
    { sent: 5, received: 4, rttAvgMs: 0.25 });
  const r = analyseFlow([1, 2, 3, 7, 8, 10], 10, 10, 1);
  assert.equal(r.lost, 4);
  assert.equal(r.bursts, 2);
  assert.equal(r.longestGapS, 0.03);
});
