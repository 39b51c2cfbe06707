/**
 * A `fleetswan` subcommand. Each service package exports its commands as
 * `commands: CliCommand[]` from its index; packages/cli collects and dispatches them.
 */
export interface CliCommand {
  /** The word after `fleetswan`, e.g. "controller", "apply", "conn". */
  name: string;
  /** One line for `fleetswan --help`. */
  summary: string;
  /** Usage text for `fleetswan NAME --help`. */
  usage: string;
  /** Runs the command; resolves to the process exit code. Long-running services resolve when stopped. */
  run(argv: string[]): Promise<number>;
}

/** Thrown for bad command-line usage; the CLI prints the message and the usage, exits 2. */
export class UsageError extends Error {
  override name = "UsageError";
}
