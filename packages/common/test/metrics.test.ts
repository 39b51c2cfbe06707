import { test } from "node:test";
import assert from "node:assert/strict";
import { Counter } from "prom-client";
import { createRegistry, startMetricsServer } from "../src/index.js";

test("metrics server serves /metrics, /healthz and /readyz", async (t) => {
  const registry = createRegistry("test");
  const c = new Counter({ name: "fleetswan_test_events_total", help: "test", registers: [registry] });
  c.inc(3);
  let ready = false;
  const srv = await startMetricsServer({ registry, port: 0, host: "127.0.0.1", ready: () => (ready ? { ok: true } : { ok: false, reason: "dataplane not connected" }) });
  t.after(() => srv.close());
  const base = `http://127.0.0.1:${srv.port}`;
  const m = await fetch(`${base}/metrics`);
  assert.equal(m.status, 200);
  const text = await m.text();
  assert.match(text, /fleetswan_test_events_total\{service="test"\} 3/);
  assert.match(text, /process_resident_memory_bytes\{service="test"\}/);
  assert.equal((await fetch(`${base}/healthz`)).status, 200);
  const r = await fetch(`${base}/readyz`);
  assert.equal(r.status, 503);
  assert.match(await r.text(), /dataplane not connected/);
  ready = true;
  assert.equal((await fetch(`${base}/readyz`)).status, 200);
  assert.equal((await fetch(`${base}/nope`)).status, 404);
});
