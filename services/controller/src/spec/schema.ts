/**
 * The fleet spec's JSON Schema (draft 2020-12). docs/fleet-spec.schema.json is this
 * object, pretty-printed (a unit test proves they are identical; regenerate the file
 * with `node services/controller/dist/src/spec/schema.js --write docs/fleet-spec.schema.json`).
 * The controller validates the spec's structure with this very schema (schema-check.ts),
 * then applies the semantic rules in validate.ts.
 */

export type JsonSchema = {
  $schema?: string;
  $id?: string;
  $ref?: string;
  $defs?: Record<string, JsonSchema>;
  title?: string;
  description?: string;
  type?: "object" | "array" | "string" | "integer" | "number" | "boolean";
  properties?: Record<string, JsonSchema>;
  additionalProperties?: boolean | JsonSchema;
  propertyNames?: JsonSchema;
  required?: string[];
  enum?: (string | number | boolean)[];
  const?: string | number | boolean;
  items?: JsonSchema;
  minItems?: number;
  maxItems?: number;
  uniqueItems?: boolean;
  pattern?: string;
  minLength?: number;
  maxLength?: number;
  minimum?: number;
  maximum?: number;
  anyOf?: JsonSchema[];
  examples?: unknown[];
};

const GATEWAY_NAME = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$";
const CONN_NAME = "^[A-Za-z0-9._-]{1,64}$";

const ref = (name: string): JsonSchema => ({ $ref: `#/$defs/${name}` });
const list = (items: JsonSchema, description?: string, extra: Partial<JsonSchema> = {}): JsonSchema => ({
  type: "array",
  items,
  ...(description ? { description } : {}),
  ...extra,
});

/** Options shared by `defaults`, `connections[]` and `peers[]` (like ipsec.conf's conn %default). */
const connectionOptions: Record<string, JsonSchema> = {
  auth: { description: "How the two ends authenticate (default psk; the controller has keymgr generate a PSK per connection).", enum: ["psk", "pubkey"] },
  proposals: { type: "string", description: "Name of a proposal set under top-level `proposals`." },
  ike_proposals: list({ type: "string" }, "IKE proposals, strongSwan syntax, first preferred, e.g. aes256gcm16-prfsha384-curve25519.", { minItems: 1 }),
  esp_proposals: list({ type: "string" }, "ESP proposals, e.g. aes256gcm16 or aes256-sha256-curve25519 (a DH group means PFS).", { minItems: 1 }),
  ike_lifetime: { ...ref("duration"), description: "IKE SA lifetime (ikelifetime; default 3h)." },
  child_lifetime: { ...ref("duration"), description: "CHILD SA lifetime (keylife/salifetime; default 1h)." },
  rekey_margin: { ...ref("duration"), description: "Rekey this long before expiry (rekeymargin; default 9m)." },
  rekey_fuzz: { type: "integer", minimum: 0, maximum: 200, description: "Random extra margin, percent of rekey_margin (rekeyfuzz; default 100)." },
  child_lifetime_bytes: { type: "integer", minimum: 0, description: "CHILD SA byte limit (0 = none)." },
  child_lifetime_packets: { type: "integer", minimum: 0, description: "CHILD SA packet limit (0 = none)." },
  dpd: ref("dpd"),
  start: { enum: ["start", "route", "add"], description: "start: initiate and keep up (auto=start); route: trap policies, negotiate on the first packet (auto=route); add: load only (auto=add). Default start." },
  mode: { enum: ["tunnel", "transport"], description: "Default tunnel." },
  encapsulation: { enum: ["auto", "force"], description: "auto: UDP-encapsulate ESP only behind NAT (RFC 3948); force: always. Default auto." },
  keying_tries: { type: "integer", minimum: 0, description: "Attempts before giving up (0 = forever; default 3)." },
  unique_ids: { type: "boolean", description: "Replace an older IKE SA with the same peer identity (default true)." },
  replay_window: { type: "integer", minimum: 0, maximum: 65535, description: "Anti-replay window in packets (default 1024)." },
  mark: { type: "integer", minimum: 0, maximum: 4294967295, description: "XFRM mark / interface id for route-based setups (0 = none)." },
};

