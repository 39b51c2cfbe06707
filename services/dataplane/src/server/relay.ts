/**
 * NAT-T relay (RFC 3948): the dataplane owns UDP 4500; IKE datagrams (non-ESP marker,
 * stripped by the NattSocket) go up the RelayIke stream to the ikeagent, and IKE packets
 * the agent writes go out from 4500. One stream at a time: a new hello replaces the old
 * stream. Packets arriving while no agent is attached are dropped (counted): IKE
 * retransmits.
 */
import { createSocket, type Socket } from "node:dgram";
import { isIPv6 } from "node:net";
import type * as grpc from "@grpc/grpc-js";
import type { dataplane } from "@fleetswan/proto";
import type { Logger } from "@fleetswan/common";
import type { IkePacket, NattSocket, NattSocketOptions } from "../backend.js";

type RelayCall = grpc.ServerDuplexStream<dataplane.IkeDatagram, dataplane.IkeDatagram>;

export class IkeRelay {
  private current: RelayCall | undefined;
  private readonly off: () => void;
  readonly stats = { up: 0, down: 0, droppedNoAgent: 0 };

  constructor(
    private readonly natt: NattSocket,
    private readonly log?: Logger,
  ) {
    this.off = natt.onIke((p) => this.up(p));
  }

  attach(call: RelayCall): void {
    let hello = false;
    call.on("data", (d: dataplane.IkeDatagram) => {
      if (!hello) {
        if (!d.hello) {
          call.emit("error", { code: 9 /* FAILED_PRECONDITION */, details: "the first RelayIke message must be a hello" });
          return;
        }
        hello = true;
        if (this.current && this.current !== call) this.current.end();
        this.current = call;
        this.log?.info("ikeagent attached to the NAT-T relay");
        return;
      }
      this.stats.down++;
      this.natt
        .sendIke({ remoteAddress: d.remoteAddress, remotePort: d.remotePort, localAddress: d.localAddress, payload: d.payload, keepalive: d.keepalive })
        .catch((e: Error) => this.log?.warn({ err: e.message, remote: d.remoteAddress }, "NAT-T send failed"));
    });
    const detach = () => {
      if (this.current === call) this.current = undefined;
    };
    call.on("end", () => {
      detach();
      call.end();
    });
    call.on("cancelled", detach);
    call.on("error", detach);
  }

  close(): void {
    this.off();
    this.current?.end();
    this.current = undefined;
  }

  private up(p: IkePacket): void {
    if (!this.current) {
      this.stats.droppedNoAgent++;
      return;
    }
    this.stats.up++;
    this.current.write({ remoteAddress: p.remoteAddress, remotePort: p.remotePort, localAddress: p.localAddress, payload: p.payload, hello: false, keepalive: p.keepalive });
  }
}

/** The 4-octet non-ESP marker that prefixes IKE on port 4500 (RFC 3948 §2.2). */
export const NON_ESP_MARKER = Buffer.alloc(4);

/**
 * Classify a datagram received on 4500: "ike" (marker stripped), "keepalive" (0xFF) or
 * "esp" (anything else: an SPI is never 0).
 */
export function classifyNattDatagram(d: Buffer): { kind: "ike"; payload: Buffer } | { kind: "keepalive" } | { kind: "esp" } {
  if (d.length === 1 && d[0] === 0xff) return { kind: "keepalive" };
  if (d.length >= 4 && d.readUInt32BE(0) === 0) return { kind: "ike", payload: d.subarray(4) };
  return { kind: "esp" };
}

/**
 * A NattSocket on a plain Node dgram socket: no UDP_ENCAP, so ESP-in-UDP that reaches it
 * is dropped (counted). Used by the fake backend and by tests of the relay; the kernel and
 * userspace backends provide their own (UDP_ENCAP through the native addon).
 */
export class DgramNattSocket implements NattSocket {
  private readonly listeners = new Set<(p: IkePacket) => void>();
  readonly stats = { espDropped: 0 };
  private constructor(
    private readonly v4: Socket,
    readonly port: number,
  ) {
    v4.on("message", (msg, rinfo) => {
      const c = classifyNattDatagram(msg);
      if (c.kind === "esp") {
        this.stats.espDropped++;
        return;
      }
      const p: IkePacket = { remoteAddress: rinfo.address, remotePort: rinfo.port, localAddress: "", payload: c.kind === "ike" ? Buffer.from(c.payload) : Buffer.alloc(0), keepalive: c.kind === "keepalive" };
      for (const l of this.listeners) l(p);
    });
  }

  static async open(opts: NattSocketOptions): Promise<DgramNattSocket> {
    const address = opts.address ?? "0.0.0.0";
    const s = createSocket({ type: isIPv6(address) ? "udp6" : "udp4", reuseAddr: false });
    await new Promise<void>((resolve, reject) => {
      s.once("error", reject);
      s.bind(opts.port, address, () => resolve());
    });
    return new DgramNattSocket(s, s.address().port);
  }

  onIke(listener: (p: IkePacket) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  sendIke(p: IkePacket): Promise<void> {
    const data = p.keepalive ? Buffer.from([0xff]) : Buffer.concat([NON_ESP_MARKER, p.payload]);
    return new Promise((resolve, reject) => this.v4.send(data, p.remotePort, p.remoteAddress, (err) => (err ? reject(err) : resolve())));
  }

  async close(): Promise<void> {
    await new Promise<void>((resolve) => this.v4.close(() => resolve()));
  }
}
