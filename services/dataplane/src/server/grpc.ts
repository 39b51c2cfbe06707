/**
 * The dataplane gRPC API (proto/fleetswan/dataplane/v1) on a Unix socket, mode 0600,
 * served to the local ikeagent. Handlers map to Dataplane (src/reconcile.ts); errors map
 * to gRPC status codes with the FleetswanError code in the "fleetswan-code" trailer.
 */
import { chmodSync, existsSync, mkdirSync, unlinkSync } from "node:fs";
import { dirname } from "node:path";
import * as grpc from "@grpc/grpc-js";
import { dataplane } from "@fleetswan/proto";
import { ConfigError, FleetswanError, KernelError, type Logger } from "@fleetswan/common";
import type { Dataplane } from "../reconcile.js";
import type { NattSocket } from "../backend.js";
import { IkeRelay } from "./relay.js";

export interface DataplaneServerOptions {
  dataplane: Dataplane;
  /** Unix socket path. */
  socket: string;
  logger?: Logger;
  /** The NAT-T socket to relay (undefined: RelayIke answers UNIMPLEMENTED). */
  natt?: NattSocket;
  /** Called for every RPC error, with its code (metrics). */
  onError?: (code: string) => void;
}

export interface RunningServer {
  readonly server: grpc.Server;
  readonly socket: string;
  readonly relay: IkeRelay | undefined;
  close(): Promise<void>;
}

function toStatus(e: unknown): Partial<grpc.StatusObject> {
  const md = new grpc.Metadata();
  if (e instanceof FleetswanError) {
    md.set("fleetswan-code", e.code);
    const code =
      e instanceof ConfigError || e.code === "ADDRESS_INVALID"
        ? grpc.status.INVALID_ARGUMENT
        : e instanceof KernelError
          ? grpc.status.FAILED_PRECONDITION
          : e.code === "UNAVAILABLE"
            ? grpc.status.UNAVAILABLE
            : grpc.status.INTERNAL;
    return { code, details: e.message, metadata: md };
  }
  return { code: grpc.status.INTERNAL, details: (e as Error)?.message ?? String(e), metadata: md };
}

/** Start serving; the socket file is created with mode 0600 (its directory 0700 when we create it). */
export async function startDataplaneServer(opts: DataplaneServerOptions): Promise<RunningServer> {
  const dp = opts.dataplane;
  const log = opts.logger;
  const unary =
    <Req, Res>(name: string, fn: (req: Req) => Promise<Res>): grpc.handleUnaryCall<Req, Res> =>
    (call, cb) => {
      fn(call.request).then(
        (res) => cb(null, res),
        (e: unknown) => {
          const code = e instanceof FleetswanError ? e.code : "INTERNAL";
          opts.onError?.(code);
          log?.warn({ rpc: name, code, err: (e as Error)?.message }, "dataplane RPC failed");
          cb(toStatus(e) as grpc.ServiceError);
        },
      );
    };
  const relay = opts.natt ? new IkeRelay(opts.natt, log) : undefined;
  const impl: dataplane.DataplaneServer = {
    getCapabilities: unary("GetCapabilities", () => dp.capabilities()),
    allocateSpi: unary("AllocateSpi", async (r: dataplane.AllocateSpiRequest) => ({ spi: await dp.allocateSpi(r) })),
    addSa: unary("AddSa", async (r: dataplane.AddSaRequest) => {
      if (!r.sa) throw new ConfigError("sa is required", "AddSaRequest.sa");
      await dp.addSa(r.sa);
      return {};
    }),
    deleteSa: unary("DeleteSa", async (r: dataplane.DeleteSaRequest) => {
      if (!r.id) throw new ConfigError("id is required", "DeleteSaRequest.id");
      return { existed: await dp.deleteSa(r.id, r.src) };
    }),
    addPolicy: unary("AddPolicy", async (r: dataplane.AddPolicyRequest) => {
      if (!r.policy) throw new ConfigError("policy is required", "AddPolicyRequest.policy");
      return { effectivePriority: await dp.addPolicy(r.policy) };
    }),
    deletePolicy: unary("DeletePolicy", async (r: dataplane.DeletePolicyRequest) => ({
      existed: await dp.deletePolicy({ selector: r.selector!, direction: r.direction, mark: r.mark }),
    })),
    listSas: unary("ListSas", async (r: dataplane.ListSasRequest) => ({ sas: await dp.listSas(r.connection) })),
    listPolicies: unary("ListPolicies", async (r: dataplane.ListPoliciesRequest) => ({ policies: await dp.listPolicies(r.connection) })),
    watchEvents: (call) => {
      const off = dp.watch((e) => call.write(e));
      const done = () => off();
      call.on("cancelled", done);
      call.on("close", done);
      call.on("error", done);
    },
    relayIke: (call) => {
      if (!relay) {
        call.emit("error", { code: grpc.status.UNIMPLEMENTED, details: "this dataplane has no NAT-T socket (start it with --natt-port)" });
        return;
      }
      relay.attach(call);
    },
  };
  const server = new grpc.Server();
  server.addService(dataplane.DataplaneService, impl);
  mkdirSync(dirname(opts.socket), { recursive: true, mode: 0o700 });
  if (existsSync(opts.socket)) unlinkSync(opts.socket);
  // Create the socket with no group/other bits from the start, then make sure.
  const oldMask = process.umask(0o177);
  try {
    await new Promise<void>((resolve, reject) => {
      server.bindAsync(`unix:${opts.socket}`, grpc.ServerCredentials.createInsecure(), (err) => (err ? reject(err) : resolve()));
    });
  } finally {
    process.umask(oldMask);
  }
  chmodSync(opts.socket, 0o600);
  return {
    server,
    socket: opts.socket,
    relay,
    close: () =>
      new Promise<void>((resolve) => {
        relay?.close();
        server.tryShutdown(() => {
          if (existsSync(opts.socket)) unlinkSync(opts.socket);
          resolve();
        });
        setTimeout(() => server.forceShutdown(), 2000).unref();
      }),
  };
}

/** A client for tests and tools. */
export function dataplaneClient(socket: string): dataplane.DataplaneClient {
  return new dataplane.DataplaneClient(`unix:${socket}`, grpc.credentials.createInsecure());
}
