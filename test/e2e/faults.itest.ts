/**
 * End to end: faults, one at a time, with traffic running (100 packets/s through a-b and
 * through a-c, the strongSwan peer). For each fault: lost packets, the longest outage and
 * the seconds until every tunnel is up again; the table is printed at the end.
 * Own lab (instance "e2efault", or e2efault1.. while another run holds it: see e2eLab).
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { PingFlow, nsHost, ping, sleep, type FlowResult, type Lab } from '@fleetswan/lab';
import { EventLog, assertServicesPresent, e2eLab, keptLabHint, labPreconditions, logger, table } from './common.js';

const skip = labPreconditions();
const log = logger('faults');

interface FaultRow {
  fault: string;
  ab: FlowResult;
  ac: FlowResult;
  recoveryS: number;
  ikeUps: number;
  note: string;
}

describe('e2e faults (one at a time, traffic running)', { skip: skip ?? false, concurrency: false, timeout: 900_000 }, () => {
  let lab: Lab;
  const rows: FaultRow[] = [];

  before(async () => {
    await assertServicesPresent();
    lab = await e2eLab('e2efault', '198.18.2');
    await lab.up({ step: log, tunnelTimeoutMs: 90_000 });
  });

  after(async () => {
    const t: (string | number)[][] = [['fault', 'lost a-b', 'lost a-c', 'longest gap a-b', 'longest gap a-c', 'all up after (s)', 'IKE_SAs set up', 'note']];
    for (const r of rows) t.push([r.fault, `${r.ab.lost}/${r.ab.sent}`, `${r.ac.lost}/${r.ac.sent}`, `${r.ab.longestGapS.toFixed(2)} s`, `${r.ac.longestGapS.toFixed(2)} s`, r.recoveryS.toFixed(1), r.ikeUps, r.note]);
    process.stderr.write(`\n# e2e fault table (100 packets/s per flow)\n${table(t).replace(/^/gm, '# ')}\n`);
    if (lab && process.env.FLEETSWAN_KEEP_LAB === '1') process.stderr.write(`# ${keptLabHint(lab)}\n`);
    else if (lab) await lab.down();
  });

  /**
   * Run flows a->b and a->c, call `inject` (which breaks something and repairs it, as an
   * operator or systemd would), then wait until every tunnel is up and both flows get
   * replies again; record the figures.
   */
  /**
   * Each fault starts from a healthy fleet. If the previous one left tunnels down, restart
   * the gateways' agents (what an operator would do) so one failure does not fail the rest;
   * the row of the previous fault already shows it did not recover by itself.
   */
  async function healthy(): Promise<string> {
    try {
      await lab.waitAllUp(20_000);
      return '';
    } catch (e) {
      log(`fleet not healthy before the next fault (${(e as Error).message.split('\n').pop()}): restarting the agents`);
      for (const g of ['gw-a', 'gw-b']) await lab.restart(`${g}.ikeagent`, 60_000);
      await lab.waitAllUp(90_000);
      return 'started after restarting the agents (previous fault left tunnels down)';
    }
  }

  async function fault(name: string, inject: () => Promise<string | void>, settleMs = 3000): Promise<FaultRow> {
    const healed = await healthy();
    const events = await EventLog.open(lab);
    const fab = new PingFlow(nsHost(lab.c, lab.gw('a')), lab.gw('b').hostAddr!, 10);
    const fac = new PingFlow(nsHost(lab.c, lab.gw('a')), lab.gw('c').hostAddr!, 10);
    await sleep(2000);
    const t0 = Date.now();
    let note = '';
    let recoveryS = NaN;
    try {
      note = [healed, (await inject()) ?? ''].filter(Boolean).join('; ');
      await lab.waitAllUp(120_000);
      // traffic flows again through both
      const [nab, nac] = [fab.received, fac.received];
      const deadline = Date.now() + 60_000;
      while ((fab.received - nab < 10 || fac.received - nac < 10) && Date.now() < deadline) await sleep(100);
      recoveryS = (Date.now() - t0) / 1000;
      await sleep(settleMs);
    } finally {
      const ab = await fab.stop(), ac = await fac.stop();
      await events.stop();
      const row = { fault: name, ab, ac, recoveryS, ikeUps: events.count('ike_up'), note };
      rows.push(row);
      log(`${name}: a-b lost ${ab.lost}/${ab.sent} (gap ${ab.longestGapS.toFixed(2)} s), a-c lost ${ac.lost}/${ac.sent} (gap ${ac.longestGapS.toFixed(2)} s), recovered in ${recoveryS.toFixed(1)} s; events ${events.summary()}`);
    }
    return rows[rows.length - 1]!;
  }

  test('kill -9 the ikeagent of gw-a, restart it: traffic recovers without a renegotiation storm', async () => {
    const r = await fault('kill -9 ikeagent (gw-a), restart', async () => {
      await lab.kill('gw-a.ikeagent');
      await sleep(2000);
      await lab.start('gw-a.ikeagent', 60_000);
    });
    assert.ok(Number.isFinite(r.recoveryS), 'gw-a recovered');
    assert.ok(r.ikeUps <= 4, `a restart of one agent set up ${r.ikeUps} IKE_SAs (a storm; expected at most one per connection of gw-a)`);
  });

  test('kill -9 the dataplane of gw-a, restart it: it restores its state, traffic flows, and IKE still works', async () => {
    const r = await fault('kill -9 dataplane (gw-a), restart', async () => {
      await lab.kill('gw-a.dataplane');
      await sleep(2000);
      await lab.start('gw-a.dataplane', 60_000);
      return 'flows kept 45 s past recovery (beyond the DPD timeout)';
    }, 45_000);
    assert.ok(Number.isFinite(r.recoveryS), 'gw-a recovered');
    // IKE through the restarted dataplane (NAT-T on 4500 is relayed by it): a fresh negotiation must succeed
    await lab.fleetswan(['conn', 'down', 'a-c'], { allowFail: true });
    await lab.fleetswan(['conn', 'up', 'a-c', '--timeout', '30'], { allowFail: true, timeoutMs: 60_000 });
    let err = '';
    try {
      await lab.waitAllUp(45_000);
    } catch (e) {
      err = (e as Error).message;
    }
    const p = await ping(nsHost(lab.c, lab.gw('a')), lab.gw('c').hostAddr!, { count: 5, intervalS: 0.1 });
    assert.ok(!err && p.lost === 0,
      `after the dataplane restart, a new IKE_SA for a-c (IKE_AUTH on UDP 4500, relayed by the dataplane) did not come up: ${err || p.output}\n--- gw-a ikeagent log:\n${lab.logTail('gw-a.ikeagent', 8)}`);
  });

  test('stop NATS for 20 s: existing tunnels unaffected (fail static)', async () => {
    const r = await fault('stop NATS 20 s, start', async () => {
      await lab.stop('nats');
      await sleep(20_000);
      await lab.start('nats');
      // the controller and keymgr reconnect by themselves
      await lab.start('controller');
      await lab.start('keymgr');
    });
    assert.equal(r.ab.lost, 0, 'a-b lost packets while NATS was down');
    assert.equal(r.ac.lost, 0, 'a-c lost packets while NATS was down');
  });

  test('stop the controller for 15 s: tunnels unaffected', async () => {
    const r = await fault('stop controller 15 s, start', async () => {
      await lab.stop('controller');
      await sleep(15_000);
      await lab.start('controller');
    });
    assert.equal(r.ab.lost + r.ac.lost, 0, 'packets lost while the controller was down');
  });

  test('stop keymgr for 15 s: tunnels unaffected', async () => {
    const r = await fault('stop keymgr 15 s, start', async () => {
      await lab.stop('keymgr');
      await sleep(15_000);
      await lab.start('keymgr');
    });
    assert.equal(r.ab.lost + r.ac.lost, 0, 'packets lost while keymgr was down');
  });

  test('restart the peer gateway gw-b (both daemons, SIGTERM): the a-b tunnel comes back', async () => {
    const r = await fault('restart gw-b (ikeagent + dataplane)', async () => {
      await lab.stop('gw-b.ikeagent');
      await lab.stop('gw-b.dataplane');
      await sleep(2000);
      await lab.start('gw-b.dataplane', 60_000);
      await lab.start('gw-b.ikeagent', 60_000);
    });
    assert.ok(Number.isFinite(r.recoveryS), 'a-b recovered');
  });

  test('restart the strongSwan peer gw-c (SAs lost): DPD on gw-a notices, a-c comes back', async () => {
    const r = await fault('restart gw-c charon (external peer)', async () => {
      await lab.kill('gw-c.charon');
      await sleep(1000);
      await lab.start('gw-c.charon');
      await lab.loadPeerConfig(lab.gw('gw-c'));
      return 'recovery bounded by DPD (delay 10 s, timeout 30 s)';
    });
    assert.ok(Number.isFinite(r.recoveryS), 'a-c recovered');
    assert.equal(r.ab.lost, 0, 'a-b is unaffected by gw-c');
  });
});
