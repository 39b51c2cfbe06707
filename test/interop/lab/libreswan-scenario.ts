/**
 * Runs INSIDE the UML guest (real 6.1 kernel, kernel ESP): Libreswan 4.10 pluto in gwa
 * against fleetswan in gwb (`fleetswan dataplane --backend xfrm` + `fleetswan ikeagent`),
 * IKEv2 without NAT-T (both on UDP 500, plain ESP). For each auth mode (PSK, then ECDSA
 * P-256 certificates from an openssl test CA) pluto initiates, then we do; each round
 * reads pluto's own view (`whack --trafficstatus`, and its kernel SAs with `ip xfrm state`),
 * ours (ListSas over the agent's control socket) and pings through kernel ESP both ways
 * with a capture on gwa's veth. Returns JSON for ikeagent-libreswan.itest.ts to judge.
 *
 *   gwa (pluto, XFRM)  192.0.2.1 ==veth== 192.0.2.2  gwb (fleetswan ikeagent + dataplane xfrm)
 *   10.1.0.1/32 on lo                                10.2.0.1/32 on lo
 */
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { ikeagent } from '@fleetswan/proto';
import { siteToSiteTopology, type Topology } from '../../harness/netns.js';
import { startPluto, type Pluto } from '../../harness/peers.js';
import { startCapture } from '../../harness/capture.js';
import { parseXfrmState, umlExchangeDir } from '../../harness/kernel-lab.js';
import { makeTempDir, run, sleep, waitFor, type Proc } from '../../harness/util.js';
import { A, B, FLEETSWAN, PSK, agentYaml, makePki } from '../ikeagent-fixture.js';

export type Mode = 'psk' | 'ecdsa';

export interface RoundResult {
  mode: Mode;
  initiator: 'pluto' | 'fleetswan';
  /** Ours (ListSas): IKE SA and the installed CHILD SA. */
  ours: { state: string; initiator: boolean; algorithms: string; remoteId: string; children: { state: string; spiIn: number; spiOut: number; algorithms: string; udpEncap: boolean; localTs: string[]; remoteTs: string[] }[] } | undefined;
  /** pluto's `whack --trafficstatus` entries after the pings. */
  plutoTraffic: { conn: string; type: string; inBytes: number; outBytes: number; id: string }[];
  /** pluto's kernel SAs (ip xfrm state in gwa): SPI (hex) -> dst. */
  plutoXfrm: { src: string; dst: string; spi: string; bytes: number }[];
  /** Our kernel SAs (ip xfrm state in gwb). */
  ourXfrm: { src: string; dst: string; spi: string; bytes: number }[];
  pingAB: { ok: boolean; out: string };
  pingBA: { ok: boolean; out: string };
  /**
   * What each gateway sent on its veth (`outbound`: a tunnel-mode receiver's capture also
   * shows the decrypted inner packets re-injected on the interface); together the wire.
   * In the exchange dir; the host counts packets.
   */
  captureFiles?: string[];
  plutoAuthLine?: string;
  ms: number;
}

export interface ScenarioResult {
  rounds: RoundResult[];
  errors: string[];
  logs: Record<string, string>;
}

const tail = (s: string, n = 60): string => s.trimEnd().split('\n').slice(-n).join('\n');

function controlClient(socket: string): ikeagent.IkeAgentClient {
  return new ikeagent.IkeAgentClient(`unix://${socket}`, grpc.credentials.createInsecure());
}

// eslint-disable-next-line @typescript-eslint/no-explicit-any
function call<Res>(c: ikeagent.IkeAgentClient, fn: (...a: any[]) => unknown, req: unknown, timeoutMs = 30_000): Promise<Res> {
  return new Promise((resolve, reject) =>
    fn.call(c, req, new grpc.Metadata(), { deadline: new Date(Date.now() + timeoutMs) }, (e: Error | null, r: Res) => (e ? reject(e) : resolve(r))),
  );
}

/** Libreswan ipsec.conf for gwa (left) with PSK or certificate auth. */
export function plutoConf(logFile: string, mode: Mode): string {
  const auth = mode === 'psk'
    ? '    authby=secret\n    leftid=@gwa.example.test\n    rightid=@gwb.example.test\n'
    : '    authby=ecdsa\n    leftcert=gwa\n    leftsendcert=always\n    leftid=@gwa.example.test\n    rightid=@gwb.example.test\n    rightca=%same\n';
  return `config setup
    logfile=${logFile}
    logtime=yes
    plutodebug=none
    dnssec-enable=no

conn s2s
    ikev2=yes
${auth}    left=${A.addr}
    leftsubnet=${A.net}
    leftsourceip=10.1.0.1
    leftupdown=/usr/libexec/ipsec/_updown.xfrm
    right=${B.addr}
    rightsubnet=${B.net}
    ike=aes_gcm256-sha2_256-dh31
    esp=aes_gcm256
    encapsulation=no
    auto=add
`;
}

interface Ours {
  dataplane: Proc;
  agent: Proc;
  dir: string;
  client: ikeagent.IkeAgentClient;
  log(): string;
  stop(): Promise<void>;
}

