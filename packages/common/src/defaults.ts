/**
 * Ports, paths and names shared by all services. deploy/ manifests and docs/ are checked
 * against these values by tests, so change them here only.
 */
export const METRICS_PORT = {
  controller: 9741,
  keymgr: 9742,
  ikeagent: 9743,
  dataplane: 9744,
} as const;

/** The dataplane's gRPC Unix socket (mode 0600), shared with the local ikeagent only. */
export const DATAPLANE_SOCKET = "/run/fleetswan/dataplane.sock";
/** The ikeagent's local control socket (gRPC), used by `fleetswan conn|status` on the host. */
export const IKEAGENT_SOCKET = "/run/fleetswan/ikeagent.sock";
/** The agent's persistent state: enrollment key pair, last good view and sealed secrets. */
export const AGENT_STATE_DIR = "/var/lib/fleetswan";
export const CONFIG_DIR = "/etc/fleetswan";

/** IKE ports: RFC 7296 §2 (500) and RFC 3948 (4500, NAT traversal). */
export const IKE_PORT = 500;
export const NATT_PORT = 4500;

/** Default NATS URL of the embedded single-server deployment. */
export const DEFAULT_NATS_URL = "nats://127.0.0.1:4222";

/** Subject and KV layout version prefix; see docs/nats-layout.md. */
export const SUBJECT_PREFIX = "fleet.v1";
