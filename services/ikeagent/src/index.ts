import type { CliCommand } from "@fleetswan/common";
import { agentCommands } from "./daemon/cli.js";
import { benchCommands } from "./bench/ike.js";

export { startAgent, type Agent, type AgentOptions } from "./daemon/agent.js";
export { IkeEngine, type EngineOptions, type Transport } from "./ike/engine/engine.js";
export { FakeDataplane } from "./ike/engine/dataplane-fake.js";
export { GrpcDataplane } from "./daemon/dataplane-grpc.js";
export type { Engine, EngineConfig, EngineEvent, EngineSecret, SecretLookup } from "./engine-api.js";

/** This service's `fleetswan` subcommands: `ikeagent` (run the agent), `agent` (local control), `bench ike` (handshake load generator). */
export const commands: CliCommand[] = [...agentCommands, ...benchCommands];
