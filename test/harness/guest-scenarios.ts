/**
 * Scenarios meant to run INSIDE the UML guest (kernel ESP), via
 * runFunctionInUml(harnessModule('guest-scenarios.js'), '<name>', arg).
 * They use the same netns/peers/capture harnesses as host tests and return
 * plain JSON results; assertions are made by the host-side test.
 */
import { join } from 'node:path';
import { siteToSiteTopology } from './netns.js';
import { startCharon, startPluto, renderSwanctlConf, siteToSiteConn, pskSecret, renderLibreswanConf, type ChildSa, type IkeSa } from './peers.js';
import { startCapture } from './capture.js';
import { parseXfrmState, umlExchangeDir } from './kernel-lab.js';
import { waitFor } from './util.js';

const PSK = 'fleetswan-harness-test-psk-0123456789';

function charonConf(side: 'a' | 'b', encap: boolean): string {
  const a = side === 'a';
  return renderSwanctlConf([siteToSiteConn({
    localAddr: a ? '192.0.2.1' : '192.0.2.2', remoteAddr: a ? '192.0.2.2' : '192.0.2.1',
    localId: a ? 'gwa.example.test' : 'gwb.example.test', remoteId: a ? 'gwb.example.test' : 'gwa.example.test',
    localTs: a ? '10.1.0.0/16' : '10.2.0.0/16', remoteTs: a ? '10.2.0.0/16' : '10.1.0.0/16',
    auth: { psk: PSK }, encap,
  })], [pskSecret('s2s', ['gwa.example.test', 'gwb.example.test'], PSK)]);
}

export interface KernelPairResult {
  ike: Omit<IkeSa, 'raw' | 'children'>;
  child: Omit<ChildSa, 'raw'>;
  xfrm: ReturnType<typeof parseXfrmState>;
  initiateMs: number;
  captureFile?: string;
}

/** strongSwan <-> strongSwan with kernel-netlink (XFRM), ping both ways. */
export async function strongswanKernelPair(arg: { capture?: boolean } = {}): Promise<KernelPairResult> {
  const net = await siteToSiteTopology();
  try {
    const [gwa, gwb] = await Promise.all([
      startCharon({ net, ns: net.nsOf('gwa'), name: 'gwa', mode: 'kernel', startTimeoutMs: 60_000 }),
      startCharon({ net, ns: net.nsOf('gwb'), name: 'gwb', mode: 'kernel', startTimeoutMs: 60_000 }),
    ]);
    await gwa.load(charonConf('a', false));
    await gwb.load(charonConf('b', false));
    const xdir = umlExchangeDir();
    const cap = arg.capture && xdir
      ? await startCapture(net.nsOf('gwa'), 'veth0', { file: join(xdir, 'veth0.pcapng'), filter: 'udp or ip proto 50', startTimeoutMs: 60_000 })
      : undefined;
    const t0 = Date.now();
    await gwa.initiate({ child: 'net', timeoutS: 60 });
    const initiateMs = Date.now() - t0;
    await net.exec('gwa', ['ping', '-c', '3', '-W', '2', '-I', '10.1.0.1', '10.2.0.1']);
    await net.exec('gwb', ['ping', '-c', '3', '-W', '2', '-I', '10.2.0.1', '10.1.0.1']);
    await cap?.stop();
    const sas = await gwa.listSas();
    const ike = sas[0];
    if (!ike || !ike.children[0]) throw new Error(`no SA on gwa: ${JSON.stringify(sas)}`);
    const { raw: _r, children: _c, ...ikeFlat } = ike;
    const { raw: _cr, ...child } = ike.children[0];
    const xfrm = parseXfrmState((await net.exec('gwb', ['ip', '-s', 'xfrm', 'state'])).stdout);
    return { ike: ikeFlat, child, xfrm, initiateMs, captureFile: cap?.file };
  } finally {
    await net.destroy();
  }
}

/**
 * Libreswan pluto (gwa) <-> strongSwan charon (gwb), kernel ESP.
 * Round 1: pluto initiates; round 2: charon initiates. Pings both ways each round.
 */
export async function libreswanVsStrongswan(): Promise<{ rounds: { initiator: string; traffic: { inBytes: number; outBytes: number }[]; childBytes: number; xfrmMin: number }[] }> {
  const net = await siteToSiteTopology();
  try {
    const pluto = await startPluto({
      net,
      ns: net.nsOf('gwa'),
      config: (dir) => renderLibreswanConf(join(dir, 'pluto.log'), [{
        left: '192.0.2.1', leftId: '@gwa.example.test', leftSubnet: '10.1.0.0/16', leftSourceIp: '10.1.0.1',
        right: '192.0.2.2', rightId: '@gwb.example.test', rightSubnet: '10.2.0.0/16',
      }]),
      secrets: `@gwa.example.test @gwb.example.test : PSK "${PSK}"\n`,
      startTimeoutMs: 60_000,
    });
    const charon = await startCharon({ net, ns: net.nsOf('gwb'), name: 'gwb', mode: 'kernel', startTimeoutMs: 60_000 });
    await charon.load(charonConf('b', false));
    await pluto.addConn('s2s');

    const rounds = [];
    for (const initiator of ['pluto', 'charon'] as const) {
      try {
        if (initiator === 'pluto') await pluto.initiate('s2s');
        else await charon.initiate({ child: 'net', timeoutS: 60 });
        await net.exec('gwa', ['ping', '-c', '3', '-W', '2', '-I', '10.1.0.1', '10.2.0.1']);
        await net.exec('gwb', ['ping', '-c', '3', '-W', '2', '-I', '10.2.0.1', '10.1.0.1']);
      } catch (e) {
        throw new Error(`${(e as Error).message}\n--- pluto:\n${pluto.logTail()}\n--- charon:\n${charon.logTail()}`);
      }
      const traffic = (await pluto.trafficStatus()).map((s) => ({ inBytes: s.inBytes, outBytes: s.outBytes }));
      const sas = await charon.listSas();
      const childBytes = Math.min(...sas.flatMap((s) => s.children.map((c) => Math.min(c.bytesIn, c.bytesOut))));
      const xfrm = parseXfrmState((await net.exec('gwa', ['ip', '-s', 'xfrm', 'state'])).stdout);
      const xfrmMin = xfrm.length ? Math.min(...xfrm.map((x) => x.bytes)) : 0;
      rounds.push({ initiator, traffic, childBytes, xfrmMin });
      if (initiator === 'pluto') {
        await pluto.terminate('s2s');
        await waitFor('charon forgets the IKE_SA', async () => (await charon.listSas()).every((s) => s.state !== 'ESTABLISHED'), { timeoutMs: 20_000, intervalMs: 250 });
      }
    }
    await pluto.stop();
    await charon.stop();
    return { rounds };
  } finally {
    await net.destroy();
  }
}
