import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { fileURLToPath } from "node:url";
import { allCommands, helpText } from "../src/index.js";

const bin = fileURLToPath(new URL("../../../../bin/fleetswan.js", import.meta.url));

test("--help lists exactly the registered commands", () => {
  const out = execFileSync(process.execPath, [bin, "--help"], { encoding: "utf8" });
  assert.equal(out.trimEnd(), helpText());
  for (const c of allCommands) assert.match(out, new RegExp(`^  ${c.name} +${c.summary.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}$`, "m"));
  const listed = out.split("\n").filter((l) => /^  \S/.test(l)).length;
  assert.equal(listed, allCommands.length);
});

test("an unknown command exits 2 and says so", () => {
  const r = spawnSync(process.execPath, [bin, "frobnicate"], { encoding: "utf8" });
  assert.equal(r.status, 2);
  assert.match(r.stderr, /unknown command "frobnicate"/);
});

test("command names are unique", () => {
  const names = allCommands.map((c) => c.name);
  assert.equal(new Set(names).size, names.length);
});
