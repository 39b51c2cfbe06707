/**
 * The xfrm backend's NAT-T socket on the host kernel: UDP_ENCAP_ESPINUDP is set, IKE with the
 * non-ESP marker reaches onIke without the marker, ESP-looking datagrams are taken by the
 * kernel (never reach userspace), sendIke prepends the marker. (ESP-in-UDP decapsulated into
 * a real SA is proven in the UML kernel lab: test/kernel/dataplane.itest.ts.)
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { createSocket } from "node:dgram";
import { XfrmBackend } from "../../src/xfrm/xfrm-backend.js";
import type { IkePacket } from "../../src/backend.js";
import { loadAddon } from "../../src/userspace/native.js";

let why: string | false = false;
try {
  loadAddon();
} catch (e) {
  why = (e as Error).message;
}

test("xfrm NAT-T socket: UDP_ENCAP_ESPINUDP; IKE relayed without the marker; ESP kept from userspace", { skip: why }, async () => {
  const be = new XfrmBackend({ routes: false });
  const natt = await be.nattSocket({ port: 0, address: "127.0.0.1" });
  assert.ok(natt.port > 0, "bound port reported");
  const got: IkePacket[] = [];
  natt.onIke((p) => got.push(p));
  const peer = createSocket("udp4");
  await new Promise<void>((r) => peer.bind(0, "127.0.0.1", () => r()));
  const replies: Buffer[] = [];
  peer.on("message", (m) => replies.push(m));
  const send = (b: Buffer) => new Promise<void>((r, j) => peer.send(b, natt.port, "127.0.0.1", (e) => (e ? j(e) : r())));
  await send(Buffer.from("0000000011223344", "hex")); // IKE behind the non-ESP marker
  await send(Buffer.from("c0000001000000010102030405060708090a0b0c0d0e0f10", "hex")); // ESP: SPI != 0
  await send(Buffer.from("00000000aabb", "hex"));
  const end = Date.now() + 3000;
  while (got.length < 2 && Date.now() < end) await new Promise((r) => setTimeout(r, 20));
  await new Promise((r) => setTimeout(r, 200));
  assert.deepEqual(got.map((p) => p.payload.toString("hex")), ["11223344", "aabb"]);
  assert.equal(got[0]!.remoteAddress, "127.0.0.1");
  assert.equal(got[0]!.remotePort, (peer.address()).port);
  assert.equal((natt as unknown as { stats: { espSeen: number } }).stats.espSeen, 0, "the kernel took the ESP datagram (encap socket)");
  await natt.sendIke({ remoteAddress: "127.0.0.1", remotePort: peer.address().port, localAddress: "", payload: Buffer.from("99", "hex"), keepalive: false });
  const end2 = Date.now() + 3000;
  while (replies.length < 1 && Date.now() < end2) await new Promise((r) => setTimeout(r, 20));
  assert.equal(replies[0]?.toString("hex"), "0000000099", "marker prepended (RFC 3948 §2.2)");
  peer.close();
  await be.close();
});
