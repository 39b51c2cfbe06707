import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Server, ServerCredentials, status, type ServerDuplexStream, type ServerWritableStream } from "@grpc/grpc-js";
import { dataplane } from "@fleetswan/proto";
import { GrpcDataplane } from "../../src/daemon/dataplane-grpc.js";

test("GrpcDataplane talks to a Dataplane server over a Unix socket: unary, events, relay", async () => {
  const dir = mkdtempSync(join(tmpdir(), "fs-dp-"));
  const sock = join(dir, "dp.sock");
  const added: dataplane.SecurityAssociation[] = [];
  let relayHello = false;
  let eventStream: ServerWritableStream<dataplane.WatchEventsRequest, dataplane.Event> | undefined;
  const server = new Server();
  server.addService(dataplane.DataplaneService, {
    getCapabilities: (_c: unknown, cb: (e: null, r: dataplane.Capabilities) => void) => cb(null, dataplane.Capabilities.fromPartial({ backend: dataplane.Backend.BACKEND_FAKE, udpEncap: true })),
    allocateSpi: (_c: unknown, cb: (e: null, r: dataplane.AllocateSpiResponse) => void) => cb(null, { spi: 0xc0000042 }),
    addSa: (c: { request: dataplane.AddSaRequest }, cb: (e: null, r: dataplane.AddSaResponse) => void) => {
      added.push(c.request.sa!);
      cb(null, {});
    },
    deleteSa: (_c: unknown, cb: (e: { code: number; details: string }) => void) => cb({ code: status.INTERNAL, details: "kernel said no" }),
    addPolicy: (_c: unknown, cb: (e: null, r: dataplane.AddPolicyResponse) => void) => cb(null, { effectivePriority: 1 }),
    deletePolicy: (_c: unknown, cb: (e: null, r: dataplane.DeletePolicyResponse) => void) => cb(null, { existed: false }),
    listSas: (_c: unknown, cb: (e: null, r: dataplane.ListSasResponse) => void) => cb(null, { sas: [] }),
    listPolicies: (_c: unknown, cb: (e: null, r: dataplane.ListPoliciesResponse) => void) => cb(null, { policies: [] }),
    watchEvents: (call: ServerWritableStream<dataplane.WatchEventsRequest, dataplane.Event>) => {
      eventStream = call;
    },
    relayIke: (call: ServerDuplexStream<dataplane.IkeDatagram, dataplane.IkeDatagram>) => {
      call.on("data", (d: dataplane.IkeDatagram) => {
        if (d.hello) relayHello = true;
        // Echo the message back as if the peer answered.
        else call.write({ ...d, payload: Buffer.concat([d.payload, Buffer.from("!")]) });
      });
    },
  });
  await new Promise<void>((res, rej) => server.bindAsync(`unix://${sock}`, ServerCredentials.createInsecure(), (e) => (e ? rej(e) : res())));
  const dp = new GrpcDataplane(sock);
  try {
    assert.equal((await dp.getCapabilities()).backend, dataplane.Backend.BACKEND_FAKE);
    assert.equal(await dp.allocateSpi({ src: "192.0.2.2", dst: "192.0.2.1" }), 0xc0000042);
    await dp.addSa(dataplane.SecurityAssociation.fromPartial({ id: { dst: "192.0.2.1", spi: 0xc0000042, protocol: 50 }, connection: "c" }));
    assert.equal(added[0]?.connection, "c");
    await assert.rejects(dp.deleteSa({ dst: "192.0.2.1", spi: 1, protocol: 50 }), (e: Error & { code?: string }) => e.code === "UNAVAILABLE" && /DeleteSa failed: kernel said no/.test(e.message));

    const events: dataplane.Event[] = [];
    const stop = dp.watchEvents((e) => events.push(e));
    await waitUntil(() => eventStream !== undefined);
    eventStream!.write(dataplane.Event.fromPartial({ time: new Date(), kind: { $case: "expire", value: { id: { dst: "x", spi: 7, protocol: 50 }, hard: false, childId: 3n, connection: "c" } } }));
    await waitUntil(() => events.length === 1);
    assert.equal(events[0]!.kind?.$case, "expire");
    stop();

    const relay = dp.openRelay();
    const got: Buffer[] = [];
    relay.onReceive((d) => got.push(d.payload));
    relay.send({ remoteAddress: "192.0.2.2", remotePort: 4500, localAddress: "", payload: Buffer.from("ike") });
    await waitUntil(() => got.length === 1);
    assert.equal(relayHello, true);
    assert.equal(got[0]!.toString(), "ike!");
    relay.close();
  } finally {
    dp.close();
    server.forceShutdown();
    rmSync(dir, { recursive: true, force: true });
  }
});

