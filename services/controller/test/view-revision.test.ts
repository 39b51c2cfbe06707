import { test } from "node:test";
import assert from "node:assert/strict";
import { fleet } from "@fleetswan/proto";
import { peekViewRevision } from "../src/controller.js";

test("peekViewRevision reads GatewayView.revision as decode does", () => {
  const conn = fleet.ConnectionDef.fromPartial({
    name: "a-b",
    local: { addresses: ["192.0.2.1"], id: "gw-a", subnets: ["10.1.0.0/24"], port: 500 },
    remote: { addresses: ["192.0.2.2"], id: "gw-b", subnets: ["10.2.0.0/24"], port: 500 },
    ikeProposals: ["aes256gcm16-prfsha384-ecp384"],
    childLifetimeBytes: 1n << 40n,
    revision: 7n,
    secretRef: "psk.a-b",
  });
  const views = [
    fleet.GatewayView.fromPartial({ gateway: "gw-a", revision: 42n, renderedAt: new Date(), connections: [conn, conn], caCertificates: ["x".repeat(300)] }),
    fleet.GatewayView.fromPartial({ gateway: "gw-b", revision: 0n }),
    fleet.GatewayView.fromPartial({ gateway: "", revision: 2n ** 63n + 5n, self: { addresses: ["192.0.2.9"], id: "gw-b" } }),
    fleet.GatewayView.fromPartial({ gateway: "g".repeat(200), revision: 300n, policyGroups: [{ name: "p", destinations: ["10.0.0.0/8"] }] }),
  ];
  for (const v of views) {
    const b = fleet.GatewayView.encode(v).finish();
    assert.equal(peekViewRevision(b), fleet.GatewayView.decode(b).revision);
  }
  // Field order does not matter: revision after the connections.
  const w = new Uint8Array([...fleet.GatewayView.encode(fleet.GatewayView.fromPartial({ gateway: "gw-c", connections: [conn] })).finish(), 0x10, 0x96, 0x01]);
  assert.equal(peekViewRevision(w), 150n);
  assert.equal(peekViewRevision(w), fleet.GatewayView.decode(w).revision);
  // Truncated encodings are errors, as for decode.
  const full = fleet.GatewayView.encode(views[0]!).finish();
  assert.throws(() => peekViewRevision(full.subarray(0, full.length - 3)));
  assert.throws(() => peekViewRevision(new Uint8Array([0x10, 0x96])));
});
