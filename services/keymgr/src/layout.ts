/**
 * The NATS subjects and KV buckets keymgr uses (docs/nats-layout.md is the full list;
 * docs/keymgr.md describes the record formats).
 */
export const BUCKET = {
  /** Secrets at rest, encrypted with the master key. keymgr only. */
  keys: "fleet-keys",
  /** Enrolled agents' X25519 public keys, key "<gateway>". keymgr writes. */
  agents: "fleet-agents",
  /** Sealed secrets, key "<gateway>.<secret_ref>". keymgr writes, each agent reads its own. */
  secrets: "fleet-secrets",
  /** One-time enrollment token hashes, key "<gateway>". The controller writes, keymgr consumes. */
  enroll: "fleet-enroll",
  /** Per-gateway views, key "<gateway>". The controller writes, each agent reads its own. */
  views: "fleet-views",
} as const;

export const SUBJECT = {
  enroll: "fleet.v1.enroll",
  api: (method: string) => `fleet.v1.api.keymgr.${method}`,
  apiAll: "fleet.v1.api.keymgr.*",
  gw: (gateway: string) => `fleet.v1.gw.${gateway}`,
} as const;

export const QUEUE_GROUP = "keymgr";

/** Gateway names are DNS labels (fleet.proto GatewayView.gateway). */
export const GATEWAY_RE = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;
/** Secret names are KV-key safe: letters, digits, '.', '_', '-' (no leading/trailing dot). */
export const SECRET_NAME_RE = /^[A-Za-z0-9_-]([A-Za-z0-9._-]{0,126}[A-Za-z0-9_-])?$/;

/** Stream name behind a KV bucket. */
export const kvStream = (bucket: string) => `KV_${bucket}`;
