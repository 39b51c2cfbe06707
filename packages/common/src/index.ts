export * from "./secret.js";
export * from "./errors.js";
export * from "./log.js";
export * from "./metrics.js";
export * from "./config.js";
export * from "./defaults.js";
export * from "./cli.js";
export * from "./nats.js";
