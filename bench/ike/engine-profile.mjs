#!/usr/bin/env node
// In-process profile of the fleetswan IKEv2 responder: the engine (fake dataplane, no UDP)
// answers the lean initiator of `fleetswan bench ike` through direct calls, so the profile
// shows CPU in the engine and crypto without socket and scheduler noise, and the process's
// CPU time is split between the two sides.
//
//   [SPLIT=1] [CRYPTO_WORKERS=1] node bench/ike/engine-profile.mjs [N=5000] [C=32]
//   node --cpu-prof --cpu-prof-dir=/tmp/prof bench/ike/engine-profile.mjs 5000 32
//   node bench/ike/cpuprofile-top.mjs /tmp/prof/*.cpuprofile
// Build first: npx tsc -b services/ikeagent
import { Writable } from "node:stream";
import { Secret, createLogger } from "@fleetswan/common";
import { fleet } from "@fleetswan/proto";
import { IkeEngine, FakeDataplane } from "@fleetswan/ikeagent";
import { createInitiator } from "@fleetswan/ikeagent/bench/ike-load-worker";

const N = Number(process.argv[2] ?? 5000);
const C = Number(process.argv[3] ?? 32);
const SPLIT = process.env.SPLIT === "1"; // also time the synchronous part of the responder's receive() (getrusage per packet)
const PSK = "bench pre-shared key, 32+ bytes long";
const R = { address: "192.0.2.2", port: 500 };
const I = { address: "192.0.2.1", port: 40000 };

// info level, like the daemon; lines go nowhere (the cost of formatting them is kept)
const log = createLogger("ikeagent", { level: process.env.LOG_LEVEL ?? "info", destination: new Writable({ write: (_c, _e, cb) => cb() }) });
let toInitiator;
let responderCpu = 0;
const engine = new IkeEngine({
  dataplane: new FakeDataplane(),
  log,
  transport: { send: (_l, _r, data) => setImmediate(() => toInitiator(data)), keepalive: () => {} },
  localAddresses: () => [R.address],
  cryptoWorkers: Number(process.env.CRYPTO_WORKERS ?? 0), // the responder's IKE_SA_INIT key work in worker threads (the daemon's default)
});
const def = fleet.ConnectionDef.fromPartial({
  name: "bench",
  local: { addresses: [R.address], id: "bench-r.example.test", subnets: ["10.2.0.0/16"], auth: fleet.AuthMethod.AUTH_METHOD_PSK },
  remote: { addresses: ["%any"], id: "%any", subnets: ["10.1.0.0/16"], auth: fleet.AuthMethod.AUTH_METHOD_PSK },
  ikeProposals: ["aes256gcm16-prfsha256-curve25519"],
  espProposals: ["aes256gcm16"],
  uniqueIds: false,
  dpdDelaySeconds: 0,
  ikeLifetimeSeconds: 10800,
  childLifetimeSeconds: 3600,
  rekeyMarginSeconds: 540,
  rekeyFuzzPercent: 100,
  secretRef: "psk",
});
await engine.apply({ revision: 1n, connections: [def], policyGroups: [], caCertificates: [] }, (ref) => (ref === "psk" ? { kind: "psk", current: new Secret(Buffer.from(PSK)) } : undefined));

const result = await new Promise((resolve) => {
  const ini = createInitiator(
    { index: 0, host: R.address, port: R.port, local: I.address, count: N, concurrency: C, psk: PSK, id: "bench-i.example.test", ike: "aes256gcm16-prfsha256-curve25519", esp: "aes256gcm16", tsi: "10.1.0.0/16", tsr: "10.2.0.0/16", timeoutMs: 60_000, tries: 1 },
    {
      send: (packet) =>
        setImmediate(() => {
          if (!SPLIT) return engine.receive({ ...R }, { ...I }, packet);
          const t = process.cpuUsage();
          engine.receive({ ...R }, { ...I }, packet);
          const d = process.cpuUsage(t);
          responderCpu += d.user + d.system;
        }),
      local: () => I,
      finished: resolve,
    },
  );
  toInitiator = (data) => ini.receive(data);
  ini.start();
});
const cpu = process.cpuUsage();
const s = (result.endedAt - result.startedAt) / 1000;
console.log(`${result.done}/${N} handshakes in ${s.toFixed(2)} s (${(result.done / s).toFixed(0)}/s in one process, ${result.failed} failed ${JSON.stringify(result.errors)})`);
console.log(`process CPU ${((cpu.user + cpu.system) / 1e6).toFixed(2)} s = ${((cpu.user + cpu.system) / 1000 / N).toFixed(3)} ms/handshake (both sides)${SPLIT ? `; responder's synchronous part of receive(): ${(responderCpu / 1000 / N).toFixed(3)} ms/handshake` : ""}`);
await engine.stop({ keepSas: true });
