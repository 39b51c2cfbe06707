import { test } from "node:test";
import assert from "node:assert/strict";
import { dataplane, fleet } from "../src/index.js";

test("an SA survives protobuf encoding, keys and 32-bit SPIs intact", () => {
  const sa = dataplane.SecurityAssociation.fromPartial({
    id: { dst: "192.0.2.2", spi: 0xc0012345, protocol: 50 },
    src: "192.0.2.1",
    mode: dataplane.Mode.MODE_TUNNEL,
    encryption: dataplane.Encryption.ENCRYPTION_AES_GCM_16,
    encryptionKey: Buffer.alloc(36, 7),
    encap: { srcPort: 4500, dstPort: 4500 },
    lifetime: { softBytes: 2n ** 40n },
  });
  const back = dataplane.SecurityAssociation.decode(dataplane.SecurityAssociation.encode(sa).finish());
  assert.equal(back.id?.spi, 0xc0012345);
  assert.equal(back.encap?.dstPort, 4500);
  assert.equal(back.lifetime?.softBytes, 2n ** 40n);
  assert.deepEqual(Buffer.from(back.encryptionKey), Buffer.alloc(36, 7));
});

test("the event oneof decodes to a tagged union", () => {
  const ev = dataplane.Event.fromPartial({ time: new Date(0), kind: { $case: "expire", value: { hard: true, id: { dst: "192.0.2.1", spi: 256, protocol: 50 } } } });
  const back = dataplane.Event.decode(dataplane.Event.encode(ev).finish());
  assert.equal(back.kind?.$case, "expire");
  assert.equal(back.kind?.$case === "expire" && back.kind.value.hard, true);
});

test("a gateway view round-trips its connections", () => {
  const view = fleet.GatewayView.fromPartial({
    gateway: "gw-a",
    revision: 7n,
    connections: [{ name: "gw-a--gw-b", ikeProposals: ["aes256gcm16-prfsha384-curve25519"], startAction: fleet.StartAction.START_ACTION_ROUTE }],
  });
  const back = fleet.GatewayView.decode(fleet.GatewayView.encode(view).finish());
  assert.equal(back.revision, 7n);
  assert.equal(back.connections[0]?.startAction, fleet.StartAction.START_ACTION_ROUTE);
});
