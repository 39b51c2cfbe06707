import type { CliCommand } from "@fleetswan/common";
import { commands as cli } from "./cli.js";

export { Controller, type ControllerOptions } from "./controller.js";
export { ControllerClient } from "./client.js";
export { compileSpec, SpecInvalidError, pskWeakness, type CompiledFleet } from "./spec/compile.js";
export { checkProposal } from "./proposals.js";
export { BUCKET, SPEC_KEY, subjects, type SpecRecord, type EnrollTicket } from "./layout.js";
export { importToSpec, formatChanges, formatStatus } from "./cli.js";

/** This service's `fleetswan` subcommands. */
export const commands: CliCommand[] = cli;