export const FLEET_SPEC_SCHEMA: JsonSchema = {
  $schema: "https://json-schema.org/draft/2020-12/schema",
  $id: "https://fleetswan.dev/schema/fleet-spec.schema.json",
  title: "fleetswan fleet spec",
  description: "The whole fleet declared once: gateways, connections between them, external peers, defaults and policy groups. See docs/fleet-spec.md.",
  type: "object",
  additionalProperties: false,
  required: ["gateways"],
  properties: {
    version: { const: 1, description: "Spec format version (1)." },
    defaults: { ...ref("options"), description: "Applied to every connection and peer unless they say otherwise (like conn %default)." },
    proposals: {
      type: "object",
      description: "Named proposal sets, referenced by `proposals: NAME`.",
      propertyNames: { pattern: CONN_NAME },
      additionalProperties: ref("proposalSet"),
    },
    ca_certificates: list({ type: "string", pattern: "-----BEGIN CERTIFICATE-----" }, "Extra trusted CAs (PEM) sent to every gateway, for pubkey authentication with external peers."),
    gateways: list(ref("gateway"), "The fleet's gateways (each runs fleetswan ikeagent).", { minItems: 1 }),
    connections: list(ref("connection"), "Connections between fleet gateways: one pair (`gateways: [a, b]`) or a full mesh (`mesh: [a, b, c]`)."),
    peers: list(ref("peer"), "Connections from one fleet gateway to an external (non-fleet) IPsec peer."),
  },
  $defs: {
    duration: {
      description: "Seconds (integer) or a duration string: 90s, 30m, 3h, 1d, 1h30m.",
      anyOf: [
        { type: "integer", minimum: 0 },
        { type: "string", pattern: "^([0-9]+[smhd])+$" },
      ],
    },
    cidr: { type: "string", description: "CIDR prefix or address, optionally with a traffic selector suffix [proto/port]: 10.1.0.0/16, 2001:db8::/48, 10.9.0.0/24[tcp/443]." },
    proposalSet: {
      type: "object",
      additionalProperties: false,
      properties: {
        ike: list({ type: "string" }, "IKE proposals.", { minItems: 1 }),
        esp: list({ type: "string" }, "ESP proposals.", { minItems: 1 }),
      },
    },
    dpd: {
      type: "object",
      description: "Dead peer detection (RFC 7296 §2.4).",
      additionalProperties: false,
      properties: {
        delay: { ...ref("duration"), description: "Probe after this much idle time (0 = off; default 30s)." },
        timeout: { ...ref("duration"), description: "Declare the peer dead after this long without an answer (default 150s)." },
        action: { enum: ["clear", "trap", "restart"], description: "What to do with a dead peer (default restart)." },
      },
    },
    options: { type: "object", additionalProperties: false, properties: connectionOptions },
    policyGroups: {
      type: "object",
      description: "Policy groups (FreeS/WAN opportunistic encryption groups) of one gateway: destination prefixes per group.",
      additionalProperties: false,
      properties: {
        block: list(ref("cidr"), "Drop traffic to these destinations."),
        clear: list(ref("cidr"), "Send in clear (no IPsec)."),
        private: list(ref("cidr"), "Only encrypted: an on-demand tunnel to the fleet gateway covering the destination, else drop."),
        "private-or-clear": list(ref("cidr"), "Encrypted if a fleet gateway covers the destination, else clear."),
      },
    },
    gateway: {
      type: "object",
      additionalProperties: false,
      required: ["name", "addresses"],
      properties: {
        name: { type: "string", pattern: GATEWAY_NAME, description: "DNS label: [a-z0-9-], 1..63." },
        id: { type: "string", minLength: 1, description: "IKE identity (FQDN, IP, user@FQDN or a DN). Default: the first address." },
        addresses: list({ type: "string", minLength: 1 }, "Public (IKE) addresses. Host names are resolved by the controller at apply time; agents never do DNS.", { minItems: 1 }),
        subnets: list(ref("cidr"), "Subnets behind the gateway (leftsubnet). Empty: the gateway protects only itself."),
        labels: { type: "object", propertyNames: { pattern: "^[A-Za-z0-9._/-]{1,63}$" }, additionalProperties: { type: "string" }, description: "Free-form labels (site, region, ...)." },
        backend: { enum: ["xfrm", "userspace"], description: "Dataplane backend (default xfrm)." },
        policy_groups: ref("policyGroups"),
      },
    },
    connection: {
      type: "object",
      additionalProperties: false,
      properties: {
        name: { type: "string", pattern: CONN_NAME, description: "Connection name (pairs: required; mesh: prefix of the generated names <name>.<a>--<b>)." },
        gateways: list({ type: "string" }, "The two fleet gateways at the ends.", { minItems: 2, maxItems: 2 }),
        mesh: list({ type: "string" }, "Every pair of these gateways gets a connection named <a>--<b> (or <name>.<a>--<b>).", { minItems: 2, uniqueItems: true }),
        subnets: {
          type: "object",
          description: "Per-gateway override of the subnets used by this connection (default: the gateway's subnets).",
          additionalProperties: list(ref("cidr")),
        },
        ...connectionOptions,
      },
    },
    peer: {
      type: "object",
      additionalProperties: false,
      required: ["name", "gateway", "address"],
      properties: {
        name: { type: "string", pattern: CONN_NAME, description: "Connection name on the gateway." },
        gateway: { type: "string", description: "The fleet gateway that talks to this peer." },
        address: { type: "string", minLength: 1, description: "The peer's IKE address: IP, host name (resolved at apply time) or %any (accept any initiator)." },
        id: { type: "string", minLength: 1, description: "The peer's IKE identity (default: its address)." },
        psk: { type: "string", description: "Pre-shared key agreed with the peer's operator (auth psk): at least 20 random-looking characters. Sent to keymgr, never stored in the spec revision or any view." },
        ca: { type: "string", pattern: "-----BEGIN CERTIFICATE-----", description: "auth pubkey: accept only peer certificates from this CA (PEM)." },
        port: { type: "integer", minimum: 1, maximum: 65535, description: "The peer's IKE port (default 500)." },
        subnets: list(ref("cidr"), "Subnets behind the peer (rightsubnet). Empty: the peer itself."),
        local_subnets: list(ref("cidr"), "Local subnets for this peer (default: the gateway's subnets)."),
        manual: {
          type: "object",
          description: "Manual keying (no IKE), for imported FreeS/WAN manual connections: the SPI must be unique per gateway.",
          additionalProperties: false,
          required: ["spi"],
          properties: { spi: { anyOf: [{ type: "integer", minimum: 256, maximum: 4294967295 }, { type: "string", pattern: "^0x[0-9a-fA-F]{1,8}$" }] } },
        },
        ...connectionOptions,
      },
    },
  },
};

/** The schema as docs/fleet-spec.schema.json holds it. */
export function schemaJson(): string {
  return JSON.stringify(FLEET_SPEC_SCHEMA, null, 2) + "\n";
}

// `node schema.js --write FILE` regenerates the docs copy.
if (process.argv[1] && import.meta.url === new URL(`file://${process.argv[1]}`).href && process.argv[2] === "--write" && process.argv[3]) {
  const { writeFileSync } = await import("node:fs");
  writeFileSync(process.argv[3], schemaJson());
}
