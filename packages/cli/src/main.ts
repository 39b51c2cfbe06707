import { UsageError, FleetswanError, type CliCommand } from "@fleetswan/common";
import { commands as controller } from "@fleetswan/controller";
import { commands as keymgr } from "@fleetswan/keymgr";
import { commands as ikeagent } from "@fleetswan/ikeagent";
import { commands as dataplane } from "@fleetswan/dataplane";

/** Every subcommand, in the order `--help` lists them. */
export const allCommands: CliCommand[] = [...controller, ...keymgr, ...ikeagent, ...dataplane];

export function helpText(): string {
  const width = Math.max(0, ...allCommands.map((c) => c.name.length));
  const lines = allCommands.map((c) => `  ${c.name.padEnd(width)}  ${c.summary}`);
  return ["usage: fleetswan COMMAND [ARGS...]", "", "Commands:", ...lines, "", "Run `fleetswan COMMAND --help` for a command's options."].join("\n");
}

export async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (!name || name === "--help" || name === "-h" || name === "help") {
    process.stdout.write(helpText() + "\n");
    return name ? 0 : 2;
  }
  const cmd = allCommands.find((c) => c.name === name);
  if (!cmd) {
    process.stderr.write(`fleetswan: unknown command "${name}"\n\n${helpText()}\n`);
    return 2;
  }
  if (rest[0] === "--help" || rest[0] === "-h") {
    process.stdout.write(cmd.usage.trimEnd() + "\n");
    return 0;
  }
  try {
    return await cmd.run(rest);
  } catch (err) {
    if (err instanceof UsageError) {
      process.stderr.write(`fleetswan ${name}: ${err.message}\n\n${cmd.usage.trimEnd()}\n`);
      return 2;
    }
    if (err instanceof FleetswanError) {
      process.stderr.write(`fleetswan ${name}: error ${err.code}: ${err.message}\n`);
      return 1;
    }
    throw err;
  }
}
