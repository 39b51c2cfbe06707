/**
 * Scale on one machine: N fleetswan gateways (default 50; FLEETSWAN_E2E_SCALE=N runs it),
 * hub-and-spoke (gw-01 is the hub: N-1 tunnels), userspace ESP. The gateways are enrolled
 * and running on a spec without connections; then the tunnels are applied and the clock
 * runs from `fleetswan apply` until `fleetswan status` shows every connection end up.
 * Then what a user checks: `fleetswan status` still shows every gateway up and every end
 * established 20 s later, one IKE SA and one CHILD SA per tunnel end, and pings go through a
 * sample of tunnels both ways (spoke site -> hub site, hub site -> spoke site). Prints the
 * convergence time, the load average and the memory (RSS) of the agents and dataplanes per
 * tunnel. Instance "e2escale" on 198.18.3.0/24 (e2escale1.. while another run holds it).
 */
import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { Lab, makeGateway, sleep, waitFor, type LabGateway } from '@fleetswan/lab';
import { assertServicesPresent, e2eLab, keptLabHint, labPreconditions, logger, table } from './common.js';

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

const loadavg = (): string => readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ');

describe(`e2e scale: ${N || 50} gateways, hub and spoke`, { skip: skip ?? false, timeout: 1_800_000 }, () => {
  let lab: Lab | undefined;
  after(async () => {
    if (lab && process.env.FLEETSWAN_KEEP_LAB === '1') process.stderr.write(`# ${keptLabHint(lab)}\n`);
    else if (lab) await lab.down();
  });

  test('apply -> all tunnels established; traffic both ways through sample tunnels; memory per tunnel', async () => {
    await assertServicesPresent();
    const mkGws = (mgmt: string): LabGateway[] =>
      Array.from({ length: N }, (_, i) => makeGateway(i + 1, String(i + 1).padStart(2, '0'), 'fleetswan', mgmt, false));
    lab = await e2eLab('e2escale', '198.18.3', { gateways: mkGws, siteHosts: false });
    const l = lab;
    const gws = l.c.gateways;
    const hub = gws[0]!;
    const spokes = gws.slice(1);
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

    const load0 = loadavg();
    log(`fleetswan apply: ${N - 1} tunnels (load average ${load0})`);
    const t1 = Date.now();
    await l.apply(l.renderSpec({ topology: 'hub' }), 'scale.yaml');
    await l.waitAllUp(600_000, log);
    const applyToUpS = (Date.now() - t1) / 1000;
    const load1 = loadavg();
    await sleep(3000);
    const now = { agent: procs('ikeagent'), dp: procs('dataplane') };
    const tunnels = l.tunnels.length;
    const sum = (a: number[]): number => a.reduce((x, y) => x + y, 0);
    const mb = (kb: number): string => (kb / 1024).toFixed(1);
    const perTunnel = (before: number, after: number, n: number): string => `${mb(before)} -> ${mb(after)} MB: ${((after - before) / 1024 / n).toFixed(2)} MB per tunnel`;
    const spokeGrowth = (k: 'agent' | 'dp'): number => (sum(now[k].slice(1)) - sum(base[k].slice(1))) / spokes.length;
    const rows: (string | number)[][] = [['figure', 'value'],
      ['gateways / tunnels (hub and spoke)', `${N} / ${tunnels}`],
      ['namespaces + daemons + enrollment until all agents report', `${startS.toFixed(1)} s`],
      ['apply -> every connection end up (fleetswan status)', `${applyToUpS.toFixed(1)} s`],
      ['load average (1, 5, 15 min) at apply / at all up', `${load0} / ${load1}`],
      [`hub ikeagent RSS (${tunnels} tunnels)`, perTunnel(base.agent[0]!, now.agent[0]!, tunnels)],
      [`hub dataplane RSS (${tunnels} tunnels)`, perTunnel(base.dp[0]!, now.dp[0]!, tunnels)],
      ['spoke ikeagent / dataplane RSS growth (1 tunnel each, mean)', `${mb(spokeGrowth('agent'))} / ${mb(spokeGrowth('dp'))} MB`],
      [`all ${2 * N} ikeagent + dataplane processes, RSS (after)`, `${mb(sum(now.agent) + sum(now.dp))} MB, ${mb((sum(now.agent) + sum(now.dp)) / N)} MB per gateway (node's ~75 MB baseline per process included)`],
    ];
    const report = (): void => { process.stderr.write(`\n# e2e scale figures\n${table(rows).replace(/^/gm, '# ')}\n`); };

    // What a user checks: `fleetswan status` says every gateway up and every connection end
    // established, with one IKE SA and one CHILD SA per tunnel end (no duplicates), still 20 s later.
    await sleep(20_000);
    const later = await l.notUp();
    rows.push(['20 s later: connection ends not up', later.length === 0 ? 'none' : `${later.length}: ${later.slice(0, 3).join('; ')}${later.length > 3 ? '; ...' : ''}`]);
    const ends = 2 * tunnels;
    const want = `${N}/${N} gateways up, ${ends}/${ends} connection ends established`;
    let summary = '';
    let counts = '';
    const countsOk = async (): Promise<boolean> => {
      const text = (await l.fleetswan(['status'], { timeoutMs: 20_000 })).stdout;
      summary = text.split('\n')[0] ?? '';
      const gs = (await l.fleetStatus()).gateways ?? [];
      const sas = (name: string): string => { const g = gs.find((x) => x.name === name); return `${g?.ikeSas ?? 0}/${g?.childSas ?? 0}`; };
      const odd = spokes.filter((g) => sas(g.name) !== '1/1').map((g) => `${g.name} ${sas(g.name)}`);
      counts = `hub ${sas(hub.name)}; spokes not 1/1: ${odd.length ? odd.join(', ') : 'none'}`;
      return summary.includes(want) && sas(hub.name) === `${tunnels}/${tunnels}` && odd.length === 0;
    };
    // statuses are republished every 10 s: a duplicate being deleted may still be counted once
    const statusOk = await waitFor('fleetswan status: all established, one IKE and one CHILD SA per end', countsOk, { timeoutMs: 30_000, intervalMs: 2000 }).then(() => true, () => false);
    rows.push(['fleetswan status', summary]);
    rows.push(['IKE SAs / CHILD SAs per gateway', counts]);

    // traffic through a sample of tunnels, both ways: spoke site -> hub site and hub site -> spoke site
    const sample = [...new Set([spokes[0]!, spokes[Math.floor(spokes.length / 2)]!, spokes[spokes.length - 1]!])];
    const pings: string[] = [];
    const pingFrom = async (from: LabGateway, to: LabGateway): Promise<void> => {
      const p = await l.exec(from.name, ['ping', '-c', '3', '-i', '0.2', '-W', '2', '-I', from.siteGwAddr, to.siteGwAddr], { allowFail: true });
      pings.push(`${from.name}->${to.name} ${p.stdout.match(/(\d+) received/)?.[1] ?? 0}/3`);
    };
    for (const g of sample) {
      await pingFrom(g, hub);
      await pingFrom(hub, g);
    }
    rows.push(['ping site to site (3 each)', pings.join(', ')]);
    report();
    assert.deepEqual(later, [], `20 s after convergence ${later.length} connection ends are no longer up`);
    assert.ok(statusOk, `fleetswan status: want "${want}", one IKE SA and one CHILD SA per tunnel end; got "${summary}", ${counts}`);
    assert.ok(pings.every((x) => x.endsWith(' 3/3')), `traffic through the hub: ${pings.join(', ')}`);
  });
});
