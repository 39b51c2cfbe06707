import { createServer, type Server } from "node:http";
import { Registry, collectDefaultMetrics } from "prom-client";

export { Registry };

/** Readiness: ok, or not ready with a reason shown on /readyz. */
export type ReadyCheck = () => { ok: true } | { ok: false; reason: string };

export interface MetricsServer {
  readonly server: Server;
  /** The bound port (useful when 0 was asked for). */
  readonly port: number;
  close(): Promise<void>;
}

/** A registry with the standard process_* and nodejs_* metrics and a `service` label. */
export function createRegistry(service: string): Registry {
  const registry = new Registry();
  registry.setDefaultLabels({ service });
  collectDefaultMetrics({ register: registry }); // standard process_* and nodejs_* names
  return registry;
}

/**
 * Serves /metrics (Prometheus text format), /healthz (the process answers) and
 * /readyz (the service can do its job: ready() decides). Everything else is 404.
 */
export async function startMetricsServer(opts: { registry: Registry; port: number; host?: string; ready?: ReadyCheck }): Promise<MetricsServer> {
  const ready = opts.ready ?? (() => ({ ok: true as const }));
  const server = createServer((req, res) => {
    const path = (req.url ?? "/").split("?")[0];
    if (req.method !== "GET" && req.method !== "HEAD") {
      res.writeHead(405, { allow: "GET, HEAD" }).end();
      return;
    }
    if (path === "/metrics") {
      opts.registry.metrics().then(
        (text) => res.writeHead(200, { "content-type": opts.registry.contentType }).end(text),
        (err: Error) => res.writeHead(500, { "content-type": "text/plain" }).end(`metrics collection failed: ${err.message}\n`),
      );
    } else if (path === "/healthz") {
      res.writeHead(200, { "content-type": "text/plain" }).end("ok\n");
    } else if (path === "/readyz") {
      const r = ready();
      if (r.ok) res.writeHead(200, { "content-type": "text/plain" }).end("ready\n");
      else res.writeHead(503, { "content-type": "text/plain" }).end(`not ready: ${r.reason}\n`);
    } else {
      res.writeHead(404, { "content-type": "text/plain" }).end("not found\n");
    }
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(opts.port, opts.host ?? "0.0.0.0", () => resolve());
  });
  const addr = server.address();
  const port = typeof addr === "object" && addr ? addr.port : opts.port;
  return {
    server,
    port,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}
