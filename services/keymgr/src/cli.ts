/** `fleetswan keymgr` (the service and its one-shot master-key rotation) and `fleetswan secrets`. */
import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";
import {
  METRICS_PORT,
  Secret,
  UsageError,
  createLogger,
  createRegistry,
  startMetricsServer,
  type CliCommand,
  NATS_CLI_OPTIONS,
  NATS_CLI_USAGE,
  natsOptionsFromCli,
  connectNats,
  type NatsCliValues,
  type NatsConnectOptions,
} from "@fleetswan/common";
import { MasterKeyring, newMasterKeyText, parseMasterKey, type MasterKey } from "./crypto.js";
import { KeyManager } from "./service.js";
import { KeymgrClient } from "./client.js";

const NATS_FLAGS = NATS_CLI_OPTIONS;
const NATS_USAGE = NATS_CLI_USAGE;

function natsOptions(v: NatsCliValues, name: string, inboxPrefix: string): NatsConnectOptions {
  return natsOptionsFromCli(v, name, { inboxPrefix });
}

function loadMasterKey(file: string | undefined, envName: string): MasterKey | undefined {
  if (file) return parseMasterKey(readFileSync(file));
  const env = process.env[envName];
  return env ? parseMasterKey(env) : undefined;
}

const KEYMGR_USAGE = `usage: fleetswan keymgr [--nats URL] (--master-key-file PATH | env FLEETSWAN_MASTER_KEY) [--metrics-port N]
                       [--previous-master-key-file PATH] [--replicas N]
       fleetswan keymgr --rotate-master-key --master-key-file NEW --previous-master-key-file OLD [--nats URL]
       fleetswan keymgr --generate-master-key > master.key

Runs the key manager: secrets at rest (encrypted with the master key), enrollment of
agents, sealing, rotation, the fleet CA. See docs/keymgr.md.

  --master-key-file PATH           32-byte master key (raw, hex or base64); or env FLEETSWAN_MASTER_KEY
  --previous-master-key-file PATH  an older master key, to read records not yet re-encrypted
                                   (or env FLEETSWAN_PREVIOUS_MASTER_KEY)
  --rotate-master-key              re-encrypt every record with the current key, then exit
  --generate-master-key            print a new random master key (base64) and exit
  --replicas N                     KV replicas for the buckets keymgr creates (default 1)
  --metrics-port N                 /metrics, /healthz, /readyz (default ${METRICS_PORT.keymgr}; 0 = off)

${NATS_USAGE}`;

export const keymgrCommand: CliCommand = {
  name: "keymgr",
  summary: "Run the key manager (secrets, enrollment, sealing, rotation, fleet CA)",
  usage: KEYMGR_USAGE,
  async run(argv) {
    const { values: v } = parseArgs({
      args: argv,
      options: {
        ...NATS_FLAGS,
        "master-key-file": { type: "string" },
        "previous-master-key-file": { type: "string" },
        "rotate-master-key": { type: "boolean" },
        "generate-master-key": { type: "boolean" },
        replicas: { type: "string" },
        "metrics-port": { type: "string" },
      },
      allowPositionals: false,
    });
    if (v["generate-master-key"]) {
      process.stdout.write(newMasterKeyText());
      return 0;
    }
    const current = loadMasterKey(v["master-key-file"], "FLEETSWAN_MASTER_KEY");
    if (!current) throw new UsageError("a master key is required: --master-key-file PATH or env FLEETSWAN_MASTER_KEY");
    const prev = loadMasterKey(v["previous-master-key-file"], "FLEETSWAN_PREVIOUS_MASTER_KEY");
    const keyring = new MasterKeyring(current, prev ? [prev] : []);
    const log = createLogger("keymgr");
    const replicas = v.replicas ? Number(v.replicas) : 1;
    if (!Number.isInteger(replicas) || replicas < 1 || replicas > 5) throw new UsageError("--replicas must be 1..5");
    const nc = await connectNats({ ...natsOptions(v, "keymgr", "_INBOX.keymgr"), retryForever: !v["rotate-master-key"] });

    if (v["rotate-master-key"]) {
      if (!prev) throw new UsageError("--rotate-master-key needs the old key: --previous-master-key-file PATH");
      const km = new KeyManager({ nc, keyring, log, replicas, noServe: true });
      await km.start();
      const r = await km.reencryptAll();
      await km.stop();
      await nc.drain();
      process.stdout.write(`re-encrypted ${r.reencrypted} record(s) with master key ${current.id}; ${r.unchanged} already current\n`);
      return 0;
    }

    const registry = createRegistry("keymgr");
    const km = new KeyManager({ nc, keyring, log, registry, replicas });
    const port = v["metrics-port"] !== undefined ? Number(v["metrics-port"]) : METRICS_PORT.keymgr;
    let started = false;
    const metrics = port > 0 ? await startMetricsServer({ registry, port, ready: () => (started && !nc.isClosed() ? { ok: true } : { ok: false, reason: "not connected to NATS" }) }) : undefined;
    await km.start();
    started = true;
    await new Promise<void>((resolve) => {
      const stop = () => resolve();
      process.once("SIGTERM", stop);
      process.once("SIGINT", stop);
    });
    log.info("keymgr stopping");
    await km.stop();
    await metrics?.close();
    await nc.drain();
    return 0;
  },
};

