/**
 * The local control socket: the IkeAgent gRPC service (proto/fleetswan/ikeagent/v1) on a
 * Unix socket (mode 0600), used by `fleetswan agent status|up|down|route|unroute`.
 */
import { chmodSync, existsSync, mkdirSync, unlinkSync } from "node:fs";
import { dirname } from "node:path";
import { Server, ServerCredentials, status, type sendUnaryData, type ServerUnaryCall } from "@grpc/grpc-js";
import type { Logger } from "@fleetswan/common";
import { ikeagent } from "@fleetswan/proto";
import type { IkeEngine } from "../ike/engine/engine.js";

export interface ControlServer {
  close(): Promise<void>;
}

/** `reload` re-reads the configuration source; undefined when there is none (fleet mode applies views itself). */
export async function startControlServer(socketPath: string, engine: IkeEngine, log: Logger, reload?: () => Promise<ikeagent.ReloadConfigResponse>): Promise<ControlServer> {
  mkdirSync(dirname(socketPath), { recursive: true, mode: 0o755 });
  if (existsSync(socketPath)) unlinkSync(socketPath);
  const server = new Server();
  const unary = <Req, Res>(fn: (req: Req) => Promise<Res> | Res) => async (call: ServerUnaryCall<Req, Res>, cb: sendUnaryData<Res>) => {
    try {
      cb(null, await fn(call.request));
    } catch (err) {
      const e = err as Error & { code?: string };
      log.warn({ err: e.message }, "control request failed");
      cb({ code: status.FAILED_PRECONDITION, details: `${e.code ?? "ERROR"}: ${e.message}` });
    }
  };
  const impl: ikeagent.IkeAgentServer = {
    listSas: unary(async (req: ikeagent.ListSasRequest) => {
      await engine.refreshCounters();
      return engine.listSas(req);
    }),
    listConnections: unary(() => engine.listConnections()),
    initiate: unary((req: ikeagent.ConnectionCommand) => engine.initiate(req)),
    terminate: unary((req: ikeagent.ConnectionCommand) => engine.terminate(req)),
    route: unary((req: ikeagent.ConnectionCommand) => engine.route(req)),
    unroute: unary((req: ikeagent.ConnectionCommand) => engine.unroute(req)),
    reloadConfig: unary(async () => {
      if (!reload) throw Object.assign(new Error("this agent takes its configuration from the fleet; reload happens on view changes"), { code: "UNSUPPORTED" });
      return reload();
    }),
    getDiagnostics: unary((req: ikeagent.GetDiagnosticsRequest) => engine.diagnostics(req)),
  };
  server.addService(ikeagent.IkeAgentService, impl);
  await new Promise<void>((resolve, reject) => server.bindAsync(`unix://${socketPath}`, ServerCredentials.createInsecure(), (err) => (err ? reject(err) : resolve())));
  chmodSync(socketPath, 0o600);
  log.info({ socket: socketPath }, "control socket ready");
  return {
    close: () =>
      new Promise<void>((resolve) => {
        server.tryShutdown(() => {
          if (existsSync(socketPath)) unlinkSync(socketPath);
          resolve();
        });
        setTimeout(() => server.forceShutdown(), 1000).unref();
      }),
  };
}
