/**
 * Interop through a NAT: fleetswan (gwb, behind a masquerading router) initiates to
 * strongSwan (gwa). NAT detection must find "local host is behind NAT", IKE and ESP move
 * to UDP 4500, and we send NAT-T keepalives.
 *
 *   gwa 192.0.2.1 ==== 192.0.2.254 rtr 198.51.100.254 ==== 198.51.100.2 gwb
 *   (strongSwan)        nftables masquerade to 192.0.2.0/24       (fleetswan)
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createTopology, needExecutable, needRoot, newRunId, skipReason, startCapture, countPackets, waitFor, CHARON, SWANCTL } from '../harness/index.js';
import { A, B, agentYaml, charonConf, logMessages, startEnv } from './ikeagent-fixture.js';

const skip = skipReason(needRoot(), needExecutable(CHARON, SWANCTL, '/usr/sbin/nft'));
const GWB = '198.51.100.2';

test('NAT: masquerading router between the gateways; NAT detected, UDP 4500, keepalives', { skip: skip ?? false }, async () => {
  const topology = async () => {
    const net = await createTopology({
      runId: newRunId(),
      nodes: { gwa: { lo: ['10.1.0.1/32'] }, rtr: { forward: true }, gwb: { lo: ['10.2.0.1/32'] } },
      links: [
        { a: 'gwa', b: 'rtr', aIf: 'veth0', bIf: 'veth-a', aAddr: '192.0.2.1/24', bAddr: '192.0.2.254/24' },
        { a: 'gwb', b: 'rtr', aIf: 'veth0', bIf: 'veth-b', aAddr: `${GWB}/24`, bAddr: '198.51.100.254/24' },
      ],
      routes: [{ node: 'gwb', to: 'default', via: '198.51.100.254' }],
    });
    await net.sh('rtr', 'nft add table ip nat && nft add chain ip nat post "{ type nat hook postrouting priority 100; }" && nft add rule ip nat post oifname veth-a masquerade');
    return net;
  };
  const yaml = agentYaml({ localAddr: GWB, forceEncap: false, startAction: 'add' });
  const conf = charonConf({ remoteAddr: '%any', encap: true });
  const env = await startEnv(yaml, conf, { topology, agentAddr: GWB, agentArgs: ['--keepalive-seconds', '2'] });
  try {
    const cap = await startCapture(env.net.nsOf('gwa'), 'veth0', {});
    const r = await env.agent.ctl(['up', 'net', '--wait', '--timeout', '15000']);
    assert.equal(r.code, 0, r.stdout + r.stderr);
    const sa = await env.charon.waitEstablished({ ike: 's2s', child: 'net' });
    assert.equal(sa.remoteHost, '192.0.2.254', 'strongSwan sees the NAT address');
    assert.equal(sa.natRemote, true, 'strongSwan: remote host is behind NAT');
    const ours = (await env.agent.status())[0]!;
    assert.equal(ours.natLocal, true, 'we: local host is behind NAT');
    assert.equal(ours.children![0]!.udpEncap, true);
    assert.ok(logMessages(env.agent).some((l) => l.includes('local host is behind NAT')));
    await new Promise((res) => setTimeout(res, 5000));
    await cap.stop();
    assert.ok((await countPackets(cap.file, 'udp.dstport == 4500 && udp.length == 9')) >= 2, 'NAT-T keepalives (1-octet 0xFF) seen at gwa');
    assert.ok((await countPackets(cap.file, 'udp.port == 4500 && isakmp')) >= 2, 'IKE_AUTH on 4500');
  } catch (err) {
    throw new Error(`${(err as Error).message}\n--- ikeagent:\n${logMessages(env.agent).slice(-30).join('\n')}\n--- charon:\n${env.charon.logTail(40)}`);
  } finally {
    await env.destroy();
  }
  void A;
  void B;
});
