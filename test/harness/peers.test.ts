// Unit tests for the output parsers of the peer harness (no daemons needed).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseViciPretty, toIkeSas, parseTrafficStatus, siteToSiteConn, renderSwanctlConf, pskSecret, renderLibreswanConf } from './peers.js';

// real `swanctl --list-sas --pretty` output of strongSwan 5.9.8 (libipsec pair)
const PRETTY = `
list-sa event {
  s2s {
    uniqueid = 1
    version = 2
    state = ESTABLISHED
    local-host = 192.0.2.1
    local-port = 4500
    local-id = gwa.example.test
    remote-host = 192.0.2.2
    remote-port = 4500
    remote-id = gwb.example.test
    initiator = yes
    initiator-spi = 32759aa6b720e605
    responder-spi = 8439aaa517c27a97
    nat-remote = yes
    nat-any = yes
    encr-alg = AES_GCM_16
    encr-keysize = 256
    prf-alg = PRF_HMAC_SHA2_256
    dh-group = CURVE_25519
    established = 0
    child-sas {
      net-1 {
        name = net
        uniqueid = 1
        reqid = 1
        state = INSTALLED
        mode = TUNNEL
        protocol = ESP
        encap = yes
        spi-in = e19f9763
        spi-out = 660abb3a
        encr-alg = AES_GCM_16
        encr-keysize = 256
        bytes-in = 84
        packets-in = 1
        use-in = 0
        bytes-out = 84
        packets-out = 1
        use-out = 0
        install-time = 0
        local-ts = [
          10.1.0.0/16
        ]
        remote-ts = [
          10.2.0.0/16
        ]
      }
    }
  }
}
list-sas reply {
}
`;

test('parseViciPretty + toIkeSas: list-sas output to typed SAs', () => {
  const events = parseViciPretty(PRETTY);
  assert.equal(events.length, 2); // the event and the (empty) reply
  const sas = toIkeSas(events);
  assert.equal(sas.length, 1);
  const s = sas[0]!;
  assert.equal(s.name, 's2s');
  assert.equal(s.state, 'ESTABLISHED');
  assert.equal(s.localPort, 4500);
  assert.equal(s.initiator, true);
  assert.equal(s.natAny, true);
  assert.equal(s.natLocal, false);
  assert.equal(s.encrKeysize, 256);
  assert.equal(s.prfAlg, 'PRF_HMAC_SHA2_256');
  const c = s.children[0]!;
  assert.equal(c.name, 'net');
  assert.equal(c.state, 'INSTALLED');
  assert.equal(c.mode, 'TUNNEL');
  assert.equal(c.bytesIn, 84);
  assert.equal(c.packetsOut, 1);
  assert.equal(c.spiIn.length, 8);
  assert.deepEqual(c.localTs, ['10.1.0.0/16']);
  assert.deepEqual(c.remoteTs, ['10.2.0.0/16']);
});

test('parseTrafficStatus: Libreswan whack --trafficstatus', () => {
  const out = `006 #2: "s2s", type=ESP, add_time=1700000000, inBytes=252, outBytes=504, maxBytes=2^63B, id='@gwb.example.test'
006 #4: "s2s"[1] 192.0.2.2, type=ESP, add_time=1700000001, inBytes=0, outBytes=0, id='@gwb.example.test'
`;
  const st = parseTrafficStatus(out);
  assert.equal(st.length, 2);
  assert.deepEqual({ ...st[0]!, raw: undefined }, { serial: 2, conn: 's2s', type: 'ESP', inBytes: 252, outBytes: 504, id: '@gwb.example.test', raw: undefined });
  assert.equal(st[1]!.serial, 4);
  assert.equal(st[1]!.raw.add_time, '1700000001');
});

test('config renderers produce the expected swanctl / ipsec.conf text', () => {
  const conf = renderSwanctlConf([siteToSiteConn({
    localAddr: '192.0.2.1', remoteAddr: '192.0.2.2', localId: 'a', remoteId: 'b',
    localTs: ['10.1.0.0/16', '10.3.0.0/16'], remoteTs: '10.2.0.0/16', auth: { psk: 'x' },
    encap: true, dpdDelay: '5s', dpdAction: 'restart', childRekeyTime: '1h',
  })], [pskSecret('s2s', ['a', 'b'], 'x')]);
  assert.match(conf, /encap = yes/);
  assert.match(conf, /dpd_delay = 5s/);
  assert.match(conf, /dpd_action = restart/);
  assert.match(conf, /local_ts = 10\.1\.0\.0\/16,10\.3\.0\.0\/16/);
  assert.match(conf, /rekey_time = 1h/);
  assert.match(conf, /id-1 = b/);
  // balanced braces
  assert.equal((conf.match(/\{/g) ?? []).length, (conf.match(/\}/g) ?? []).length);
  const cert = siteToSiteConn({ localAddr: '1', remoteAddr: '2', localId: 'a', remoteId: 'b', localTs: '0.0.0.0/0',
    remoteTs: '0.0.0.0/0', auth: { cert: 'a.crt', key: 'a.key', ca: 'ca.crt' } });
  assert.match(cert, /auth = pubkey/);
  assert.match(cert, /certs = a\.crt/);
  assert.match(cert, /cacerts = ca\.crt/);
  const ls = renderLibreswanConf('/x/pluto.log', [{ left: '192.0.2.1', leftId: '@a', leftSubnet: '10.1.0.0/16',
    leftSourceIp: '10.1.0.1', right: '192.0.2.2', rightId: '@b', rightSubnet: '10.2.0.0/16' }]);
  assert.match(ls, /ikev2=yes/);
  assert.match(ls, /leftsourceip=10\.1\.0\.1/);
  assert.match(ls, /logfile=\/x\/pluto\.log/);
});
