/** Connecting to NATS with per-service credentials and TLS (docs/security.md). */
import { readFileSync } from "node:fs";
import { connect, nkeyAuthenticator, type ConnectionOptions, type NatsConnection } from "nats";
import { UnavailableError } from "@fleetswan/common";

export interface NatsAuth {
  user?: string;
  /** Password (keep it in a file; never on the command line). */
  pass?: string;
  /** NKEY seed ("SU..."), when the server knows the user by its NKEY public key. */
  nkeySeed?: string;
  /** TLS: CA to trust, and a client certificate when the server verifies clients. */
  tls?: { caFile?: string; certFile?: string; keyFile?: string };
}

export interface NatsConnectOptions extends NatsAuth {
  servers: string | string[];
  name: string;
  /** Custom inbox prefix, e.g. "_INBOX.keymgr" (permissions allow only one's own inboxes). */
  inboxPrefix?: string;
  /** Keep trying forever (services) or fail after the first attempt (CLI). */
  retryForever?: boolean;
}

export function natsConnectionOptions(o: NatsConnectOptions): ConnectionOptions {
  const opts: ConnectionOptions = {
    servers: o.servers,
    name: o.name,
    maxReconnectAttempts: -1,
    reconnectTimeWait: 500,
    waitOnFirstConnect: o.retryForever ?? false,
    pingInterval: 10_000,
  };
  if (o.inboxPrefix) opts.inboxPrefix = o.inboxPrefix;
  if (o.user) {
    opts.user = o.user;
    if (o.pass !== undefined) opts.pass = o.pass;
  }
  if (o.nkeySeed) opts.authenticator = nkeyAuthenticator(new TextEncoder().encode(o.nkeySeed.trim()));
  if (o.tls) {
    opts.tls = {};
    if (o.tls.caFile) opts.tls.ca = readFileSync(o.tls.caFile, "utf8");
    if (o.tls.certFile) opts.tls.cert = readFileSync(o.tls.certFile, "utf8");
    if (o.tls.keyFile) opts.tls.key = readFileSync(o.tls.keyFile, "utf8");
  }
  return opts;
}

export async function connectNats(o: NatsConnectOptions): Promise<NatsConnection> {
  try {
    return await connect(natsConnectionOptions(o));
  } catch (err) {
    throw new UnavailableError(`cannot connect to NATS at ${String(o.servers)}: ${(err as Error).message}`, { servers: o.servers });
  }
}
