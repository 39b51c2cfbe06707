/** Connecting to NATS: shared with every service (packages/common/src/nats.ts). */
export { connectNats, natsConnectionOptions, type NatsAuth, type NatsConnectOptions } from "@fleetswan/common";