async function waitUntil(cond: () => boolean, ms = 3000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error("timeout");
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** A minimal Dataplane server on `sock`: counts relay hellos, echoes relay data, lets the test push events. */
async function miniServer(sock: string) {
  const st = { hellos: 0, eventStreams: [] as ServerWritableStream<dataplane.WatchEventsRequest, dataplane.Event>[], added: 0 };
  const server = new Server();
  server.addService(dataplane.DataplaneService, {
    getCapabilities: (_c: unknown, cb: (e: null, r: dataplane.Capabilities) => void) => cb(null, dataplane.Capabilities.fromPartial({ backend: dataplane.Backend.BACKEND_FAKE })),
    addSa: (_c: unknown, cb: (e: null, r: dataplane.AddSaResponse) => void) => {
      st.added++;
      cb(null, {});
    },
    watchEvents: (call: ServerWritableStream<dataplane.WatchEventsRequest, dataplane.Event>) => {
      st.eventStreams.push(call);
    },
    relayIke: (call: ServerDuplexStream<dataplane.IkeDatagram, dataplane.IkeDatagram>) => {
      call.on("data", (d: dataplane.IkeDatagram) => {
        if (d.hello) st.hellos++;
        else call.write({ ...d, payload: Buffer.concat([d.payload, Buffer.from("!")]) });
      });
    },
  } as never);
  await new Promise<void>((res, rej) => server.bindAsync(`unix://${sock}`, ServerCredentials.createInsecure(), (e) => (e ? rej(e) : res())));
  return { server, st };
}

test("GrpcDataplane survives a dataplane restart: relay (hello again), event stream and unary calls come back; onReconnect fires", async () => {
  const dir = mkdtempSync(join(tmpdir(), "fs-dp-"));
  const sock = join(dir, "dp.sock");
  let s1 = await miniServer(sock);
  const dp = new GrpcDataplane(sock);
  let reconnects = 0;
  dp.onReconnect(() => reconnects++);
  try {
    const events: dataplane.Event[] = [];
    dp.watchEvents((e) => events.push(e));
    const relay = dp.openRelay();
    const got: string[] = [];
    relay.onReceive((d) => got.push(d.payload.toString()));
    await waitUntil(() => s1.st.hellos === 1 && s1.st.eventStreams.length === 1);
    relay.send({ remoteAddress: "192.0.2.2", remotePort: 4500, localAddress: "", payload: Buffer.from("one") });
    await waitUntil(() => got.includes("one!"));

    // kill -9 of the dataplane: every call and stream breaks at once; a new process binds the socket again.
    s1.server.forceShutdown();
    await new Promise((r) => setTimeout(r, 300));
    rmSync(sock, { force: true });
    const s2 = await miniServer(sock);
    await waitUntil(() => s2.st.hellos === 1 && s2.st.eventStreams.length === 1, 8000);
    await waitUntil(() => reconnects === 1);
    relay.send({ remoteAddress: "192.0.2.2", remotePort: 4500, localAddress: "", payload: Buffer.from("two") });
    await waitUntil(() => got.includes("two!"));
    s2.st.eventStreams[0]!.write(dataplane.Event.fromPartial({ time: new Date(), kind: { $case: "error", value: { code: "X", message: "after restart" } } }));
    await waitUntil(() => events.length === 1);
    await dp.addSa(dataplane.SecurityAssociation.fromPartial({ id: { dst: "192.0.2.1", spi: 1, protocol: 50 } }));
    assert.equal(s2.st.added, 1);
    // A second restart works the same way.
    s2.server.forceShutdown();
    rmSync(sock, { force: true });
    s1 = await miniServer(sock);
    await waitUntil(() => s1.st.hellos === 1 && s1.st.eventStreams.length === 1 && reconnects === 2, 8000);
    relay.close();
  } finally {
    dp.close();
    s1.server.forceShutdown();
    rmSync(dir, { recursive: true, force: true });
  }
});