/** Our side in gwb: the xfrm dataplane (no NAT-T socket: Libreswan stays on 500) and the agent. */
async function startOurs(net: Topology, yaml: string): Promise<Ours> {
  const dir = makeTempDir(`fs-ours-${net.runId}`);
  mkdirSync(dir, { recursive: true });
  const dpSock = join(dir, 'dataplane.sock');
  const ctlSock = join(dir, 'ikeagent.sock');
  writeFileSync(join(dir, 'agent.yaml'), yaml);
  const dataplane = net.spawn('gwb', [process.execPath, FLEETSWAN, 'dataplane', '--backend', 'xfrm', '--socket', dpSock, '--metrics-port', '0', '--state-file', join(dir, 'dataplane-state.json')], { logFile: join(dir, 'dataplane.log') });
  await waitFor('dataplane socket', () => {
    if (!dataplane.running) throw new Error(`dataplane exited:\n${dataplane.log()}`);
    return existsSync(dpSock);
  }, { timeoutMs: 120_000, intervalMs: 250 });
  // Node is slow in UML: the default retransmission schedule (4 s, 1.8, 5 tries).
  const agent = net.spawn('gwb', [process.execPath, FLEETSWAN, 'ikeagent', '--config', join(dir, 'agent.yaml'), '--dataplane', dpSock, '--control-socket', ctlSock, '--metrics-port=-1', '--address', B.addr, '--delete-on-exit', '--log-level', 'debug'], { logFile: join(dir, 'ikeagent.log') });
  const log = (): string => (existsSync(join(dir, 'ikeagent.log')) ? readFileSync(join(dir, 'ikeagent.log'), 'utf8') : '');
  await waitFor('ikeagent control socket', () => {
    if (!agent.running) throw new Error(`ikeagent exited:\n${log()}`);
    return existsSync(ctlSock);
  }, { timeoutMs: 120_000, intervalMs: 250 });
  const client = controlClient(ctlSock);
  await waitFor('ikeagent answers', async () => (await call<ikeagent.ListConnectionsResponse>(client, client.listConnections, {}).catch(() => undefined))?.connections.length === 1, { timeoutMs: 60_000, intervalMs: 500 });
  return {
    dataplane,
    agent,
    dir,
    client,
    log,
    async stop() {
      client.close();
      await agent.stop(15_000);
      await dataplane.stop(10_000);
    },
  };
}

async function ourSa(o: Ours): Promise<RoundResult['ours']> {
  const r = await call<ikeagent.ListSasResponse>(o.client, o.client.listSas, { connection: '' });
  const json = ikeagent.ListSasResponse.toJSON(r) as { ikeSas?: NonNullable<RoundResult['ours']>[] };
  return (json.ikeSas ?? []).find((s) => s.state === 'IKE_SA_STATE_ESTABLISHED' && (s.children ?? []).some((c) => c.state === 'CHILD_SA_STATE_INSTALLED'));
}

const xfrm = async (net: Topology, node: string): Promise<RoundResult['plutoXfrm']> =>
  parseXfrmState((await net.exec(node, ['ip', '-s', 'xfrm', 'state'])).stdout).filter((s) => s.proto === 'esp').map((s) => ({ src: s.src, dst: s.dst, spi: s.spi, bytes: s.bytes }));

async function ping(net: Topology, node: string, src: string, dst: string): Promise<{ ok: boolean; out: string }> {
  const r = await net.exec(node, ['ping', '-c', '5', '-i', '0.3', '-W', '3', '-I', src, dst], { allowFail: true, timeoutMs: 60_000 });
  return { ok: r.code === 0, out: `${r.stdout}${r.stderr}`.trim().split('\n').slice(-3).join(' | ') };
}

async function round(net: Topology, mode: Mode, initiator: RoundResult['initiator'], pluto: Pluto, ours: Ours): Promise<RoundResult> {
  const t0 = Date.now();
  const xdir = umlExchangeDir();
  const caps = xdir ? await Promise.all(['gwa', 'gwb'].map((gw) => startCapture(net.nsOf(gw), 'veth0', { file: join(xdir, `${mode}-${initiator}-${gw}.pcapng`), filter: 'outbound and (udp or ip proto 50 or icmp)', startTimeoutMs: 60_000 }))) : [];
  // dumpcap says "Capturing on" a little before its filter sees packets (slow in UML):
  // without this pause the first IKE_SA_INIT was sometimes missing from the capture.
  if (caps.length) await sleep(3000);
  if (initiator === 'pluto') {
    await pluto.initiate('s2s', 120_000);
  } else {
    const r = await call<ikeagent.CommandResult>(ours.client, ours.client.initiate, { connection: 'net', wait: true, timeoutMs: 90_000 }, 100_000);
    if (!r.ok) throw new Error(`fleetswan initiate failed: ${r.code} ${r.message}`);
  }
  await waitFor('our IKE and CHILD SA', () => ourSa(ours), { timeoutMs: 60_000, intervalMs: 500 });
  await waitFor('pluto traffic status', async () => (await pluto.trafficStatus()).length > 0, { timeoutMs: 60_000, intervalMs: 500 });
  const pingAB = await ping(net, 'gwa', '10.1.0.1', '10.2.0.1');
  const pingBA = await ping(net, 'gwb', '10.2.0.1', '10.1.0.1');
  for (const c of caps) await c.stop();
  const plutoTraffic = (await pluto.trafficStatus()).map(({ conn, type, inBytes, outBytes, id }) => ({ conn, type, inBytes, outBytes, id }));
  const plutoAuthLine = readFileSync(pluto.logFile, 'utf8').split('\n').filter((l) => /authenticated|established IKE SA/i.test(l)).slice(-2).join('\n');
  return {
    mode,
    initiator,
    ours: await ourSa(ours),
    plutoTraffic,
    plutoXfrm: await xfrm(net, 'gwa'),
    ourXfrm: await xfrm(net, 'gwb'),
    pingAB,
    pingBA,
    captureFiles: caps.map((c) => c.file),
    plutoAuthLine,
    ms: Date.now() - t0,
  };
}

