#!/usr/bin/env node
// The one `fleetswan` entry point: dispatches to the subcommands of every service.
import { main } from "../packages/cli/dist/src/main.js";

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err) => {
    process.stderr.write(`fleetswan: ${err?.stack ?? err}\n`);
    process.exitCode = 1;
  },
);
