/**
 * The daemon's Transport: one UDP socket on port 500 per local address (so a received
 * datagram's local address is known, as NAT-D and connection selection need), and UDP 4500
 * either through the dataplane's relay stream (the dataplane owns 4500, RFC 3948 non-ESP
 * marker handled there) or, with a fake dataplane, an own 4500 socket per address that
 * strips and adds the 4-octet non-ESP marker itself and drops ESP.
 */
import { createSocket, type Socket } from "node:dgram";
import { isIP } from "node:net";
import type { Logger } from "@fleetswan/common";
import type { IkeRelay } from "../ike/engine/dataplane.js";
import type { Transport } from "../ike/engine/engine.js";
import type { Endpoint } from "../ike/engine/sa.js";

export type Receiver = (local: Endpoint, remote: Endpoint, data: Buffer) => void;

const NON_ESP_MARKER = Buffer.alloc(4);

export class UdpTransport implements Transport {
  #ike = new Map<string, Socket>();
  #natt = new Map<string, Socket>();
  #relay: IkeRelay | undefined;
  #receiver: Receiver = () => {};

  constructor(
    private readonly log: Logger,
    private readonly opts: { ikePort: number; nattPort: number; relay?: IkeRelay },
  ) {
    this.#relay = opts.relay;
    this.#relay?.onReceive((d) => {
      if (d.keepalive) return;
      const local = d.localAddress || this.#fallbackLocal(d.remoteAddress);
      this.#receiver({ address: local, port: opts.nattPort }, { address: d.remoteAddress, port: d.remotePort }, d.payload);
    });
  }

  onReceive(fn: Receiver): void {
    this.#receiver = fn;
  }

  /** Binds sockets for these addresses (idempotent; new addresses are added). */
  async bind(addresses: string[]): Promise<void> {
    for (const address of addresses) {
      if (!isIP(address) || this.#ike.has(address)) continue;
      this.#ike.set(address, await this.#open(address, this.opts.ikePort, false));
      if (!this.#relay) this.#natt.set(address, await this.#open(address, this.opts.nattPort, true));
    }
  }

  get addresses(): string[] {
    return [...this.#ike.keys()];
  }

  #open(address: string, port: number, natt: boolean): Promise<Socket> {
    return new Promise((resolve, reject) => {
      const s = createSocket({ type: isIP(address) === 6 ? "udp6" : "udp4", reuseAddr: true });
      s.once("error", reject);
      s.on("message", (msg, rinfo) => {
        let data = msg;
        if (natt) {
          if (msg.length === 1 && msg[0] === 0xff) return; // NAT-T keepalive (RFC 3948 §2.3)
          if (msg.length < 4 || !msg.subarray(0, 4).equals(NON_ESP_MARKER)) return; // ESP: not ours without a dataplane
          data = msg.subarray(4);
        }
        this.#receiver({ address, port }, { address: rinfo.address, port: rinfo.port }, Buffer.from(data));
      });
      s.bind({ address, port, exclusive: false }, () => {
        s.off("error", reject);
        s.on("error", (err) => this.log.error({ err: err.message, address, port }, "UDP socket error"));
        this.log.info({ address, port }, `listening on UDP ${address}:${port}${natt ? " (NAT-T, own socket)" : ""}`);
        resolve(s);
      });
    });
  }

  #fallbackLocal(remote: string): string {
    const fam = isIP(remote);
    return this.addresses.find((a) => isIP(a) === fam) ?? "";
  }

  send(local: Endpoint, remote: Endpoint, data: Buffer): void {
    if (local.port === this.opts.ikePort) {
      const s = this.#ike.get(local.address) ?? [...this.#ike.values()][0];
      if (!s) return this.log.warn({ local: local.address }, "no IKE socket to send from");
      s.send(data, remote.port, remote.address);
      return;
    }
    if (this.#relay) {
      this.#relay.send({ remoteAddress: remote.address, remotePort: remote.port, localAddress: local.address, payload: data });
      return;
    }
    const s = this.#natt.get(local.address) ?? [...this.#natt.values()][0];
    if (!s) return this.log.warn({ local: local.address }, "no NAT-T socket to send from");
    s.send(Buffer.concat([NON_ESP_MARKER, data]), remote.port, remote.address);
  }

  keepalive(local: Endpoint, remote: Endpoint): void {
    if (this.#relay) {
      this.#relay.send({ remoteAddress: remote.address, remotePort: remote.port, localAddress: local.address, payload: Buffer.alloc(0), keepalive: true });
      return;
    }
    const s = this.#natt.get(local.address);
    s?.send(Buffer.from([0xff]), remote.port, remote.address);
  }

  close(): void {
    for (const s of [...this.#ike.values(), ...this.#natt.values()]) s.close();
    this.#ike.clear();
    this.#natt.clear();
    this.#relay?.close();
  }
}