/** Both auth modes, each side initiating. */
export async function main(arg: { modes?: Mode[] } = {}): Promise<ScenarioResult> {
  const res: ScenarioResult = { rounds: [], errors: [], logs: {} };
  for (const mode of arg.modes ?? ['psk', 'ecdsa']) {
    const net = await siteToSiteTopology();
    let pluto: Pluto | undefined;
    let ours: Ours | undefined;
    try {
      const work = makeTempDir(`fs-ls-${mode}-${net.runId}`);
      let yaml: string;
      let pki: Awaited<ReturnType<typeof makePki>> | undefined;
      if (mode === 'psk') {
        yaml = agentYaml({ forceEncap: false });
      } else {
        pki = await makePki(join(work, 'pki'), 'ecdsa-p256', join(work, 'swanctl-unused'));
        yaml = agentYaml({
          forceEncap: false,
          auth: 'pubkey',
          secretRef: 'gwb-key',
          extraSecrets: `  gwb-key:\n    private_key_file: ${pki.gwbKey}\n    certificate_file: ${pki.gwbCert}\n`,
          remoteCaFile: pki.ca,
        });
      }
      const plutoDir = join(work, 'pluto');
      mkdirSync(plutoDir, { recursive: true });
      pluto = await startPluto({
        net,
        ns: net.nsOf('gwa'),
        dir: plutoDir,
        config: (dir) => plutoConf(join(dir, 'pluto.log'), mode),
        secrets: mode === 'psk' ? `@gwa.example.test @gwb.example.test : PSK "${PSK}"\n` : '# certificate mode: the key is in NSS\n',
        startTimeoutMs: 120_000,
      });
      if (pki) {
        // gwa's key and certificate into pluto's NSS database; the CA trusted for peers.
        const nss = `sql:${join(plutoDir, 'nss')}`;
        const dir = join(work, 'pki');
        await run(['certutil', '-A', '-d', nss, '-n', 'fleetswan-ca', '-t', 'CT,,', '-i', pki.ca]);
        await run(['openssl', 'pkcs12', '-export', '-in', join(dir, 'gwa.crt'), '-inkey', join(dir, 'gwa.key'), '-name', 'gwa', '-out', join(dir, 'gwa.p12'), '-passout', 'pass:']);
        await run(['pk12util', '-i', join(dir, 'gwa.p12'), '-d', nss, '-W', '']);
      }
      ours = await startOurs(net, yaml);
      await pluto.addConn('s2s');
      for (const initiator of ['pluto', 'fleetswan'] as const) {
        try {
          res.rounds.push(await round(net, mode, initiator, pluto, ours));
        } catch (err) {
          res.errors.push(`${mode}/${initiator}: ${(err as Error).message}`);
        }
        // Tear down from the other side each time: pluto deletes after its round, we after ours.
        if (initiator === 'pluto') await pluto.terminate('s2s');
        else await call(ours.client, ours.client.terminate, { connection: 'net', wait: true, timeoutMs: 30_000 }, 40_000).catch((e) => res.errors.push(`terminate: ${(e as Error).message}`));
        await waitFor('both sides forget the SAs', async () => !(await ourSa(ours!)) && (await pluto!.trafficStatus()).length === 0, { timeoutMs: 60_000, intervalMs: 500 })
          .catch((e) => res.errors.push(`${mode}/${initiator} teardown: ${(e as Error).message}`));
      }
    } catch (err) {
      res.errors.push(`${mode}: ${(err as Error).stack ?? err}`);
    } finally {
      if (ours) res.logs[`${mode}-ikeagent`] = tail(ours.log().split('\n').filter((l) => !/"level":20/.test(l)).join('\n'), 80);
      if (pluto) res.logs[`${mode}-pluto`] = tail(readFileSync(pluto.logFile, 'utf8').split('\n').filter((l) => /"s2s"|#\d+:|ERROR|error|fail/i.test(l)).join('\n'), 80);
      await ours?.stop().catch(() => undefined);
      await pluto?.stop().catch(() => undefined);
      await net.destroy();
    }
  }
  return res;
}
