/**
 * End to end: the lab's fleet (gw-a, gw-b: fleetswan with userspace ESP; gw-c: strongSwan)
 * checked the way an operator would: tunnels up in `fleetswan status`, traffic through each
 * (ping, iperf3), captures on the transit network, live changes, rekeys under load, tunnel
 * down with trap policies, secret rotation, and the strongSwan side's own view.
 * One lab for the whole file (instance "e2efleet", or e2efleet1.. while another run holds it:
 * see e2eLab); each test leaves every tunnel up.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import {
  ALT_PROPOSALS, PingFlow, peerPsk, addUnderlayRoutes, iperf3, nsHost, ping, removeUnderlayRoutes, sleep, waitFor,
  type FlowResult, type Lab,
} from '@fleetswan/lab';
import { EventLog, assertServicesPresent, captureTransit, e2eLab, keptLabHint, labPreconditions, logger, peerSas, table, transitVerdict } from './common.js';

const skip = labPreconditions();
const log = logger('fleet');

describe('e2e fleet (gw-a, gw-b fleetswan userspace; gw-c strongSwan)', { skip: skip ?? false, concurrency: false, timeout: 900_000 }, () => {
  let lab: Lab;
  const figures: (string | number)[][] = [['check', 'figure']];

  before(async () => {
    await assertServicesPresent();
    lab = await e2eLab('e2efleet', '198.18.1');
    const t0 = Date.now();
    await lab.up({ step: log, tunnelTimeoutMs: 90_000 });
    figures.push(['fleet up (namespaces .. all tunnels up + pings)', `${((Date.now() - t0) / 1000).toFixed(1)} s`]);
  });

  after(async () => {
    process.stderr.write(`\n# e2e fleet figures\n${table(figures).replace(/^/gm, '# ')}\n`);
    if (lab && process.env.FLEETSWAN_KEEP_LAB === '1') process.stderr.write(`# ${keptLabHint(lab)}\n`);
    else if (lab) await lab.down();
  });

  const hostOf = (label: string): string => nsHost(lab.c, lab.gw(label));
  const addrOf = (label: string): string => lab.gw(label).hostAddr!;
  const flow = (from: string, to: string, intervalMs: number): PingFlow => new PingFlow(hostOf(from), addrOf(to), intervalMs);
  const describeFlow = (r: FlowResult): string => `${r.received}/${r.sent} received, ${r.lost} lost, longest gap ${r.longestGapS.toFixed(2)} s${r.longestGapAt ? ` after ${r.longestGapAt}` : ""}`;

  test('fleet up: every tunnel up, ping and iperf3 through each, the transit network carries only IKE and ESP', async () => {
    assert.deepEqual(await lab.notUp(), [], 'every connection end is "up" in fleetswan status');
    // make cleartext possible: plain routes between the sites on every gateway; only the
    // IPsec policies keep traffic out of them
    await addUnderlayRoutes(lab.c);
    const cap = await captureTransit(lab);
    try {
      for (const t of lab.tunnels) {
        for (const [x, y] of [[t.a, t.b], [t.b, t.a]] as const) {
          const r = await ping(hostOf(x.label), y.hostAddr!, { count: 10, intervalS: 0.05 });
          assert.equal(r.lost, 0, `ping host-${x.label} -> host-${y.label} through ${t.name}: ${r.output}`);
        }
        const ip = await iperf3(hostOf(t.b.label), hostOf(t.a.label), t.b.hostAddr!, { seconds: 3 });
        const mbit = ip.bitsPerSecond / 1e6;
        log(`iperf3 TCP host-${t.a.label} -> host-${t.b.label} through ${t.name}: ${mbit.toFixed(1)} Mbit/s, ${ip.retransmits} retransmits`);
        figures.push([`iperf3 TCP 3 s through ${t.name}`, `${mbit.toFixed(1)} Mbit/s (${ip.retransmits} retransmits)`]);
        assert.ok(mbit > 1, `iperf3 through ${t.name} carried only ${mbit.toFixed(2)} Mbit/s`);
      }
    } finally {
      await cap.stop();
      await removeUnderlayRoutes(lab.c);
    }
    const v = await transitVerdict(cap.file);
    log(`transit capture: ${v.esp} ESP-in-UDP packets, ${v.cleartext} cleartext between sites, ${v.other} neither IKE nor ESP`);
    assert.equal(v.cleartext, 0, `cleartext between sites on the transit network:\n${v.detail}`);
    assert.equal(v.other, 0, `packets other than IKE/ESP on the transit network:\n${v.detail}`);
    assert.ok(v.esp > 60, `expected the pings and iperf3 as ESP-in-UDP on the transit network, saw ${v.esp} ESP packets`);
  });

  test('external strongSwan peer gw-c: its own view shows a-c and b-c established, encapsulated, aes256gcm16, with traffic', async () => {
    const c = lab.gw('gw-c');
    await ping(hostOf('a'), addrOf('c'), { count: 3, intervalS: 0.05 });
    await ping(hostOf('b'), addrOf('c'), { count: 3, intervalS: 0.05 });
    const sas = await peerSas(lab, c);
    for (const name of ['a-c', 'b-c']) {
      const ike = sas.find((s) => s.name === name && s.state === 'ESTABLISHED');
      assert.ok(ike, `swanctl --list-sas on gw-c: no ESTABLISHED IKE_SA ${name} (have: ${sas.map((s) => `${s.name}:${s.state}`).join(', ') || 'none'})`);
      assert.equal(ike.remoteId, lab.gw(name[0]!).id, `${name}: remote identity`);
      assert.match(`${ike.encrAlg}`, /AES_GCM_16/, `${name}: IKE encryption`);
      const child = ike.children.find((ch) => ch.state === 'INSTALLED');
      assert.ok(child, `${name}: no INSTALLED CHILD_SA`);
      assert.equal(child.encap, true, `${name}: ESP must be UDP-encapsulated (encapsulation: force)`);
      assert.match(`${child.encrAlg}-${child.encrKeysize}`, /AES_GCM_16-256/, `${name}: ESP algorithm`);
      assert.ok(child.packetsIn > 0 && child.packetsOut > 0, `${name}: no packets counted on gw-c (in ${child.packetsIn}, out ${child.packetsOut})`);
    }
  });

  test('live change: new proposals on a-c renegotiate only a-c; a-b and b-c keep their SPIs and lose no packets', async () => {
    const before = { a: lab.spisByConnection('gw-a'), b: lab.spisByConnection('gw-b') };
    const peerBefore = await peerSas(lab, lab.gw('gw-c'));
    const spiOf = (sas: typeof peerBefore, n: string): string => sas.filter((s) => s.name === n).flatMap((s) => s.children.map((c) => `${c.spiIn}/${c.spiOut}`)).sort().join(',');
    assert.ok(before.a.get('a-b')?.length, `gw-a's dataplane holds no SAs for a-b (have: ${[...before.a.keys()].join(', ')})`);
    const fab = flow('a', 'b', 10), fbc = flow('b', 'c', 10);
    await sleep(1000);
    const t0 = Date.now();
    const out = await lab.apply(lab.renderSpec({ proposals: { alt: ALT_PROPOSALS }, connections: { 'a-c': { proposals: 'alt' } } }), 'live-change.yaml');
    log(`apply: ${out.stdout.trim().replace(/\n/g, ' | ')}`);
    // a-c comes back with the new proposals (strongSwan's view)
    const ike = await waitFor('a-c re-established with aes128gcm16/ecp256 (swanctl on gw-c)', async () => {
      const sas = await peerSas(lab, lab.gw('gw-c'));
      return sas.find((s) => s.name === 'a-c' && s.state === 'ESTABLISHED' && /AES_GCM_16/.test(`${s.encrAlg}`) && s.encrKeysize === 128 &&
        s.children.some((c) => c.state === 'INSTALLED' && c.encrKeysize === 128));
    }, { timeoutMs: 60_000, intervalMs: 500 });
    figures.push(['live change: apply -> a-c re-established (new proposals)', `${((Date.now() - t0) / 1000).toFixed(1)} s`]);
    assert.equal(ike.dhGroup, 'ECP_256', 'a-c IKE DH group after the change');
    await sleep(2000);
    const [rab, rbc] = [await fab.stop(), await fbc.stop()];
    log(`during the change: a-b ${describeFlow(rab)}; b-c ${describeFlow(rbc)}`);
    figures.push(['live change: lost packets on a-b / b-c', `${rab.lost} / ${rbc.lost}`]);
    const after = { a: lab.spisByConnection('gw-a'), b: lab.spisByConnection('gw-b') };
    const peerAfter = await peerSas(lab, lab.gw('gw-c'));
    assert.deepEqual(after.a.get('a-b'), before.a.get('a-b'), 'a-b SPIs on gw-a unchanged');
    assert.deepEqual(after.b.get('a-b'), before.b.get('a-b'), 'a-b SPIs on gw-b unchanged');
    assert.deepEqual(after.b.get('b-c'), before.b.get('b-c'), 'b-c SPIs on gw-b unchanged');
    assert.equal(spiOf(peerAfter, 'b-c'), spiOf(peerBefore, 'b-c'), 'b-c SPIs on gw-c unchanged');
    assert.notEqual(spiOf(peerAfter, 'a-c'), spiOf(peerBefore, 'a-c'), 'a-c was renegotiated (new SPIs)');
    assert.equal(rab.lost, 0, `a-b lost packets during the change: ${describeFlow(rab)}`);
    assert.equal(rbc.lost, 0, `b-c lost packets during the change: ${describeFlow(rbc)}`);
    // back to the default spec
    await lab.apply(lab.renderSpec(), 'default.yaml');
    await lab.waitAllUp(60_000);
  });

  test('tunnel down with start action route: no cleartext leaves gw-a; conn up restores a-b', async () => {
    await lab.apply(lab.renderSpec({ connections: { 'a-b': { start: 'route' } } }), 'route.yaml');
    await sleep(1000);
    await ping(hostOf('a'), addrOf('b'), { count: 3, intervalS: 0.2 }); // the first packet may trigger it
    await lab.waitAllUp(60_000);
    await addUnderlayRoutes(lab.c);
    const cap = await captureTransit(lab);
    let during;
    try {
      const r = await lab.fleetswan(['conn', 'down', 'a-b'], { allowFail: true });
      assert.equal(r.code, 0, `fleetswan conn down a-b: ${r.stdout}${r.stderr}`);
      // after `down`, a-b is no longer up at either end ("routed": trap policies stay)
      const st = await waitFor('a-b not up after conn down', async () => {
        const s = await lab.fleetStatus();
        const ends = (s.connections ?? []).filter((c) => c.name === 'a-b');
        return ends.length === 2 && ends.every((e) => e.state !== 'up') ? ends : undefined;
      }, { timeoutMs: 15_000, intervalMs: 300 });
      log(`after conn down: ${st.map((e) => `${e.gateway}=${e.state}`).join(' ')}`);
      during = await ping(hostOf('a'), addrOf('b'), { count: 20, intervalS: 0.1, waitS: 1 });
      log(`ping during down: ${during.received}/${during.sent} replies (held or dropped; replies only through a re-triggered tunnel)`);
    } finally {
      await sleep(500);
      await cap.stop();
      await removeUnderlayRoutes(lab.c);
    }
    const v = await transitVerdict(cap.file);
    figures.push(['conn down a-b (route): cleartext packets on transit', v.cleartext]);
    assert.equal(v.cleartext, 0, `cleartext left a gateway while a-b was down:\n${v.detail}`);
    const t0 = Date.now();
    const up = await lab.fleetswan(['conn', 'up', 'a-b'], { allowFail: true, timeoutMs: 60_000 });
    assert.equal(up.code, 0, `fleetswan conn up a-b: ${up.stdout}${up.stderr}`);
    await lab.waitAllUp(60_000);
    const r = await ping(hostOf('a'), addrOf('b'), { count: 5, intervalS: 0.1 });
    figures.push(['conn up a-b -> traffic flows', `${((Date.now() - t0) / 1000).toFixed(1)} s`]);
    assert.equal(r.lost, 0, `after conn up a-b: ${r.output}`);
    await lab.apply(lab.renderSpec(), 'default.yaml');
    await lab.waitAllUp(60_000);
  });

  test('rekey under load: CHILD and IKE rekeys on a-b and a-c with 1,000 packets/s flowing, zero lost packets', async () => {
    const short = { ike_lifetime: '50s', child_lifetime: '25s', rekey_margin: '10s', rekey_fuzz: 20 };
    await lab.apply(lab.renderSpec({ connections: { 'a-b': short, 'a-c': short } }), 'short-lifetimes.yaml');
    // the new lifetimes take effect with the next SAs: bring both up afresh
    for (const n of ['a-b', 'a-c']) {
      await lab.fleetswan(['conn', 'down', n], { allowFail: true });
      await lab.fleetswan(['conn', 'up', n], { allowFail: true, timeoutMs: 60_000 });
    }
    await lab.waitAllUp(60_000);
    const events = await EventLog.open(lab);
    const peerIkeSpis = new Set<string>();
    const abSpis = new Set<string>();
    const fab = flow('a', 'b', 1), fac = flow('a', 'c', 1);
    // and exactly 1,000 packets/s one way: iperf3 UDP, 100-byte datagrams at 800 kbit/s
    const udp = iperf3(hostOf('b'), hostOf('a'), addrOf('b'), { udp: true, bitrate: '800K', length: 100, seconds: 63, port: 5202, window: '4M' });
    const t0 = Date.now();
    while (Date.now() - t0 < 65_000) {
      for (const s of lab.spisByConnection('gw-a').get('a-b') ?? []) abSpis.add(s);
      for (const s of await peerSas(lab, lab.gw('gw-c')).catch(() => [])) if (s.name === 'a-c') peerIkeSpis.add(`${s.spiInitiator}_${s.spiResponder}`);
      await sleep(1000);
    }
    const [rab, rac] = [await fab.stop(), await fac.stop()];
    const u = await udp;
    await events.stop();
    const ikeRekeys = events.events.filter((e) => e.kind === 'rekey' && e.connection === 'a-b' && e.gateway === 'gw-a' && /^IKE SA/.test(e.message)).length;
    const childRekeys = events.events.filter((e) => e.kind === 'rekey' && e.connection === 'a-b' && e.gateway === 'gw-a' && /^CHILD SA/.test(e.message)).length;
    log(`iperf3 UDP a->b 1,000 packets/s: ${u.lostPackets} lost of ${u.packets} (host-b socket buffer drops ${u.receiverBufferDrops}); a-b rekeys reported by gw-a: ${childRekeys} CHILD, ${ikeRekeys} IKE`);
    figures.push(['rekey under load: iperf3 UDP 1,000 packets/s a->b, lost (of which host-b socket buffer)', `${u.lostPackets} of ${u.packets} (${u.receiverBufferDrops})`]);
    figures.push(['rekey under load: a-b rekeys (gw-a events) CHILD / IKE', `${childRekeys} / ${ikeRekeys}`]);
    log(`rekey window 65 s: a-b ${describeFlow(rab)}; a-c ${describeFlow(rac)}; a-b SPIs seen ${abSpis.size}; a-c IKE SAs seen on gw-c ${peerIkeSpis.size}; events ${events.summary()}`);
    figures.push(['rekey under load (ping -i 0.001, 65 s): lost a-b / a-c', `${rab.lost} / ${rac.lost} of ${rab.sent} / ${rac.sent} (${(rab.sent / rab.durationS).toFixed(0)} / ${(rac.sent / rac.durationS).toFixed(0)} packets/s)`]);
    figures.push(['rekey under load: SPIs seen a-b, IKE SAs seen a-c', `${abSpis.size}, ${peerIkeSpis.size}`]);
    await lab.apply(lab.renderSpec(), 'default.yaml');
    assert.ok(abSpis.size >= 4, `a-b: expected CHILD rekeys (>= 2 SPI pairs in 65 s with child_lifetime 25s), saw ${abSpis.size} SPIs`);
    assert.ok(peerIkeSpis.size >= 2, `a-c: expected an IKE rekey (>= 2 IKE SAs seen on gw-c with ike_lifetime 50s), saw ${peerIkeSpis.size}`);
    // ping -i 0.001 is paced by its own timer and the replies: 800-1,000 packets/s on an idle
    // machine, 470 with two busy loops on the two cores. The fixed-rate load is iperf3's; this
    // only checks the ping flow was dense enough (a rekey gap of 10 ms would lose a packet).
    assert.ok(rab.sent / rab.durationS > 200, `the a-b flow sent only ${(rab.sent / rab.durationS).toFixed(0)} packets/s`);
    assert.ok(ikeRekeys >= 1, `a-b: expected an IKE rekey within 65 s (ike_lifetime 50s); gw-a reported ${ikeRekeys} (events: ${events.summary()})`);
    assert.equal(u.lostPackets, 0, `iperf3 UDP (1,000 packets/s) through a-b lost ${u.lostPackets} of ${u.packets} across rekeys`);
    assert.equal(rab.lost, 0, `a-b lost packets across rekeys: ${describeFlow(rab)}`);
    assert.equal(rac.lost, 0, `a-c lost packets across rekeys: ${describeFlow(rac)}`);
    await lab.waitAllUp(60_000);
  });

  test('secret rotation: psk.a-b rotated with traffic running, zero lost packets; re-authentication afterwards uses the new secret', async () => {
    const before = JSON.parse((await lab.fleetswan(['secrets', 'list', '--json'])).stdout) as { name: string; version: number }[];
    const v0 = before.find((s) => s.name === 'psk.a-b')?.version;
    assert.ok(v0, `secrets list has no psk.a-b: ${JSON.stringify(before)}`);
    const f = flow('a', 'b', 10);
    await sleep(1000);
    const rot = await lab.fleetswan(['secrets', 'rotate', 'psk.a-b', '--window', '15'], { allowFail: true });
    assert.equal(rot.code, 0, `fleetswan secrets rotate psk.a-b: ${rot.stdout}${rot.stderr}`);
    await sleep(5000);
    const r = await f.stop();
    figures.push(['secret rotation (psk.a-b): lost packets', r.lost]);
    assert.equal(r.lost, 0, `lost packets during the rotation: ${describeFlow(r)}`);
    const after = JSON.parse((await lab.fleetswan(['secrets', 'list', '--json'])).stdout) as { name: string; version: number }[];
    assert.equal(after.find((s) => s.name === 'psk.a-b')?.version, v0 + 1, 'psk.a-b has a new version');
    // after the window only the new PSK is valid: a fresh IKE_SA must authenticate with it
    await sleep(11_000);
    await lab.fleetswan(['conn', 'down', 'a-b'], { allowFail: true });
    const up = await lab.fleetswan(['conn', 'up', 'a-b'], { allowFail: true, timeoutMs: 60_000 });
    assert.equal(up.code, 0, `conn up a-b after the rotation window: ${up.stdout}${up.stderr}`);
    await lab.waitAllUp(60_000);
    const p = await ping(hostOf('a'), addrOf('b'), { count: 5, intervalS: 0.1 });
    assert.equal(p.lost, 0, `traffic over the re-authenticated a-b: ${p.output}`);
  });

  test('secret rotation with the external peer: a new psk.a-c on both ends re-authenticates; the old PSK is refused', async () => {
    const c = lab.gw('gw-c');
    const newValue = 'Lab0nly-rotated-Qm4Tz8Vw2Xk6Np9Rj3Hb7Lc';
    const set = await lab.fleetswan(['secrets', 'set', 'psk.a-c', '--gateways', 'gw-a'], { allowFail: true, input: newValue + '\n' });
    assert.equal(set.code, 0, `fleetswan secrets set psk.a-c: ${set.stdout}${set.stderr}`);
    await lab.loadPeerConfig(c, { psk: (n) => (n === 'a-c' ? newValue : peerPsk(n)) });
    // the fleet side re-authenticates: a new IKE_SA with the new PSK
    await lab.fleetswan(['conn', 'down', 'a-c'], { allowFail: true });
    const up = await lab.fleetswan(['conn', 'up', 'a-c'], { allowFail: true, timeoutMs: 60_000 });
    assert.equal(up.code, 0, `conn up a-c with the new PSK: ${up.stdout}${up.stderr}`);
    await lab.waitAllUp(60_000);
    // the old PSK no longer authenticates: strongSwan with the old secret is refused
    await lab.loadPeerConfig(c); // the lab's original PSKs
    await lab.fleetswan(['conn', 'down', 'a-c'], { allowFail: true });
    const bad = await lab.fleetswan(['conn', 'up', 'a-c', '--timeout', '15'], { allowFail: true, timeoutMs: 60_000 });
    const sasOld = await peerSas(lab, c);
    assert.ok(!sasOld.some((s) => s.name === 'a-c' && s.state === 'ESTABLISHED'), `a-c established with the OLD PSK (conn up said: ${bad.stdout}${bad.stderr})`);
    // restore the lab's PSK on both ends
    await lab.fleetswan(['secrets', 'set', 'psk.a-c', '--gateways', 'gw-a'], { input: peerPsk('a-c') + '\n' });
    await lab.loadPeerConfig(c);
    await lab.fleetswan(['conn', 'up', 'a-c'], { allowFail: true, timeoutMs: 60_000 });
    await lab.waitAllUp(60_000);
  });
});
