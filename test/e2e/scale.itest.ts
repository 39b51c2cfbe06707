/**
 * Scale on one machine: N fleetswan gateways (default 50; FLEETSWAN_E2E_SCALE=N runs it),
 * hub-and-spoke (gw-01 is the hub: N-1 tunnels), userspace ESP. The gateways are enrolled
 * and running on a spec without connections; then the tunnels are applied and the clock
 * runs from `fleetswan apply` until `fleetswan status` shows every connection end up.
 * Prints convergence time and the memory (RSS) of the agents and dataplanes per tunnel.
 */
import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { Lab, makeGateway, sleep, waitFor } from '@fleetswan/lab';
import { assertServicesPresent, e2eLab, labPreconditions, logger, table } from './common.js';

const N = Number(process.env.FLEETSWAN_E2E_SCALE ?? 0);
const skip = N > 0 ? labPreconditions() : 'scale run: set FLEETSWAN_E2E_SCALE=50 (50 gateways, 100 node processes, about 5 minutes)';
const log = logger('scale');

const rssKb = (pid: number | undefined): number => {
  if (!pid) return 0;
  try {
    return Number(readFileSync(`/proc/${pid}/status`, 'utf8').match(/VmRSS:\s+(\d+)/)?.[1] ?? 0);
  } catch {
    return 0;
  }
};

describe(`e2e scale: ${N || 50} gateways, hub and spoke`, { skip: skip ?? false, timeout: 1_800_000 }, () => {
  let lab: Lab | undefined;
  after(async () => {
    if (lab && process.env.FLEETSWAN_KEEP_LAB !== '1') await lab.down();
  });

  test('apply -> all tunnels established; memory per tunnel', async () => {
    await assertServicesPresent();
    const mgmt = '198.18.3';
    const gws = Array.from({ length: N }, (_, i) => makeGateway(i + 1, String(i + 1).padStart(2, '0'), 'fleetswan', mgmt, false));
    lab = await e2eLab('e2escale', mgmt, { gateways: gws, siteHosts: false });
    const l = lab;
    l.topology = 'hub';
    const t0 = Date.now();
    await l.up({ topology: 'hub', specOptions: { omitTunnels: true }, verify: false, step: log });
    await waitFor(`all ${N} agents reporting`, async () => {
      const s = await l.fleetStatus();
      return (s.gateways ?? []).filter((g) => g.state === 'up').length === N;
    }, { timeoutMs: 180_000, intervalMs: 1000 });
    const startS = (Date.now() - t0) / 1000;
    const procs = (kind: string): number[] => gws.map((g) => rssKb(l.pid(`${g.name}.${kind}`)));
    const base = { agent: procs('ikeagent'), dp: procs('dataplane') };

    const t1 = Date.now();
    await l.apply(l.renderSpec({ topology: 'hub' }), 'scale.yaml');
    const convergeS = await l.waitAllUp(600_000, log);
    const applyToUpS = (Date.now() - t1) / 1000;
    await sleep(3000);
    const now = { agent: procs('ikeagent'), dp: procs('dataplane') };
    const tunnels = l.tunnels.length;
    const sum = (a: number[]): number => a.reduce((x, y) => x + y, 0);
    const mb = (kb: number): string => (kb / 1024).toFixed(1);
    const rows: (string | number)[][] = [['figure', 'value'],
      ['gateways / tunnels (hub and spoke)', `${N} / ${tunnels}`],
      ['namespaces + daemons + enrollment until all agents report', `${startS.toFixed(1)} s`],
      ['apply -> every connection end up (fleetswan status)', `${applyToUpS.toFixed(1)} s (waited ${convergeS.toFixed(1)} s)`],
      ['hub ikeagent RSS before -> after', `${mb(base.agent[0]!)} -> ${mb(now.agent[0]!)} MB (${((now.agent[0]! - base.agent[0]!) / (N - 1)).toFixed(0)} kB per tunnel)`],
      ['hub dataplane RSS before -> after', `${mb(base.dp[0]!)} -> ${mb(now.dp[0]!)} MB (${((now.dp[0]! - base.dp[0]!) / (N - 1)).toFixed(0)} kB per tunnel)`],
      ['all ikeagents RSS total (after)', `${mb(sum(now.agent))} MB = ${mb(sum(now.agent) / tunnels)} MB per tunnel`],
      ['all dataplanes RSS total (after)', `${mb(sum(now.dp))} MB = ${mb(sum(now.dp) / tunnels)} MB per tunnel`],
      ['agent+dataplane RSS growth per tunnel end', `${((sum(now.agent) + sum(now.dp) - sum(base.agent) - sum(base.dp)) / (2 * tunnels)).toFixed(0)} kB`],
    ];
    // stable? 20 s later every end must still be up, and traffic must flow spoke -> hub
    await sleep(20_000);
    const later = await l.notUp();
    const hub = gws[0]!;
    const sample = [gws[1]!, gws[Math.floor(N / 2)]!, gws[N - 1]!];
    const pings: string[] = [];
    for (const g of sample) {
      const p = await l.exec(g.name, ['ping', '-c', '3', '-i', '0.2', '-W', '2', '-I', g.siteGwAddr, hub.siteGwAddr], { allowFail: true });
      const m = p.stdout.match(/(\d+) received/);
      pings.push(`${g.name}->${hub.name} ${m ? m[1] : 0}/3`);
    }
    rows.push(['20 s later: connection ends not up', later.length === 0 ? 'none' : `${later.length}: ${later.slice(0, 2).join('; ')}${later.length > 2 ? '; ...' : ''}`]);
    rows.push(['ping spoke site -> hub site (3 samples)', pings.join(', ')]);
    process.stderr.write(`\n# e2e scale figures\n${table(rows).replace(/^/gm, '# ')}\n`);
    assert.deepEqual(later, [], `20 s after convergence ${later.length} connection ends are no longer up`);
    assert.ok(pings.every((x) => x.endsWith(' 3/3')), `traffic spoke -> hub: ${pings.join(', ')}`);
  });
});
