/**
 * The NAT-T socket in kernel (xfrm) mode: UDP 4500 opened through the fsesp addon with
 * UDP_ENCAP_ESPINUDP (RFC 3948), so the kernel takes ESP-in-UDP off this socket itself
 * (xfrm4_udp_encap_rcv: a datagram whose first four octets are not zero is ESP and goes to
 * XFRM by SPI) while datagrams with the non-ESP marker (four zero octets, §2.2) are
 * delivered to the socket like any UDP datagram: those we read with a uv_poll watcher,
 * strip the marker from and hand to onIke (the RelayIke stream). The kernel eats NAT-T
 * keepalives (a single 0xFF) on an encap socket, so none arrive here.
 *
 * Outbound ESP-in-UDP is built by the kernel from the SA's encap template; only IKE leaves
 * through this socket (sendIke prepends the marker). The IKE bypass policies (UDP 500/4500)
 * keep it in clear.
 */
import { KernelError } from "@fleetswan/common";
import type { IkePacket, NattSocket, NattSocketOptions } from "../backend.js";
import { classifyNattDatagram, NON_ESP_MARKER } from "../server/relay.js";
import { addressBytes, addressText, familyOf } from "../userspace/ip.js";
import { loadAddon, type FsespAddon, type PollerInstance } from "../userspace/native.js";

export class EncapNattSocket implements NattSocket {
  private readonly listeners = new Set<(p: IkePacket) => void>();
  private readonly poller: PollerInstance;
  private closed = false;
  /** Datagrams seen by userspace: IKE (marker), keepalives, and ESP (should be none: the kernel takes ESP). */
  readonly stats = { ike: 0, keepalives: 0, espSeen: 0 };

  private constructor(
    private readonly addon: FsespAddon,
    private readonly fd: number,
    readonly port: number,
  ) {
    this.poller = new addon.Poller(fd, true, 64, (data, meta) => this.onBatch(data, meta));
    this.poller.start();
  }

  /** Open and bind the socket with UDP_ENCAP_ESPINUDP (needs the fsesp addon; AddonMissingError says how to build it). */
  static open(opts: NattSocketOptions, addon: FsespAddon = loadAddon()): EncapNattSocket {
    const address = opts.address ?? "0.0.0.0";
    const fd = addon.udpSocket(familyOf(address), addressBytes(address), opts.port, true);
    const port = opts.port !== 0 ? opts.port : (addon.localPort?.(fd) ?? 0);
    return new EncapNattSocket(addon, fd, port);
  }

  onIke(listener: (p: IkePacket) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  async sendIke(p: IkePacket): Promise<void> {
    if (this.closed) throw new KernelError("NAT-T socket closed", 9 /* EBADF */, `sending IKE to ${p.remoteAddress}:${p.remotePort}`);
    const body = p.keepalive ? Buffer.from([0xff]) : Buffer.concat([NON_ESP_MARKER, p.payload]); // RFC 3948 §2.2, §2.3
    const r = this.addon.sendTo(this.fd, body, familyOf(p.remoteAddress), addressBytes(p.remoteAddress), p.remotePort);
    if (r < 0) throw new KernelError(`sending IKE to ${p.remoteAddress}:${p.remotePort} failed`, -r, "sendto on the NAT-T socket");
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.listeners.clear();
    this.poller.close();
    this.addon.close(this.fd);
  }

  private onBatch(data: Buffer, meta: Uint32Array): void {
    const n = meta.length >>> 3;
    for (let i = 0; i < n; i++) {
      const m = i * 8;
      const d = data.subarray(meta[m]!, meta[m]! + meta[m + 1]!);
      const c = classifyNattDatagram(d);
      if (c.kind === "esp") {
        this.stats.espSeen++;
        continue;
      }
      if (c.kind === "ike") this.stats.ike++;
      else this.stats.keepalives++;
      const fam = meta[m + 2]!;
      const addr = Buffer.from(meta.buffer, meta.byteOffset + (m + 4) * 4, fam === 6 ? 16 : 4);
      const p: IkePacket = {
        remoteAddress: addressText(addr),
        remotePort: meta[m + 3]!,
        localAddress: "",
        payload: c.kind === "ike" ? Buffer.from(c.payload) : Buffer.alloc(0),
        keepalive: c.kind === "keepalive",
      };
      for (const l of this.listeners) {
        try {
          l(p);
        } catch {
          /* listeners must not throw */
        }
      }
    }
  }
}
