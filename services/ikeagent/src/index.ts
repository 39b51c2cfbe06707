import type { CliCommand } from "@fleetswan/common";

/** This service's `fleetswan` subcommands. */
export const commands: CliCommand[] = [];