const SECRETS_USAGE = `usage: fleetswan secrets list [--json]
       fleetswan secrets rotate NAME [--window SECONDS]
       fleetswan secrets set NAME --gateways GW[,GW...]   (value read from standard input)
       fleetswan secrets generate NAME --gateways GW[,GW...]

Manages secrets through keymgr. Values are never printed. \`rotate\` gives a new value;
the previous one stays valid for --window seconds (default 600) so no tunnel drops.

${NATS_USAGE}`;

async function readStdin(): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of process.stdin) chunks.push(c as Buffer);
  let b = Buffer.concat(chunks);
  // A trailing newline from `echo` or a file is not part of the secret.
  while (b.length > 0 && (b[b.length - 1] === 0x0a || b[b.length - 1] === 0x0d)) b = b.subarray(0, b.length - 1);
  return b;
}

export const secretsCommand: CliCommand = {
  name: "secrets",
  summary: "List, set, generate or rotate secrets (values never shown)",
  usage: SECRETS_USAGE,
  async run(argv) {
    const { values: v, positionals } = parseArgs({
      args: argv,
      options: { ...NATS_FLAGS, window: { type: "string" }, gateways: { type: "string" }, json: { type: "boolean" } },
      allowPositionals: true,
    });
    const [verb, name] = positionals;
    if (!verb || !["list", "rotate", "set", "generate"].includes(verb)) throw new UsageError("expected list, rotate, set or generate");
    if (verb !== "list" && !name) throw new UsageError(`${verb} needs a secret NAME`);
    const gateways = v.gateways ? v.gateways.split(",").filter(Boolean) : [];
    const nc = await connectNats(natsOptions(v, "fleetswan-secrets", "_INBOX.operator"));
    try {
      const client = new KeymgrClient(nc);
      if (verb === "list") {
        const { secrets } = await client.listSecrets();
        if (v.json) {
          process.stdout.write(JSON.stringify(secrets, null, 2) + "\n");
          return 0;
        }
        const rows = [["NAME", "VERSION", "CREATED", "PREVIOUS VALID UNTIL", "GATEWAYS"]];
        for (const s of secrets) {
          rows.push([s.name, String(s.version), s.createdAt?.toISOString() ?? "", s.previousValidUntil?.toISOString() ?? "-", s.gateways.join(",") || "-"]);
        }
        const w = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
        for (const r of rows) process.stdout.write(r.map((c, i) => c.padEnd(w[i]!)).join("  ").trimEnd() + "\n");
        return 0;
      }
      if (verb === "rotate") {
        const window = v.window !== undefined ? Number(v.window) : 600;
        if (!Number.isInteger(window) || window < 0) throw new UsageError("--window must be a whole number of seconds");
        const info = await client.rotateSecret(name!, window);
        process.stdout.write(`rotated ${info.name} to version ${info.version}; previous value valid until ${info.previousValidUntil?.toISOString() ?? "now"}; sealed to ${info.gateways.length} gateway(s)\n`);
        return 0;
      }
      if (verb === "generate") {
        const info = await client.generateSecret(name!, gateways);
        process.stdout.write(`${info.name}: version ${info.version}, sealed to ${info.gateways.join(",") || "no gateway yet"}\n`);
        return 0;
      }
      const value = new Secret(await readStdin());
      if (value.length === 0) throw new UsageError("set reads the value from standard input; it was empty");
      const info = await client.storeSecret(name!, value, gateways);
      value.wipe();
      process.stdout.write(`${info.name}: version ${info.version} stored, sealed to ${info.gateways.join(",") || "no gateway yet"}\n`);
      return 0;
    } finally {
      await nc.close();
    }
  },
};
