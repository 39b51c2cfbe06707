/**
 * Interop (issue 3, acceptance 7): Libreswan 4.10 pluto <-> fleetswan, inside User-Mode
 * Linux with kernel ESP (the host kernel has none). The guest runs
 * test/interop/lab/libreswan-scenario.ts: pluto in gwa, `fleetswan dataplane --backend xfrm`
 * and `fleetswan ikeagent` in gwb; PSK and ECDSA P-256 certificates, each side initiating.
 * Every round checks pluto's own view (`whack --trafficstatus`, its kernel SAs), ours
 * (ListSas), that the SPIs pair up, and pings both ways through kernel ESP with a capture
 * showing ESP and no cleartext ICMP on the wire. No NAT-T: both ends stay on UDP 500.
 * (About 90 s of UML per mode.)
 *
 * Run: npx tsc -b test services/ikeagent services/dataplane packages/cli &&
 *      node --test --test-concurrency=1 test/dist/interop/ikeagent-libreswan.itest.js
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import { countPackets, libreswanMissing, runFunctionInUml, skipReason, umlMissing } from '../harness/index.js';
import type { Mode, RoundResult, ScenarioResult } from './lab/libreswan-scenario.js';

const skip = skipReason(umlMissing(), libreswanMissing());

function judge(r: RoundResult): void {
  const what = `${r.mode}, ${r.initiator} initiates`;
  assert.ok(r.ours, `${what}: our IKE SA established with an installed CHILD SA`);
  assert.equal(r.ours!.initiator ?? false, r.initiator === 'fleetswan', `${what}: our initiator flag`); // proto3 JSON omits false
  assert.equal(r.ours!.algorithms, 'AES_GCM_16-256/PRF_HMAC_SHA2_256/CURVE_25519');
  assert.equal(r.ours!.remoteId, 'gwa.example.test');
  const child = r.ours!.children.find((c) => c.state === 'CHILD_SA_STATE_INSTALLED')!;
  assert.equal(child.udpEncap ?? false, false, 'plain ESP (no NAT-T)');
  assert.deepEqual(child.localTs, ['10.2.0.0/16']);
  assert.deepEqual(child.remoteTs, ['10.1.0.0/16']);
  // pluto's own view: one ESP SA of s2s with traffic both ways.
  const ls = r.plutoTraffic.filter((t) => t.conn === 's2s');
  assert.equal(ls.length, 1, `${what}: pluto trafficstatus ${JSON.stringify(r.plutoTraffic)}`);
  assert.equal(ls[0]!.type, 'ESP');
  assert.ok(ls[0]!.inBytes > 0 && ls[0]!.outBytes > 0, `${what}: pluto counted traffic ${JSON.stringify(ls[0])}`);
  assert.match(ls[0]!.id, /gwb\.example\.test/);
  // SPIs pair up: pluto's inbound SA (dst gwa) is our outbound, and the other way.
  const hex = (n: number) => `0x${n.toString(16).padStart(8, '0')}`;
  const spi = (x: string) => x.replace(/\(\d+\)$/, ''); // `ip -s xfrm state`: 0xc0fe9e28(3237912104)
  const plutoIn = r.plutoXfrm.filter((s) => s.dst === '192.0.2.1').map((s) => spi(s.spi));
  const plutoOut = r.plutoXfrm.filter((s) => s.dst === '192.0.2.2').map((s) => spi(s.spi));
  assert.deepEqual(plutoIn, [hex(child.spiOut)], `${what}: pluto's inbound SPI = our outbound (${JSON.stringify(r.plutoXfrm)})`);
  assert.deepEqual(plutoOut, [hex(child.spiIn)], `${what}: pluto's outbound SPI = our inbound`);
  assert.ok(r.ourXfrm.every((s) => s.bytes > 0), `${what}: our kernel SAs carried traffic ${JSON.stringify(r.ourXfrm)}`);
  assert.ok(r.pingAB.ok, `${what}: ping gwa -> gwb: ${r.pingAB.out}`);
  assert.match(r.pingAB.out, / 0% packet loss/);
  assert.ok(r.pingBA.ok, `${what}: ping gwb -> gwa: ${r.pingBA.out}`);
  assert.match(r.pingBA.out, / 0% packet loss/);
}

for (const mode of ['psk', 'ecdsa'] as Mode[]) {
  test(`Libreswan 4.10 in UML, kernel ESP, ${mode === 'psk' ? 'PSK' : 'ECDSA P-256 certificates'}: pluto initiates, then fleetswan`, { skip: skip ?? false, timeout: 900_000 }, async (t) => {
    const r = await runFunctionInUml<ScenarioResult>(import.meta.resolve('./lab/libreswan-scenario.js'), 'main', { modes: [mode] }, { timeoutMs: 840_000, mem: '1024M', keepXdir: true });
    t.after(() => process.env.FLEETSWAN_KEEP_TMP === '1' || rmSync(r.xdir, { recursive: true, force: true }));
    t.diagnostic(`UML run ${Math.round(r.durationMs / 1000)} s`);
    const v = r.value;
    const logs = v ? Object.entries(v.logs).map(([k, s]) => `--- ${k}:\n${s}`).join('\n') : '';
    assert.equal(r.error, undefined, `${r.error}\n${r.output.slice(-4000)}\n${r.console.slice(-2000)}`);
    assert.deepEqual(v!.errors, [], `${v!.errors.join('\n')}\n${logs}`);
    assert.deepEqual(v!.rounds.map((x) => x.initiator), ['pluto', 'fleetswan']);
    for (const round of v!.rounds) {
      t.diagnostic(`${round.mode}/${round.initiator}: ${round.ms} ms; pluto: ${round.plutoAuthLine?.replace(/\n/g, ' / ')}`);
      try {
        judge(round);
      } catch (err) {
        throw new Error(`${(err as Error).message}\n${logs}`);
      }
      if (round.captureFiles?.length) {
        // The wire (both ends' outbound captures): kernel ESP (IP proto 50, not ESP-in-UDP),
        // IKE on UDP 500 only, no cleartext ICMP.
        const count = async (filter: string) => (await Promise.all(round.captureFiles!.map((f) => countPackets(f, filter)))).reduce((a, b) => a + b, 0);
        const c = { esp: await count('ip.proto == 50'), natt: await count('udp.port == 4500'), ike: await count('udp.port == 500'), icmp: await count('icmp'), all: await count('frame') };
        t.diagnostic(`${round.mode}/${round.initiator} wire: ${JSON.stringify(c)}`);
        assert.ok(c.esp >= 20, `raw ESP on the wire ${JSON.stringify(c)}`);
        assert.equal(c.natt, 0, `nothing on UDP 4500 ${JSON.stringify(c)}`);
        // IKE is not counted: in UML the outbound captures miss some IKE datagrams (1 to 14
        // seen per round, not understood yet; ESP is always complete). That IKE stayed on 500
        // is shown by no UDP 4500 at all and by both ends' views (no encapsulation).
        assert.equal(c.icmp, 0, `no cleartext ICMP on the wire ${JSON.stringify(c)}`);
      }
    }
  });
}
