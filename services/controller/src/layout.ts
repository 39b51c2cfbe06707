/**
 * Subjects and KV buckets of the control plane (docs/nats-layout.md is the contract;
 * keymgr and the agents use the same names).
 */
import { SUBJECT_PREFIX } from "@fleetswan/common";

export const BUCKET = {
  /** Key "spec": the fleet spec revisions (SpecRecord JSON). Written by the controller only. */
  spec: "fleet-spec",
  /** Key "<gateway>": fleet.v1.GatewayView (protobuf). Written by the controller; each agent reads its own. */
  views: "fleet-views",
  /** Key "<gateway>": the latest fleet.v1.AgentStatus (protobuf) as received. */
  status: "fleet-status",
  /** Key "<gateway>": JSON, the last failure per connection from AgentEvents. */
  events: "fleet-events",
  /** Key "<gateway>": JSON EnrollTicket (hash of a one-time token). Read and deleted by keymgr. */
  enroll: "fleet-enroll",
  /** Key "<gateway>": JSON CertRecord, the gateway certificate the controller got from keymgr. */
  certs: "fleet-certs",
  /** Key "<secret name>": JSON {secret, since, revision}, when the spec stopped using a keymgr secret (deleted after the grace period). */
  orphans: "fleet-orphans",
} as const;

export const SPEC_KEY = "spec";

export const subjects = {
  controllerApi: (method: string) => `${SUBJECT_PREFIX}.api.controller.${method}`,
  controllerApiAll: `${SUBJECT_PREFIX}.api.controller.>`,
  keymgrApi: (method: string) => `${SUBJECT_PREFIX}.api.keymgr.${method}`,
  status: (gw: string) => `${SUBJECT_PREFIX}.gw.${gw}.status`,
  statusAll: `${SUBJECT_PREFIX}.gw.*.status`,
  events: (gw: string) => `${SUBJECT_PREFIX}.gw.${gw}.events`,
  eventsAll: `${SUBJECT_PREFIX}.gw.*.events`,
  command: (gw: string) => `${SUBJECT_PREFIX}.gw.${gw}.cmd`,
};

export const CONTROLLER_QUEUE = "controller";

/** The controller's record of one spec revision (value of fleet-spec/spec). */
export interface SpecRecord {
  format: 1;
  /** The spec as applied, with operator-supplied PSKs replaced by "@keymgr". */
  yaml: string;
  source: string;
  appliedAt: string;
  /** The revision the apply was based on (0 = first). */
  base: number;
  /** Host names resolved at apply time (agents never do DNS). */
  resolved: Record<string, string[]>;
  /** See render.ts RenderState (r = 0: this record's revision). */
  state: import("./render.js").RenderState;
  /** secret_ref -> fingerprint of the operator-supplied PSK last stored in keymgr. */
  psks: Record<string, string>;
}

/** Value of fleet-enroll/<gateway>. */
export interface EnrollTicket {
  gateway: string;
  /** SHA-256 (hex) of the UTF-8 token; the token itself is never stored. */
  token_sha256: string;
  created_at: string;
  expires_at: string;
}

/**
 * Value of fleet-certs/<gateway>: the certificate keymgr issued for the gateway (its
 * private key is keymgr's secret cert.<gateway>, sealed to the gateway only). Written by
 * the controller with compare-and-set; `claim` marks an issuance in progress so that two
 * replicas do not both ask keymgr.
 */
export interface CertRecord {
  gateway: string;
  /** Leaf certificate (PEM); empty before the first issuance completed. */
  certificatePem: string;
  /** The fleet CA (PEM). */
  caPem: string;
  notAfter: string;
  issuedAt: string;
  validDays: number;
  dnsNames: string[];
  ipAddresses: string[];
  /** Version of keymgr's secret cert.<gateway> right after issuance (a keymgr-side renewal or rotation changes it). */
  keymgrVersion: number;
  claim?: { until: string };
}
