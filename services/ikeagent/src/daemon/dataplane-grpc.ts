/**
 * DataplaneApi over gRPC on the dataplane's Unix socket (services/dataplane), with the
 * generated client from @fleetswan/proto. Calls have a deadline; failures become
 * UnavailableError with the RPC name, so the engine's logs say which call failed.
 *
 * Dataplane restarts: the two long-lived streams (WatchEvents, RelayIke) end their call on
 * the first error, end or close (grpc-js does not emit `close` after an error while a
 * duplex stream's write side is open, so waiting for `close` alone never reconnects), then
 * reconnect with backoff (250 ms doubling to 5 s, with jitter): each attempt first checks
 * the dataplane answers (GetCapabilities, waiting for the channel), then opens the stream
 * again and re-sends the relay's hello. Once the dataplane is back after an outage the
 * `onReconnect` listeners run (the engine re-asserts its SAs and policies). Unary calls
 * wait for the channel to become ready within their deadline, and the channel itself
 * retries the socket every 100 ms..2 s instead of grpc-js's default 1..120 s.
 */
import { credentials, type ClientDuplexStream, type ClientReadableStream, type ServiceError, Metadata } from "@grpc/grpc-js";
import { UnavailableError, type Logger } from "@fleetswan/common";
import { dataplane } from "@fleetswan/proto";
import type { DataplaneApi, IkeRelay, RelayDatagram } from "../ike/engine/dataplane.js";

const CALL_TIMEOUT_MS = 5000;
/** Stream reconnect backoff: MIN doubling to MAX (±25 % jitter); reset once a stream lived HEALTHY ms. */
export const RECONNECT = { minMs: 250, maxMs: 5000, healthyMs: 10_000 };

type Call = ClientReadableStream<unknown> | ClientDuplexStream<unknown, unknown>;

export class GrpcDataplane implements DataplaneApi {
  readonly #client: dataplane.DataplaneClient;
  readonly #log: Logger | undefined;
  #streams = new Set<{ stop(): void }>();
  #reconnectListeners = new Set<() => void>();
  /** A stream broke and the dataplane has not been seen again since. */
  #outage = false;
  #closed = false;

