// Proves the strongSwan peer harness and the capture harness on the host:
// two charons (kernel-libipsec, ESP-in-UDP) bring up a site-to-site tunnel,
// ping goes through it, list-sas shows the SAs with traffic, and the capture
// on the wire shows IKE + ESP-in-UDP only (no raw ESP, no cleartext).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { siteToSiteTopology } from './netns.js';
import { startCharon, renderSwanctlConf, siteToSiteConn, pskSecret, makeTestPki, CHARON } from './peers.js';
import { startCapture, countIke, countEspInUdp, countRawEsp, assertNoPackets, ipsecSummary } from './capture.js';
import { needExecutable, needRoot, run, skipReason } from './util.js';

const PSK = 'fleetswan-harness-test-psk-0123456789';

test('peers: strongSwan <-> strongSwan (libipsec, encap) tunnel, list-sas, capture', async (t) => {
  const skip = skipReason(needRoot(), needExecutable(CHARON, 'swanctl', 'dumpcap', 'tshark'));
  if (skip) { t.skip(skip); return; }
  const net = await siteToSiteTopology();
  t.after(() => net.destroy());
  const [gwa, gwb] = await Promise.all([
    startCharon({ net, ns: net.nsOf('gwa'), name: 'gwa', mode: 'libipsec' }),
    startCharon({ net, ns: net.nsOf('gwb'), name: 'gwb', mode: 'libipsec' }),
  ]);
  t.after(async () => { await gwa.stop(); await gwb.stop(); });
  const conf = (a: 'a' | 'b') => renderSwanctlConf([siteToSiteConn({
    localAddr: a === 'a' ? '192.0.2.1' : '192.0.2.2',
    remoteAddr: a === 'a' ? '192.0.2.2' : '192.0.2.1',
    localId: `gw${a}.example.test`,
    remoteId: a === 'a' ? 'gwb.example.test' : 'gwa.example.test',
    localTs: a === 'a' ? '10.1.0.0/16' : '10.2.0.0/16',
    remoteTs: a === 'a' ? '10.2.0.0/16' : '10.1.0.0/16',
    auth: { psk: PSK },
    encap: true,
    dpdDelay: '10s',
  })], [pskSecret('s2s', ['gwa.example.test', 'gwb.example.test'], PSK)]);
  await gwa.load(conf('a'));
  await gwb.load(conf('b'));

  const cap = await startCapture(net.nsOf('gwa'), 'veth0', { filter: 'udp or ip proto 50 or icmp' });
  t.after(() => cap.stop(0));
  const t0 = Date.now();
  await gwa.initiate({ child: 'net' });
  t.diagnostic(`tunnel up in ${Date.now() - t0} ms`);

  await net.exec('gwa', ['ping', '-c', '3', '-W', '2', '-I', '10.1.0.1', '10.2.0.1']);
  await net.exec('gwb', ['ping', '-c', '3', '-W', '2', '-I', '10.2.0.1', '10.1.0.1']);
  await cap.stop();

  for (const gw of [gwa, gwb]) {
    const sas = await gw.listSas();
    assert.equal(sas.length, 1, JSON.stringify(sas));
    const ike = sas[0]!;
    assert.equal(ike.name, 's2s');
    assert.equal(ike.state, 'ESTABLISHED');
    assert.equal(ike.version, 2);
    assert.equal(ike.encrAlg, 'AES_GCM_16');
    assert.equal(ike.dhGroup, 'CURVE_25519');
    assert.match(ike.spiInitiator, /^[0-9a-f]{16}$/);
    assert.equal(ike.initiator, gw === gwa);
    assert.equal(ike.children.length, 1);
    const c = ike.children[0]!;
    assert.equal(c.name, 'net');
    assert.equal(c.state, 'INSTALLED');
    assert.equal(c.encap, true);
    assert.match(c.spiIn, /^[0-9a-f]{8}$/);
    assert.ok(c.bytesIn > 0 && c.bytesOut > 0 && c.packetsIn >= 6 && c.packetsOut >= 6, JSON.stringify(c));
    assert.deepEqual(c.localTs, [gw === gwa ? '10.1.0.0/16' : '10.2.0.0/16']);
  }

  const ike = await countIke(cap.file);
  const espUdp = await countEspInUdp(cap.file);
  const raw = await countRawEsp(cap.file);
  t.diagnostic(`capture: ${ike} IKE, ${espUdp} ESP-in-UDP, ${raw} raw ESP; summary ${JSON.stringify(await ipsecSummary(cap.file))}`);
  assert.ok(ike >= 4, `IKE packets: ${ike}`);
  assert.ok(espUdp >= 6, `ESP-in-UDP packets: ${espUdp}`);
  assert.equal(raw, 0);
  await assertNoPackets(cap.file, 'ip.src==10.1.0.0/16 && ip.dst==10.2.0.0/16');
  await assertNoPackets(cap.file, 'ip.src==10.2.0.0/16 && ip.dst==10.1.0.0/16');

  // terminate: both sides forget the SA
  await gwa.terminate({ ike: 's2s' });
  assert.deepEqual(await gwa.listSas(), []);
});

test('peers: strongSwan pair with certificates (makeTestPki, auth = pubkey)', async (t) => {
  const skip = skipReason(needRoot(), needExecutable(CHARON, 'swanctl', 'openssl'));
  if (skip) { t.skip(skip); return; }
  const net = await siteToSiteTopology();
  t.after(() => net.destroy());
  const [gwa, gwb] = await Promise.all([
    startCharon({ net, ns: net.nsOf('gwa'), name: 'gwa', mode: 'libipsec' }),
    startCharon({ net, ns: net.nsOf('gwb'), name: 'gwb', mode: 'libipsec' }),
  ]);
  t.after(async () => { await gwa.stop(); await gwb.stop(); });
  // one PKI, copied into both swanctl dirs (each daemon loads x509/ private/ x509ca/)
  await makeTestPki(gwa.dir, ['gwa.example.test', 'gwb.example.test']);
  await run(['cp', '-r', `${gwa.dir}/x509`, `${gwa.dir}/x509ca`, `${gwa.dir}/private`, gwb.dir]);
  for (const [gw, me, peer, l, r, la, ra] of [
    [gwa, 'gwa', 'gwb', '10.1.0.0/16', '10.2.0.0/16', '192.0.2.1', '192.0.2.2'],
    [gwb, 'gwb', 'gwa', '10.2.0.0/16', '10.1.0.0/16', '192.0.2.2', '192.0.2.1'],
  ] as const) {
    await gw.load(renderSwanctlConf([siteToSiteConn({
      localAddr: la, remoteAddr: ra, localId: `${me}.example.test`, remoteId: `${peer}.example.test`,
      localTs: l, remoteTs: r, encap: true,
      auth: { cert: `${me}.example.test.crt`, key: `${me}.example.test.key`, ca: 'ca.crt' },
    })]));
  }
  await gwa.initiate({ child: 'net' });
  await net.exec('gwa', ['ping', '-c', '2', '-W', '2', '-I', '10.1.0.1', '10.2.0.1']);
  const sa = await gwb.waitEstablished({ ike: 's2s', child: 'net' });
  assert.equal(sa.remoteId, 'gwa.example.test');
  assert.ok(sa.children[0]!.bytesIn > 0);
});
