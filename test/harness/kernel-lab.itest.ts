// Proves the kernel lab: UML boots, runs commands with real kernel ESP, passes
// exit codes/output back, and runs node functions (the peer harness) inside.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { runInUml, runShellInUml, runFunctionInUml, umlMissing, parseXfrmState, harnessModule } from './kernel-lab.js';
import { countRawEsp, countEspInUdp, countIke } from './capture.js';
import { libreswanMissing } from './peers.js';
import { skipReason } from './util.js';
import type { KernelPairResult } from './guest-scenarios.js';

test('kernel-lab: exit code and output come back from the guest', async (t) => {
  const skip = skipReason(umlMissing());
  if (skip) { t.skip(skip); return; }
  const r = await runInUml(['sh', '-c', "uname -r; grep -c '^esp4 ' /proc/modules; exit 7"], { timeoutMs: 120_000 });
  t.diagnostic(`UML round trip ${r.durationMs} ms`);
  assert.equal(r.code, 7, r.console.slice(-2000));
  const [kver, esp] = r.output.trim().split('\n');
  assert.match(kver ?? '', /^6\.1\./);
  assert.equal(esp, '1');
});

test('kernel-lab: guest timeout is reported as 124', async (t) => {
  const skip = skipReason(umlMissing());
  if (skip) { t.skip(skip); return; }
  const r = await runInUml(['sleep', '600'], { timeoutMs: 15_000 });
  assert.equal(r.code, 124);
  assert.equal(r.timedOut, true);
});

// Manual kernel ESP: two netns joined by a veth, static AES-GCM SAs + policies.
const XFRM_SCRIPT = `
K1=0x$(printf '1%.0s' $(seq 72)); K2=0x$(printf '2%.0s' $(seq 72))
ip netns add a; ip netns add b
ip -n a link add veth0 type veth peer name veth0 netns b
ip -n a addr add 192.0.2.1/24 dev veth0; ip -n b addr add 192.0.2.2/24 dev veth0
ip -n a addr add 10.1.0.1/32 dev lo; ip -n b addr add 10.2.0.1/32 dev lo
for n in a b; do ip -n $n link set lo up; ip -n $n link set veth0 up; done
ip -n a route add 10.2.0.0/16 via 192.0.2.2 src 10.1.0.1
ip -n b route add 10.1.0.0/16 via 192.0.2.1 src 10.2.0.1
for n in a b; do
  ip -n $n xfrm state add src 192.0.2.1 dst 192.0.2.2 proto esp spi 0x100 reqid 1 mode tunnel aead 'rfc4106(gcm(aes))' $K1 128
  ip -n $n xfrm state add src 192.0.2.2 dst 192.0.2.1 proto esp spi 0x200 reqid 1 mode tunnel aead 'rfc4106(gcm(aes))' $K2 128
done
ip -n a xfrm policy add src 10.1.0.0/16 dst 10.2.0.0/16 dir out tmpl src 192.0.2.1 dst 192.0.2.2 proto esp reqid 1 mode tunnel
ip -n a xfrm policy add src 10.2.0.0/16 dst 10.1.0.0/16 dir in tmpl src 192.0.2.2 dst 192.0.2.1 proto esp reqid 1 mode tunnel
ip -n b xfrm policy add src 10.2.0.0/16 dst 10.1.0.0/16 dir out tmpl src 192.0.2.2 dst 192.0.2.1 proto esp reqid 1 mode tunnel
ip -n b xfrm policy add src 10.1.0.0/16 dst 10.2.0.0/16 dir in tmpl src 192.0.2.1 dst 192.0.2.2 proto esp reqid 1 mode tunnel
ip netns exec a dumpcap -q -i veth0 -w "$UML_XDIR/veth0.pcapng" -f 'udp or ip proto 50' 2>"$UML_XDIR/dumpcap.log" &
CAP=$!
for i in $(seq 100); do [ -s "$UML_XDIR/veth0.pcapng" ] && break; sleep 0.1; done
ip netns exec a ping -c 3 -W 2 -I 10.1.0.1 10.2.0.1
sleep 0.5; kill -INT $CAP; wait $CAP || true
echo ===XFRM===
ip -n b -s xfrm state
`;

