/**
 * End to end: a real Prometheus server (Debian's /usr/bin/prometheus, lab/src/prometheus.ts)
 * scrapes the lab's fleet (controller, keymgr, gw-a and gw-b's ikeagent and dataplane) with
 * deploy/prometheus/fleetswan-alerts.yaml loaded. Then:
 *   - every target is up and Prometheus evaluates every loaded rule without error;
 *   - a tunnel taken down (`fleetswan conn down a-b`, start action "start" as in the lab
 *     spec) makes FleetswanTunnelsDown's condition true: the real rule (for: 10m) goes
 *     pending, and a copy of it with `for: 4s` (a second rules file, label
 *     lab_variant="short-for") fires; `conn up` clears it;
 *   - every alert rule expression evaluates without error on the healthy fleet (and is
 *     empty: no alert condition holds), and every metric selector in it matches series,
 *     except the ones listed in EMPTY below with the reason;
 *   - after some activity (a spec change, a rejected apply, operator commands, new IKE SAs,
 *     CHILD SA rekeys, pings), every expression of the Grafana dashboard
 *     (deploy/grafana/*.json, variables substituted: $host = each fleet gateway's address,
 *     $__rate_interval = 1m) evaluates without error and returns data (not only NaN),
 *     except those whose missing series are listed in EMPTY with the reason: "never"
 *     (cannot exist in this lab: asserted empty) or "event" (counters created at the first
 *     error: empty unless it happened). Nothing is skipped.
 * One lab for the file (instance "e2eprom", management net 198.18.5.0/24; e2eprom1.. on
 * 198.18.21.0/24.. while another run holds it: see e2eLab).
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parse, stringify } from 'yaml';
import {
  PROMETHEUS, fleetGateways, labScrapeJobs, nsHost, ping, sleep, startLabPrometheus, stopLabPrometheus, waitFor,
  type Lab, type LabPrometheus, type VectorSample,
} from '@fleetswan/lab';
import { REPO, assertServicesPresent, e2eLab, keptLabHint, labPreconditions, logger, table } from './common.js';
import { needExecutable, skipReason } from '../harness/util.js';

const skip = labPreconditions() ?? skipReason(needExecutable(PROMETHEUS));
const log = logger('prometheus');

const SCRAPE_S = 2;
/** What Grafana's $__rate_interval stands for here (>= 4 scrape intervals; the activity phase fits in it). */
const RATE_INTERVAL = '1m';
const ALERTS_FILE = join(REPO, 'deploy/prometheus/fleetswan-alerts.yaml');

/**
 * Metric selectors with no series in the running lab, and why. Keyed by metric name (any
 * matchers) or by a selector as written in the expressions.
 *   never: cannot have series in this lab; every expression using them is asserted empty.
 *   event: a counter whose series (per label value) appear at the first occurrence of an
 *          event a healthy fleet need not have; expressions using them evaluate without
 *          error and may or may not have data (printed either way).
 * Any other selector must match series, and every dashboard expression must return data.
 */