  /** `socket` is a path ("/run/fleetswan/dataplane.sock") or a gRPC target ("unix:...", "host:port"). */
  constructor(socket: string, log?: Logger) {
    const target = socket.startsWith("/") ? `unix://${socket}` : socket;
    this.#client = new dataplane.DataplaneClient(target, credentials.createInsecure(), {
      "grpc.initial_reconnect_backoff_ms": 100,
      "grpc.max_reconnect_backoff_ms": 2000,
    });
    this.#log = log;
  }

  #unary<Req, Res>(name: string, fn: (req: Req, md: Metadata, opts: { deadline: Date }, cb: (err: ServiceError | null, res: Res) => void) => unknown, req: Req): Promise<Res> {
    return new Promise((resolve, reject) => {
      // waitForReady: a call made while the dataplane restarts waits for it (within the deadline) instead of failing at once.
      fn.call(this.#client, req, new Metadata({ waitForReady: true }), { deadline: new Date(Date.now() + CALL_TIMEOUT_MS) }, (err, res) => {
        if (err) reject(new UnavailableError(`dataplane ${name} failed: ${err.details || err.message}`, { rpc: name, grpcCode: err.code }, { cause: err }));
        else resolve(res);
      });
    });
  }

  getCapabilities(): Promise<dataplane.Capabilities> {
    return this.#unary("GetCapabilities", this.#client.getCapabilities as never, dataplane.GetCapabilitiesRequest.fromPartial({}));
  }
  async allocateSpi(req: Partial<dataplane.AllocateSpiRequest>): Promise<number> {
    const res = await this.#unary<dataplane.AllocateSpiRequest, dataplane.AllocateSpiResponse>("AllocateSpi", this.#client.allocateSpi as never, dataplane.AllocateSpiRequest.fromPartial(req));
    return res.spi;
  }
  async addSa(sa: dataplane.SecurityAssociation): Promise<void> {
    await this.#unary("AddSa", this.#client.addSa as never, { sa });
  }
  async deleteSa(id: dataplane.SaId, src = ""): Promise<void> {
    await this.#unary("DeleteSa", this.#client.deleteSa as never, { id, src });
  }
  async addPolicy(policy: dataplane.Policy): Promise<void> {
    await this.#unary("AddPolicy", this.#client.addPolicy as never, { policy });
  }
  async deletePolicy(selector: dataplane.Selector, direction: dataplane.Direction, mark = 0): Promise<void> {
    await this.#unary("DeletePolicy", this.#client.deletePolicy as never, { selector, direction, mark });
  }
  async listSas(connection = ""): Promise<dataplane.SaState[]> {
    const res = await this.#unary<dataplane.ListSasRequest, dataplane.ListSasResponse>("ListSas", this.#client.listSas as never, { connection });
    return res.sas;
  }
  async listPolicies(connection = ""): Promise<dataplane.PolicyState[]> {
    const res = await this.#unary<dataplane.ListPoliciesRequest, dataplane.ListPoliciesResponse>("ListPolicies", this.#client.listPolicies as never, { connection });
    return res.policies;
  }

  /** Runs `fn` whenever the dataplane answers again after a stream broke (it may have restarted). */
  onReconnect(fn: () => void): () => void {
    this.#reconnectListeners.add(fn);
    return () => this.#reconnectListeners.delete(fn);
  }

  /**
   * A long-lived call that is reopened whenever it breaks: `start` makes the call and wires
   * its data handler. Returns the stream's controls; `current()` is the open call, if any.
   */
  #resilient<C extends Call>(what: string, start: () => C): { stop(): void; current(): C | undefined } {
    let stopped = false;
    let current: C | undefined;
    let failures = 0;
    let timer: NodeJS.Timeout | undefined;
    const open = (): void => {
      timer = undefined;
      if (stopped) return;
      const call = start();
      current = call;
      const openedAt = Date.now();
      let done = false;
      const broke = (why: string, err?: ServiceError): void => {
        if (done) return;
        done = true;
        if (current === call) current = undefined;
        // End our side too: a duplex call whose write side stays open never closes.
        call.removeAllListeners("data");
        call.on("error", () => undefined);
        call.cancel();
        if (stopped) return;
        this.#outage = true;
        if (Date.now() - openedAt >= RECONNECT.healthyMs) failures = 0;
        schedule(`${what} ${why}${err ? `: ${err.details || err.message}` : ""}`);
      };
      call.on("error", (err: ServiceError) => broke("failed", err));
      call.on("end", () => broke("ended"));
      call.on("close", () => broke("closed"));
    };
    const schedule = (why: string): void => {
      const base = Math.min(RECONNECT.maxMs, RECONNECT.minMs * 2 ** Math.min(failures, 16));
      failures++;
      const delay = Math.round(base * (0.75 + Math.random() * 0.5));
      this.#log?.warn({ delayMs: delay, attempt: failures }, `${why}; reconnecting in ${delay} ms`);
      timer = setTimeout(() => void reconnect(), delay);
      timer.unref?.();
    };
    const reconnect = async (): Promise<void> => {
      timer = undefined;
      if (stopped) return;
      try {
        await this.getCapabilities();
      } catch (err) {
        if (!stopped) schedule(`${what}: dataplane not reachable (${(err as Error).message})`);
        return;
      }
      if (stopped) return;
      open();
      this.#log?.info(`${what} reopened`);
      this.#dataplaneBack();
    };
    open();
    const s = {
      stop: () => {
        stopped = true;
        if (timer) clearTimeout(timer);
        this.#streams.delete(s);
        const c = current;
        current = undefined;
        if (c) {
          c.on("error", () => undefined);
          c.cancel();
        }
      },
      current: () => current,
    };
    this.#streams.add(s);
    return s;
  }

  #dataplaneBack(): void {
    if (!this.#outage || this.#closed) return;
    this.#outage = false;
    this.#log?.info("dataplane reachable again after an outage: re-asserting SAs and policies");
    for (const fn of this.#reconnectListeners) {
      try {
        fn();
      } catch (err) {
        this.#log?.error({ err }, "dataplane reconnect listener failed");
      }
    }
  }

  /** Event stream; reopened with backoff whenever it breaks (a dataplane restart). */
  watchEvents(fn: (e: dataplane.Event) => void): () => void {
    const s = this.#resilient("dataplane event stream", () => {
      const call = this.#client.watchEvents({});
      call.on("data", (e: dataplane.Event) => fn(e));
      return call;
    });
    return () => s.stop();
  }

  /** The UDP 4500 relay; reopened (hello first) with backoff whenever it breaks. */
  openRelay(): IkeRelay {
    let receiver: (d: RelayDatagram) => void = () => {};
    const s = this.#resilient("dataplane NAT-T relay", () => {
      const call = this.#client.relayIke();
      call.write(dataplane.IkeDatagram.fromPartial({ hello: true }));
      call.on("data", (d: dataplane.IkeDatagram) =>
        receiver({ remoteAddress: d.remoteAddress, remotePort: d.remotePort, localAddress: d.localAddress, payload: Buffer.from(d.payload), keepalive: d.keepalive }),
      );
      return call;
    });
    return {
      send: (d) => {
        // While the relay reconnects, IKE on 4500 is dropped: retransmission covers it.
        s.current()?.write(
          dataplane.IkeDatagram.fromPartial({ remoteAddress: d.remoteAddress, remotePort: d.remotePort, localAddress: d.localAddress, payload: d.payload, keepalive: !!d.keepalive }),
        );
      },
      onReceive: (fn) => {
        receiver = fn;
      },
      close: () => s.stop(),
    };
  }

  close(): void {
    this.#closed = true;
    for (const s of [...this.#streams]) s.stop();
    this.#client.close();
  }
}
