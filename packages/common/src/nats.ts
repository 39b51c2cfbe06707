/**
 * Connecting to NATS: the one set of command-line flags every service and the CLI accept,
 * and the one function that turns them into a connection (credentials, TLS, reconnects).
 * Passwords and NKEY seeds come from files, never from the command line (visible in ps).
 */
import { readFileSync } from "node:fs";
import { connect, credsAuthenticator, nkeyAuthenticator, type ConnectionOptions, type NatsConnection } from "nats";
import { DEFAULT_NATS_URL } from "./defaults.js";
import { UnavailableError } from "./errors.js";

export interface NatsAuth {
  user?: string;
  /** Password (read from a file). */
  pass?: string;
  /** NKEY seed ("SU..."), when the server knows the user by its NKEY public key. */
  nkeySeed?: string;
  /** A NATS credentials file (JWT + NKEY seed), for servers in JWT mode. */
  credsFile?: string;
  /** TLS: CA to trust, and a client certificate when the server verifies clients. */
  tls?: { caFile?: string; certFile?: string; keyFile?: string };
}

export interface NatsConnectOptions extends NatsAuth {
  servers: string | string[];
  /** Connection name shown by the server's monitoring (/connz). */
  name: string;
  /** Custom inbox prefix, e.g. "_INBOX.keymgr" (permissions allow only one's own inboxes). */
  inboxPrefix?: string;
  /** Services: keep trying until the server is there. CLI: fail at once. */
  retryForever?: boolean;
  /** Client ping interval (ms) and missed pings before reconnecting; a gateway wants to notice a dead link fast. */
  pingIntervalMs?: number;
  maxPingOut?: number;
}

/** parseArgs option specs of the NATS flags. */
export const NATS_CLI_OPTIONS = {
  nats: { type: "string" },
  "nats-user": { type: "string" },
  "nats-password-file": { type: "string" },
  "nats-nkey-seed-file": { type: "string" },
  "nats-creds": { type: "string" },
  "nats-tls-ca": { type: "string" },
  "nats-tls-cert": { type: "string" },
  "nats-tls-key": { type: "string" },
} as const;

export const NATS_CLI_USAGE = `NATS options:
  --nats URL[,URL...]          NATS servers (default $FLEETSWAN_NATS_URL or ${DEFAULT_NATS_URL})
  --nats-user NAME             user name; password from --nats-password-file
  --nats-password-file PATH    file holding the password
  --nats-nkey-seed-file PATH   NKEY seed file (instead of a password)
  --nats-creds PATH            credentials file (JWT mode)
  --nats-tls-ca PATH           CA that signed the NATS server certificate (enables TLS)
  --nats-tls-cert PATH --nats-tls-key PATH   client certificate, when the server verifies clients`;

export type NatsCliValues = { [K in keyof typeof NATS_CLI_OPTIONS]?: string | undefined };

/** The connection settings the NATS flags (and $FLEETSWAN_NATS_URL) describe. */
export function natsOptionsFromCli(v: NatsCliValues, name: string, extra: Partial<NatsConnectOptions> = {}): NatsConnectOptions {
  const url = v.nats ?? process.env.FLEETSWAN_NATS_URL ?? DEFAULT_NATS_URL;
  const o: NatsConnectOptions = { servers: url.split(","), name, ...extra };
  if (v["nats-user"]) o.user = v["nats-user"];
  if (v["nats-password-file"]) o.pass = readFileSync(v["nats-password-file"], "utf8").trim();
  if (v["nats-nkey-seed-file"]) o.nkeySeed = readFileSync(v["nats-nkey-seed-file"], "utf8").trim();
  if (v["nats-creds"]) o.credsFile = v["nats-creds"];
  if (v["nats-tls-ca"] || v["nats-tls-cert"]) {
    o.tls = {};
    if (v["nats-tls-ca"]) o.tls.caFile = v["nats-tls-ca"];
    if (v["nats-tls-cert"]) o.tls.certFile = v["nats-tls-cert"];
    if (v["nats-tls-key"]) o.tls.keyFile = v["nats-tls-key"];
  }
  return o;
}

/** nats.js options for the settings. */
export function natsConnectionOptions(o: NatsConnectOptions): ConnectionOptions {
  const opts: ConnectionOptions = {
    servers: o.servers,
    name: o.name,
    maxReconnectAttempts: -1,
    reconnectTimeWait: 500,
    waitOnFirstConnect: o.retryForever ?? false,
    pingInterval: o.pingIntervalMs ?? 10_000,
    // No stack trace captured per request/flush for a possible later error: it costs a
    // `new Error()` per call (an agent or controller of a large fleet makes thousands);
    // errors still say what failed and on which subject.
    noAsyncTraces: true,
  };
  if (o.maxPingOut !== undefined) opts.maxPingOut = o.maxPingOut;
  if (o.inboxPrefix) opts.inboxPrefix = o.inboxPrefix;
  if (o.user) {
    opts.user = o.user;
    if (o.pass !== undefined) opts.pass = o.pass;
  }
  if (o.nkeySeed) opts.authenticator = nkeyAuthenticator(new TextEncoder().encode(o.nkeySeed.trim()));
  if (o.credsFile) opts.authenticator = credsAuthenticator(readFileSync(o.credsFile));
  if (o.tls) {
    opts.tls = {};
    if (o.tls.caFile) opts.tls.ca = readFileSync(o.tls.caFile, "utf8");
    if (o.tls.certFile) opts.tls.cert = readFileSync(o.tls.certFile, "utf8");
    if (o.tls.keyFile) opts.tls.key = readFileSync(o.tls.keyFile, "utf8");
  }
  return opts;
}

/** Connect, or an UnavailableError naming the servers (never the credentials). */
export async function connectNats(o: NatsConnectOptions): Promise<NatsConnection> {
  try {
    return await connect(natsConnectionOptions(o));
  } catch (err) {
    throw new UnavailableError(`cannot connect to NATS at ${[o.servers].flat().join(",")}: ${(err as Error).message}`, { servers: o.servers }, { cause: err });
  }
}