test('kernel-lab: static kernel ESP SAs between two netns in UML, ping through them', async (t) => {
  const skip = skipReason(umlMissing());
  if (skip) { t.skip(skip); return; }
  const r = await runShellInUml(XFRM_SCRIPT, { timeoutMs: 180_000, keepXdir: true });
  t.after(() => rmSync(r.xdir, { recursive: true, force: true }));
  t.diagnostic(`UML xfrm run ${r.durationMs} ms`);
  assert.equal(r.code, 0, `${r.output}\n${r.console.slice(-2000)}`);
  assert.match(r.output, / 0% packet loss/);
  const sas = parseXfrmState(r.output.split('===XFRM===')[1] ?? '');
  assert.equal(sas.length, 2, r.output);
  for (const sa of sas) assert.ok(sa.bytes > 0 && sa.packets >= 3, JSON.stringify(sa));
  const cap = join(r.xdir, 'veth0.pcapng');
  assert.ok((await countRawEsp(cap)) >= 6);
  assert.equal(await countEspInUdp(cap), 0);
});

test('kernel-lab: strongSwan kernel-netlink pair inside UML via the peer harness', async (t) => {
  const skip = skipReason(umlMissing());
  if (skip) { t.skip(skip); return; }
  const r = await runFunctionInUml<KernelPairResult>(harnessModule('guest-scenarios.js'), 'strongswanKernelPair', { capture: true }, { timeoutMs: 300_000, keepXdir: true });
  t.after(() => rmSync(r.xdir, { recursive: true, force: true }));
  t.diagnostic(`UML strongSwan pair ${r.durationMs} ms`);
  assert.equal(r.error, undefined, `${r.error}\n${r.output.slice(-4000)}`);
  const v = r.value!;
  t.diagnostic(`tunnel up in ${v.initiateMs} ms inside UML`);
  assert.equal(v.ike.state, 'ESTABLISHED');
  assert.equal(v.child.state, 'INSTALLED');
  assert.equal(v.child.encap, false);
  assert.ok(v.child.bytesIn > 0 && v.child.bytesOut > 0);
  assert.equal(v.xfrm.length, 2);
  for (const sa of v.xfrm) assert.ok(sa.bytes > 0, JSON.stringify(sa));
  assert.ok(v.captureFile);
  assert.ok((await countIke(v.captureFile)) >= 4);
  assert.ok((await countRawEsp(v.captureFile)) >= 6);
  assert.equal(await countEspInUdp(v.captureFile), 0);
});

test('kernel-lab: Libreswan pluto <-> strongSwan charon inside UML (both initiate)', async (t) => {
  const skip = skipReason(umlMissing(), libreswanMissing());
  if (skip) { t.skip(skip); return; }
  const r = await runFunctionInUml<{ rounds: { initiator: string; traffic: { inBytes: number; outBytes: number }[]; childBytes: number; xfrmMin: number }[] }>(
    harnessModule('guest-scenarios.js'), 'libreswanVsStrongswan', {}, { timeoutMs: 400_000 });
  t.diagnostic(`UML Libreswan vs strongSwan ${r.durationMs} ms`);
  assert.equal(r.error, undefined, `${r.error}\n${r.output.slice(-4000)}`);
  const rounds = r.value!.rounds;
  assert.deepEqual(rounds.map((x) => x.initiator), ['pluto', 'charon']);
  for (const round of rounds) {
    assert.ok(round.traffic.length >= 1 && round.traffic.some((s) => s.inBytes > 0 && s.outBytes > 0), JSON.stringify(round));
    assert.ok(round.childBytes > 0);
    assert.ok(round.xfrmMin > 0);
  }
});