const EMPTY: Record<string, { kind: 'never' | 'event'; why: string }> = {
  fleetswan_dataplane_xfrm_errors_total: { kind: 'never', why: 'xfrm backend only: the lab\'s gateways run the userspace ESP backend (its drops are fleetswan_dataplane_userspace_drops_total)' },
  fleetswan_keymgr_certificate_expiry_timestamp_seconds: { kind: 'never', why: 'gateway certificates only: every tunnel of the lab authenticates with a PSK' },
  gnatsd_varz_connections: { kind: 'never', why: 'the NATS exporter\'s (deploy/kubernetes); the lab runs nats-server without it (Debian does not package prometheus-nats-exporter)' },
  gnatsd_varz_slow_consumers: { kind: 'never', why: 'the NATS exporter\'s (deploy/kubernetes); the lab runs nats-server without it' },
  'up{job=~".*nats.*"}': { kind: 'never', why: 'no NATS exporter scrape job in the lab (nats-server itself serves JSON /varz, not Prometheus metrics)' },
  fleetswan_dataplane_errors_total: { kind: 'event', why: 'series per error code, created at the first failed dataplane API call: none fails in a healthy fleet' },
  fleetswan_ike_retransmissions_total: { kind: 'event', why: 'series per exchange, created at the first retransmission (one may happen at start, when a peer is not listening yet)' },
  fleetswan_ike_failures_total: { kind: 'event', why: 'series per reason, created at the first failure: none in a healthy fleet, no AUTH_FAILED/CERT_INVALID ever (a NO_SECRET at start, before the sealed PSK arrives, may create one)' },
};
const emptyEntry = (sel: string): { kind: 'never' | 'event'; why: string; key: string } | undefined => {
  const key = EMPTY[sel] ? sel : sel.replace(/\{.*$/, '');
  return EMPTY[key] ? { ...EMPTY[key]!, key } : undefined;
};

interface Panel { title?: string; targets?: { expr?: string; refId?: string }[]; panels?: Panel[] }
interface AlertRule { alert?: string; record?: string; expr: string; for?: string; labels?: Record<string, string> }
interface RuleGroup { name: string; rules: AlertRule[] }

const allPanels = (ps: Panel[]): Panel[] => ps.flatMap((p) => [p, ...allPanels(p.panels ?? [])]);

function dashboardExprs(): { file: string; panel: string; expr: string }[] {
  const dir = join(REPO, 'deploy/grafana');
  return readdirSync(dir).filter((f) => f.endsWith('.json')).flatMap((f) => {
    const d = JSON.parse(readFileSync(join(dir, f), 'utf8')) as { panels: Panel[] };
    return allPanels(d.panels).flatMap((p) => (p.targets ?? []).filter((t) => t.expr).map((t) => ({ file: f, panel: `${p.title ?? '?'} (${t.refId ?? '?'})`, expr: t.expr! })));
  });
}

function alertRules(): { group: string; rule: AlertRule }[] {
  const doc = parse(readFileSync(ALERTS_FILE, 'utf8')) as { groups: RuleGroup[] };
  return doc.groups.flatMap((g) => g.rules.map((rule) => ({ group: g.name, rule })));
}

/** Grafana's substitution of the variables the dashboard uses (single-valued $host: no escaping). */
function substitute(expr: string, host: string): string {
  return expr.replace(/\$__rate_interval|\$\{__rate_interval\}/g, RATE_INTERVAL).replace(/\$\{host\}|\$host\b/g, host);
}

const SELECTOR = /\b((?:fleetswan|gnatsd|process|nodejs)_[a-zA-Z0-9_:]*|up)\b(\s*\{[^}]*\})?(?!\s*\()/g;

/** The vector selectors of an expression (name and matchers, as written), e.g. `up{job=~".*nats.*"}`. */
function selectors(expr: string): string[] {
  const out = new Set<string>();
  for (const m of expr.matchAll(SELECTOR)) {
    // names after `by (` / `without (` / `on (` are labels, not metrics; so is anything inside `{...}`
    const before = expr.slice(0, m.index);
    if (/\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*$/.test(before) || /\{[^}]*$/.test(before)) continue;
    out.add(`${m[1]}${(m[2] ?? '').replace(/^\s+/, '')}`);
  }
  return [...out];
}

const isNaNSample = (s: VectorSample): boolean => s.value[1] === 'NaN';
const show = (v: VectorSample[]): string => v.length === 0 ? '(empty)' :
  v.slice(0, 6).map((s) => `${Object.entries(s.metric).map(([k, x]) => `${k}=${x}`).join(',') || '{}'} ${s.value[1]}`).join('; ') + (v.length > 6 ? `; ... (${v.length})` : '');

describe('e2e Prometheus: a real Prometheus scrapes the lab; dashboard and alert expressions against it', { skip: skip ?? false, concurrency: false, timeout: 600_000 }, () => {
  let lab: Lab;
  let prom: LabPrometheus;
  const figures: (string | number)[][] = [['check', 'figure']];
  const hosts = (): { gw: string; host: string }[] => fleetGateways(lab.c).map((g) => ({ gw: g.name, host: g.mgmtAddr }));

  before(async () => {
    await assertServicesPresent();
    lab = await e2eLab('e2eprom', '198.18.5');
    const t0 = Date.now();
    await lab.up({ step: log, tunnelTimeoutMs: 90_000 });
    figures.push(['fleet up', `${((Date.now() - t0) / 1000).toFixed(1)} s`]);
    // the tunnel-down rule with a short `for`, beside the real rules (which stay as they are)
    const groups = (parse(readFileSync(ALERTS_FILE, 'utf8')) as { groups: RuleGroup[] }).groups;
    const rule = groups.flatMap((g) => g.rules).find((r) => r.alert === 'FleetswanTunnelsDown');
    assert.ok(rule, `${ALERTS_FILE}: no FleetswanTunnelsDown rule`);
    const short = join(lab.c.stateDir, 'alerts-short-for.yaml');
    writeFileSync(short, stringify({ groups: [{ name: 'lab-short-for', rules: [{ ...rule, for: '4s', labels: { ...(rule.labels ?? {}), lab_variant: 'short-for' } }] }] }));
    const t1 = Date.now();
    prom = await startLabPrometheus(lab.c, { scrapeIntervalS: SCRAPE_S, extraRuleFiles: [short] });
    log(`prometheus ${prom.url} (pid ${prom.pid}), scraping every ${SCRAPE_S} s`);
    await prom.waitTargetsUp(60_000);
    figures.push(['prometheus start -> every target up', `${((Date.now() - t1) / 1000).toFixed(1)} s`]);
    // a couple of scrapes and rule evaluations
    await sleep(3 * SCRAPE_S * 1000);
  });

  after(async () => {
    process.stderr.write(`\n# e2e prometheus figures\n${table(figures).replace(/^/gm, '# ')}\n`);
    if (process.env.FLEETSWAN_KEEP_LAB === '1') {
      if (lab) process.stderr.write(`# ${keptLabHint(lab)}${prom ? `; prometheus ${prom.url}` : ''}\n`);
      return;
    }
    if (lab) await stopLabPrometheus(lab.c, { removeData: true });
    if (lab) await lab.down();
  });

  test('every target is up (controller, keymgr, each ikeagent and dataplane); every loaded rule evaluates without error', async () => {
    const targets = await prom.targets();
    const want = labScrapeJobs(lab.c).flatMap((j) => j.targets.map((t) => `${j.job} ${t}`)).sort();
    assert.deepEqual(targets.map((t) => `${t.scrapePool} ${t.labels.instance}`).sort(), want);
    for (const t of targets) assert.equal(t.health, 'up', `${t.scrapePool} ${t.scrapeUrl}: ${t.lastError}`);
    const groups = await prom.rules();
    const file = parse(readFileSync(ALERTS_FILE, 'utf8')) as { groups: RuleGroup[] };
    for (const g of file.groups) {
      const loaded = groups.find((x) => x.name === g.name);
      assert.ok(loaded, `rule group ${g.name} of ${ALERTS_FILE} is loaded`);
      assert.equal(loaded.rules.length, g.rules.length, `rule group ${g.name}: every rule loaded`);
    }
    const bad = groups.flatMap((g) => g.rules.filter((r) => r.health === 'err' || r.lastError).map((r) => `${g.name}/${r.name}: ${r.lastError}`));
    assert.deepEqual(bad, [], 'rules Prometheus could not evaluate');
    figures.push(['scrape targets up / rules loaded', `${targets.length} / ${groups.reduce((n, g) => n + g.rules.length, 0)}`]);
  });

  test('a tunnel taken down (conn down a-b): FleetswanTunnelsDown condition true, alert pending (for: 10m), its for: 4s copy firing; conn up clears it', async () => {
    const rule = alertRules().find((r) => r.rule.alert === 'FleetswanTunnelsDown')!.rule;
    const expr = rule.expr.trim();
    assert.deepEqual(await prom.vector(expr), [], `healthy fleet: \`${expr}\` is empty`);
    const upBefore = Number((await prom.vector('max(fleetswan_controller_connections{state="up"})'))[0]?.value[1]);
    const desired = Number((await prom.vector('max(fleetswan_controller_connections{state="desired"})'))[0]?.value[1]);
    assert.equal(upBefore, desired, 'every desired connection end is up before');

    const t0 = Date.now();
    const r = await lab.fleetswan(['conn', 'down', 'a-b'], { allowFail: true });
    assert.equal(r.code, 0, `fleetswan conn down a-b: ${r.stdout}${r.stderr}`);
    // the condition of the alert, evaluated by Prometheus on the scraped controller figures
    const v = await waitFor('FleetswanTunnelsDown condition true', async () => {
      const x = await prom.vector(expr);
      return x.length ? x : undefined;
    }, { timeoutMs: 45_000, intervalMs: 500 });
    const tCond = (Date.now() - t0) / 1000;
    log(`conn down a-b -> \`${expr.replace(/\s+/g, ' ')}\` = ${v[0]!.value[1]} after ${tCond.toFixed(1)} s`);
    assert.equal(Number(v[0]!.value[1]), 2, 'both ends of a-b are counted as not up');
    const states = await prom.vector('max by (state) (fleetswan_controller_connections)');
    log(`connection ends by state: ${show(states)}`);
    figures.push(['conn down a-b -> alert condition true (Prometheus)', `${tCond.toFixed(1)} s`]);

    // the rules Prometheus runs: the real one pending (for: 10m), the short-for copy firing
    const alerts = await waitFor('FleetswanTunnelsDown pending and its short-for copy firing', async () => {
      const a = (await prom.alerts()).filter((x) => x.labels.alertname === 'FleetswanTunnelsDown');
      const real = a.find((x) => !x.labels.lab_variant);
      const short = a.find((x) => x.labels.lab_variant === 'short-for');
      return real?.state === 'pending' && short?.state === 'firing' ? { real, short } : undefined;
    }, { timeoutMs: 30_000, intervalMs: 500 });
    const tFire = (Date.now() - t0) / 1000;
    log(`alerts: FleetswanTunnelsDown ${alerts.real.state} (for: ${rule.for}), short-for copy ${alerts.short.state}: "${alerts.short.annotations.summary}"`);
    assert.equal(alerts.short.labels.severity, 'critical');
    assert.equal(alerts.short.annotations.summary, '2 desired connection end(s) not up for 10 minutes');
    figures.push(['conn down a-b -> short-for copy firing', `${tFire.toFixed(1)} s`]);

    const u = await lab.fleetswan(['conn', 'up', 'a-b'], { allowFail: true, timeoutMs: 60_000 });
    assert.equal(u.code, 0, `fleetswan conn up a-b: ${u.stdout}${u.stderr}`);
    await lab.waitAllUp(60_000);
    await waitFor('FleetswanTunnelsDown condition false again', async () => (await prom.vector(expr)).length === 0, { timeoutMs: 45_000, intervalMs: 500 });
    await waitFor('no FleetswanTunnelsDown alert active', async () =>
      (await prom.alerts()).every((x) => x.labels.alertname !== 'FleetswanTunnelsDown'), { timeoutMs: 20_000, intervalMs: 500 });
    figures.push(['conn down a-b .. up, alert resolved', `${((Date.now() - t0) / 1000).toFixed(1)} s`]);
  });

  test('every alert rule expression evaluates without error; on the healthy fleet none holds; every metric selector it uses has series (except EMPTY)', async () => {
    // a rejected apply, so that fleetswan_controller_applies_total{outcome="invalid"} exists
    const bad = await lab.apply(lab.renderSpec({ connections: { 'a-c': { child_lifetime: '20s', rekey_margin: '30s' } } }), 'invalid.yaml').then(() => undefined, (e: Error) => e);
    assert.ok(bad, 'an apply with rekey_margin >= child_lifetime is rejected');
    await sleep(2 * SCRAPE_S * 1000 + 500);
    const rows: string[][] = [['alert', 'result', 'selectors without series']];
    const problems: string[] = [];
    for (const { rule } of alertRules()) {
      const expr = rule.expr.trim();
      let v: VectorSample[];
      try {
        v = await prom.vector(expr);
      } catch (e) {
        problems.push(`${rule.alert}: ${(e as Error).message}`);
        continue;
      }
      if (v.length) problems.push(`${rule.alert}: the condition holds on the healthy fleet: ${show(v)}`);
      const empty: string[] = [];
      for (const s of selectors(expr)) {
        const n = (await prom.vector(`count(${s})`)).length;
        const e = emptyEntry(s);
        if (n === 0) empty.push(`${s}${e ? ` [${e.kind}: ${e.key}]` : ''}`);
        if (n === 0 && !e) problems.push(`${rule.alert}: \`${s}\` matches no series in the running fleet (a metric or label value the services do not export?)`);
        if (n > 0 && e?.kind === 'never') problems.push(`${rule.alert}: \`${s}\` is listed in EMPTY as never having series here (${e.why}) but has some: revisit the list`);
      }
      rows.push([rule.alert ?? rule.record ?? '?', show(v), empty.join(' ') || '-']);
    }
    process.stderr.write(`${table(rows).replace(/^/gm, '# ')}\n`);
    assert.deepEqual(problems, []);
  });

  test('every dashboard expression evaluates without error and returns data for the running fleet (EMPTY: asserted empty or explained, with the reason)', async () => {
    // activity within the rate window: a spec change (agents apply), operator commands and
    // new IKE SAs (a-c, b-c: gw-a and gw-b initiate), CHILD SA rekeys (child_lifetime 20s,
    // rekey_margin 8s, no jitter: a rekey 12 s after each CHILD SA), pings through every tunnel
    const t0 = Date.now();
    const short = { child_lifetime: '20s', rekey_margin: '8s', rekey_fuzz: 0 };
    await lab.apply(lab.renderSpec({ connections: { 'a-c': short, 'b-c': short } }), 'short-child.yaml');
    for (const n of ['a-c', 'b-c']) {
      await lab.fleetswan(['conn', 'down', n], { allowFail: true });
      const u = await lab.fleetswan(['conn', 'up', n], { allowFail: true, timeoutMs: 60_000 });
      assert.equal(u.code, 0, `fleetswan conn up ${n}: ${u.stdout}${u.stderr}`);
    }
    await lab.waitAllUp(60_000);
    const pinger = (async () => {
      while (Date.now() - t0 < 40_000) {
        for (const t of lab.tunnels) await ping(nsHost(lab.c, t.a), t.b.hostAddr!, { count: 2, intervalS: 0.2 }).catch(() => undefined);
      }
    })();
    for (const { gw, host } of hosts()) {
      await waitFor(`a CHILD SA rekey by ${gw} seen by Prometheus`, async () =>
        (await prom.vector(`sum(fleetswan_rekey_duration_seconds_count{instance=~"${host}:.*"})`)).some((s) => Number(s.value[1]) > 0), { timeoutMs: 40_000, intervalMs: 1000 });
    }
    await pinger;
    await sleep(2 * SCRAPE_S * 1000);
    figures.push(['dashboard activity phase (apply, conn down/up, rekeys, pings)', `${((Date.now() - t0) / 1000).toFixed(1)} s`]);

    const rows: string[][] = [['panel', '$host', 'result']];
    const problems: string[] = [];
    const emptyRows: string[][] = [['empty: panel', '$host', 'why']];
    for (const { file, panel, expr } of dashboardExprs()) {
      const perHost = /\$\{?host\b/.test(expr);
      for (const { gw, host } of perHost ? hosts() : [{ gw: '-', host: '' }]) {
        const q = substitute(expr, host);
        const where = `${file} "${panel}"${perHost ? ` $host=${host} (${gw})` : ''}`;
        let v: VectorSample[];
        try {
          v = await prom.vector(q);
        } catch (e) {
          problems.push(`${where}: ${(e as Error).message}`);
          continue;
        }
        rows.push([panel, perHost ? gw : '-', show(v)]);
        const never = selectors(q).map(emptyEntry).find((e) => e?.kind === 'never');
        if (never) {
          // e.g. sum(gnatsd_varz_connections): asserted empty, not skipped
          if (v.length) problems.push(`${where}: \`${q}\` uses ${never.key}, listed as never having data here (${never.why}), but returned ${show(v)}: revisit EMPTY`);
          else emptyRows.push([panel, perHost ? gw : '-', `${never.key}: ${never.why}`]);
          continue;
        }
        if (v.length === 0) {
          // the selectors without series decide whether an empty result is legitimate
          const dead: { sel: string; e?: ReturnType<typeof emptyEntry> }[] = [];
          for (const s of selectors(q)) if ((await prom.vector(`count(${s})`)).length === 0) dead.push({ sel: s, e: emptyEntry(s) });
          const unexplained = dead.filter((d) => !d.e);
          if (dead.length && unexplained.length === 0) emptyRows.push([panel, perHost ? gw : '-', dead.map((d) => `${d.e!.key} (${d.e!.kind}): ${d.e!.why}`).join('; ')]);
          else problems.push(`${where}: \`${q}\` returned no data${unexplained.length ? ` (no series for ${unexplained.map((d) => d.sel).join(', ')})` : ''}`);
        } else if (v.every(isNaNSample)) {
          problems.push(`${where}: \`${q}\` returned only NaN (no observations in ${RATE_INTERVAL})`);
        }
      }
    }
    process.stderr.write(`${table(rows).replace(/^/gm, '# ')}\n${table(emptyRows).replace(/^/gm, '# ')}\n`);
    assert.deepEqual(problems, []);
    // the throughput panels show the pings: packets counted through every tunnel at both fleet ends
    const silent: string[] = [];
    for (const t of lab.tunnels) {
      for (const g of [t.a, t.b].filter((x) => x.kind === 'fleetswan')) {
        for (const m of ['fleetswan_dataplane_sa_packets_total', 'fleetswan_child_sa_packets']) {
          const v = await prom.vector(`sum(rate(${m}{instance=~"${g.mgmtAddr}:.*", connection="${t.name}"}[${RATE_INTERVAL}]))`);
          if (!(Number(v[0]?.value[1]) > 0)) silent.push(`${m} ${t.name} on ${g.name}: ${show(v)}`);
        }
      }
    }
    assert.deepEqual(silent, [], `pings went through every tunnel for 40 s, yet these counted no packets in ${RATE_INTERVAL}`);
    // and the dashboard's $host variable: label_values(fleetswan_agent_nats_connected, instance) with its regex
    const inst = (await prom.vector('fleetswan_agent_nats_connected')).map((s) => s.metric.instance!.replace(/^([^:]+):\d+$/, '$1')).sort();
    assert.deepEqual(inst, hosts().map((h) => h.host).sort(), 'the $host variable lists every fleet gateway');
    // put the lab spec back (not needed by later tests; keeps a FLEETSWAN_KEEP_LAB lab tidy)
    await lab.apply(lab.renderSpec(), 'default.yaml');
  });
});
