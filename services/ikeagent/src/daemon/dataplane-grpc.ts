/**
 * DataplaneApi over gRPC on the dataplane's Unix socket (services/dataplane), with the
 * generated client from @fleetswan/proto. Calls have a deadline; failures become
 * UnavailableError with the RPC name, so the engine's logs say which call failed.
 */
import { credentials, type ClientDuplexStream, type ClientReadableStream, type ServiceError, Metadata } from "@grpc/grpc-js";
import { UnavailableError, type Logger } from "@fleetswan/common";
import { dataplane } from "@fleetswan/proto";
import type { DataplaneApi, IkeRelay, RelayDatagram } from "../ike/engine/dataplane.js";

const CALL_TIMEOUT_MS = 5000;

export class GrpcDataplane implements DataplaneApi {
  readonly #client: dataplane.DataplaneClient;
  readonly #log: Logger | undefined;
  #watches = new Set<ClientReadableStream<dataplane.Event>>();
  #relay: ClientDuplexStream<dataplane.IkeDatagram, dataplane.IkeDatagram> | undefined;

  /** `socket` is a path ("/run/fleetswan/dataplane.sock") or a gRPC target ("unix:...", "host:port"). */
  constructor(socket: string, log?: Logger) {
    const target = socket.startsWith("/") ? `unix://${socket}` : socket;
    this.#client = new dataplane.DataplaneClient(target, credentials.createInsecure());
    this.#log = log;
  }

  #unary<Req, Res>(name: string, fn: (req: Req, md: Metadata, opts: { deadline: Date }, cb: (err: ServiceError | null, res: Res) => void) => unknown, req: Req): Promise<Res> {
    return new Promise((resolve, reject) => {
      fn.call(this.#client, req, new Metadata(), { deadline: new Date(Date.now() + CALL_TIMEOUT_MS) }, (err, res) => {
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

  /** Event stream; reconnects after 1 s when the dataplane restarts. */
  watchEvents(fn: (e: dataplane.Event) => void): () => void {
    let stopped = false;
    let stream: ClientReadableStream<dataplane.Event> | undefined;
    const open = (): void => {
      if (stopped) return;
      stream = this.#client.watchEvents({});
      this.#watches.add(stream);
      stream.on("data", (e: dataplane.Event) => fn(e));
      stream.on("error", (err: ServiceError) => {
        if (!stopped) this.#log?.warn({ err: err.details || err.message }, "dataplane event stream failed; reconnecting in 1 s");
      });
      stream.on("close", () => {
        if (stream) this.#watches.delete(stream);
        if (!stopped) setTimeout(open, 1000).unref();
      });
    };
    open();
    return () => {
      stopped = true;
      stream?.cancel();
    };
  }

  /** The UDP 4500 relay; reopens after 1 s if the stream breaks. */
  openRelay(): IkeRelay {
    let receiver: (d: RelayDatagram) => void = () => {};
    let closed = false;
    const open = (): void => {
      if (closed) return;
      const s = this.#client.relayIke();
      this.#relay = s;
      s.write(dataplane.IkeDatagram.fromPartial({ hello: true }));
      s.on("data", (d: dataplane.IkeDatagram) =>
        receiver({ remoteAddress: d.remoteAddress, remotePort: d.remotePort, localAddress: d.localAddress, payload: Buffer.from(d.payload), keepalive: d.keepalive }),
      );
      s.on("error", (err: ServiceError) => {
        if (!closed) this.#log?.warn({ err: err.details || err.message }, "dataplane NAT-T relay failed; reopening in 1 s");
      });
      s.on("close", () => {
        if (this.#relay === s) this.#relay = undefined;
        if (!closed) setTimeout(open, 1000).unref();
      });
    };
    open();
    return {
      send: (d) => {
        this.#relay?.write(
          dataplane.IkeDatagram.fromPartial({ remoteAddress: d.remoteAddress, remotePort: d.remotePort, localAddress: d.localAddress, payload: d.payload, keepalive: !!d.keepalive }),
        );
      },
      onReceive: (fn) => {
        receiver = fn;
      },
      close: () => {
        closed = true;
        this.#relay?.cancel();
      },
    };
  }

  close(): void {
    for (const w of this.#watches) w.cancel();
    this.#relay?.cancel();
    this.#client.close();
  }
}
