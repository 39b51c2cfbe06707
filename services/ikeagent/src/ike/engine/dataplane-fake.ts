/**
 * An in-memory dataplane for exchange tests and `--dataplane fake`: it keeps the SAs and
 * policies the engine installs (keys included, so tests can check both ends derived the
 * same ones), hands out SPIs, lets tests raise acquire/expire events, and offers a relay
 * for UDP 4500 that tests wire to a fake network. Carries no traffic.
 */
import { dataplane } from "@fleetswan/proto";
import type { DataplaneApi, IkeRelay, RelayDatagram } from "./dataplane.js";

export class FakeDataplane implements DataplaneApi {
  readonly sas = new Map<string, dataplane.SecurityAssociation>();
  readonly policies = new Map<string, dataplane.Policy>();
  /** Every call, in order, e.g. "addSa in 0xc0000001" (for tests that check ordering); the last 10,000 at most (`--dataplane fake` runs for long). */
  readonly calls: string[] = [];
  #nextSpi = 0xc0000001;
  #listeners = new Set<(e: dataplane.Event) => void>();
  #relayReceiver: ((d: RelayDatagram) => void) | undefined;
  /** Where the relay sends (tests connect it to their fake network). */
  relayOut: ((d: RelayDatagram) => void) | undefined;

  #call(line: string): void {
    this.calls.push(line);
    if (this.calls.length > 12_000) this.calls.splice(0, this.calls.length - 10_000);
  }

  constructor(private readonly spiBase = 0xc0000001) {
    this.#nextSpi = spiBase;
  }

  static saKey(id: dataplane.SaId): string {
    return `${id.dst}/esp/0x${id.spi.toString(16).padStart(8, "0")}`;
  }
  static policyKey(s: dataplane.Selector | undefined, dir: dataplane.Direction): string {
    return `${s?.src?.address}/${s?.src?.length}>${s?.dst?.address}/${s?.dst?.length} p${s?.protocol ?? 0} ${dataplane.directionToJSON(dir)}`;
  }

  async getCapabilities(): Promise<dataplane.Capabilities> {
    return dataplane.Capabilities.fromPartial({
      backend: dataplane.Backend.BACKEND_FAKE,
      encryption: [dataplane.Encryption.ENCRYPTION_AES_GCM_16, dataplane.Encryption.ENCRYPTION_CHACHA20_POLY1305, dataplane.Encryption.ENCRYPTION_AES_CBC],
      integrity: [dataplane.Integrity.INTEGRITY_HMAC_SHA2_256_128, dataplane.Integrity.INTEGRITY_HMAC_SHA2_384_192, dataplane.Integrity.INTEGRITY_HMAC_SHA2_512_256],
      esn: true,
      udpEncap: true,
    });
  }
  async allocateSpi(): Promise<number> {
    const spi = this.#nextSpi++;
    this.#call(`allocateSpi 0x${spi.toString(16)}`);
    return spi;
  }
  async addSa(sa: dataplane.SecurityAssociation): Promise<void> {
    const key = FakeDataplane.saKey(sa.id!);
    this.#call(`addSa ${sa.direction === dataplane.Direction.DIRECTION_IN ? "in" : "out"} 0x${sa.id!.spi.toString(16)}`);
    this.sas.set(key, sa);
  }
  async deleteSa(id: dataplane.SaId): Promise<void> {
    this.#call(`deleteSa 0x${id.spi.toString(16)}`);
    this.sas.delete(FakeDataplane.saKey(id));
  }
  async addPolicy(p: dataplane.Policy): Promise<void> {
    const key = FakeDataplane.policyKey(p.selector, p.direction);
    this.#call(`addPolicy ${dataplane.policyActionToJSON(p.action)} ${key}`);
    this.policies.set(key, p);
  }
  async deletePolicy(selector: dataplane.Selector, direction: dataplane.Direction): Promise<void> {
    const key = FakeDataplane.policyKey(selector, direction);
    this.#call(`deletePolicy ${key}`);
    this.policies.delete(key);
  }
  async listSas(connection?: string): Promise<dataplane.SaState[]> {
    return [...this.sas.values()]
      .filter((s) => !connection || s.connection === connection)
      .map((sa) => ({ sa: { ...sa, encryptionKey: Buffer.alloc(0), integrityKey: Buffer.alloc(0) }, counters: undefined }));
  }
  async listPolicies(connection?: string): Promise<dataplane.PolicyState[]> {
    return [...this.policies.values()].filter((p) => !connection || p.connection === connection).map((policy) => ({ policy, counters: undefined, effectivePriority: policy.priority }));
  }
  watchEvents(fn: (e: dataplane.Event) => void): () => void {
    this.#listeners.add(fn);
    return () => this.#listeners.delete(fn);
  }
  /** Test hook: raise an event as the backend would. */
  emit(kind: dataplane.Event["kind"]): void {
    const e: dataplane.Event = { time: new Date(), kind };
    for (const l of this.#listeners) l(e);
  }
  openRelay(): IkeRelay {
    return {
      send: (d) => this.relayOut?.(d),
      onReceive: (fn) => {
        this.#relayReceiver = fn;
      },
      close: () => {
        this.#relayReceiver = undefined;
      },
    };
  }
  /** Test hook: a datagram arrived on UDP 4500. */
  relayIn(d: RelayDatagram): void {
    this.#relayReceiver?.(d);
  }
  #reconnect = new Set<() => void>();
  onReconnect(fn: () => void): () => void {
    this.#reconnect.add(fn);
    return () => this.#reconnect.delete(fn);
  }
  /** Test hook: the dataplane restarted (losing its SAs and policies unless `keepState`) and the agent reconnected. */
  restart(keepState = false): void {
    if (!keepState) {
      this.sas.clear();
      this.policies.clear();
    }
    this.#call("restart");
    for (const fn of this.#reconnect) fn();
  }
  /** SAs of one direction. */
  saList(direction: "in" | "out"): dataplane.SecurityAssociation[] {
    const want = direction === "in" ? dataplane.Direction.DIRECTION_IN : dataplane.Direction.DIRECTION_OUT;
    return [...this.sas.values()].filter((s) => s.direction === want);
  }
  close(): void {
    this.#listeners.clear();
  }
}
