import type { CliCommand } from "@fleetswan/common";
import { keymgrCommand, secretsCommand } from "./cli.js";

export { KeyManager, CA_SECRET_NAME, DEFAULT_WINDOW_SECONDS, type KeyManagerOptions } from "./service.js";
export { KeymgrClient } from "./client.js";
export * from "./crypto.js";
export * from "./layout.js";
export { connectNats, natsConnectionOptions, type NatsAuth, type NatsConnectOptions } from "./nats.js";
export { createCa, issueCertificate, certificateNotAfter, type LeafKeyType, type CaMaterial } from "./ca.js";
export * from "./nats-config.js";

/** This service's `fleetswan` subcommands. */
export const commands: CliCommand[] = [keymgrCommand, secretsCommand];
