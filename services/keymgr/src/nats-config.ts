/**
 * NATS server authorization for a fleet (docs/security.md): one user per gateway,
 * confined to its own subjects and KV keys, plus the controller, keymgr and operator
 * users. Renders the `authorization { users: [...] }` block of nats-server.conf
 * (deploy/nats/ has a rendered example; tests use this function).
 *
 * JetStream on nats-server 2.9: a gateway reads its KV keys only through consumers it
 * creates with the filtered create subject
 *   $JS.API.CONSUMER.CREATE.<stream>.<consumer>.<filter>
 * (the server refuses a request whose body's filter differs from the subject's), so
 * permissions can name the filter. The unfiltered $JS.API.CONSUMER.CREATE.<stream>
 * (which nats.js ordered consumers use when they reset) would allow any filter: it is
 * not granted, and the agent uses its own filtered consumers instead of kv.watch().
 */
import { BUCKET, GATEWAY_RE, kvStream } from "./layout.js";

export interface NatsCredential {
  user: string;
  /** Plain or bcrypt ("$2a$...") password. */
  password?: string;
  /** NKEY public key ("U..."); used instead of user/password. */
  nkey?: string;
}

export interface FleetAuthSpec {
  gateways: Array<{ name: string; password?: string; nkey?: string }>;
  controller?: NatsCredential;
  keymgr?: NatsCredential;
  /** Operators' CLI (`fleetswan secrets`): keymgr API only. */
  operator?: NatsCredential;
  /** Unrestricted (bootstrap and tests only). */
  admin?: NatsCredential;
}

export interface Permissions {
  publish: { allow?: string[]; deny?: string[] };
  subscribe: { allow?: string[]; deny?: string[] };
  allowResponses?: boolean;
}

/** Subjects a gateway may use: its view, its sealed secrets, its status/events/commands, enrollment. */
export function gatewayPermissions(gw: string): Permissions {
  if (!GATEWAY_RE.test(gw)) throw new Error(`gateway name "${gw}" is not a DNS label`);
  const views = kvStream(BUCKET.views);
  const secrets = kvStream(BUCKET.secrets);
  return {
    publish: {
      allow: [
        "fleet.v1.enroll",
        `fleet.v1.gw.${gw}.status`,
        `fleet.v1.gw.${gw}.events`,
        // Filtered consumers on its own keys only (the filter is part of the subject).
        `$JS.API.CONSUMER.CREATE.${views}.*.$KV.${BUCKET.views}.${gw}`,
        `$JS.API.CONSUMER.CREATE.${secrets}.*.$KV.${BUCKET.secrets}.${gw}.>`,
        // Direct reads of its own keys (last message by subject).
        `$JS.API.DIRECT.GET.${views}.$KV.${BUCKET.views}.${gw}`,
        `$JS.API.DIRECT.GET.${secrets}.$KV.${BUCKET.secrets}.${gw}.>`,
      ],
    },
    subscribe: {
      allow: [`_INBOX.${gw}.>`, `fleet.v1.gw.${gw}.cmd`],
    },
    // Reply to the controller's command requests without a general _INBOX.> grant.
    allowResponses: true,
  };
}

const KEYS_DENY = [
  `$KV.${BUCKET.keys}.>`,
  `$JS.API.*.*.${kvStream(BUCKET.keys)}`,
  `$JS.API.*.*.${kvStream(BUCKET.keys)}.>`,
  `$JS.API.*.*.*.${kvStream(BUCKET.keys)}`,
  `$JS.API.*.*.*.${kvStream(BUCKET.keys)}.>`,
];

/** The controller: fleet subjects, JetStream, every bucket except fleet-keys. */
export function controllerPermissions(): Permissions {
  return {
    publish: { allow: ["fleet.>", "$JS.API.>", "$JS.FC.>", "$JS.ACK.>", "$KV.>", "_INBOX.>"], deny: [...KEYS_DENY, `$KV.${BUCKET.secrets}.>`, `$KV.${BUCKET.agents}.>`] },
    subscribe: { allow: ["fleet.>", "_INBOX.>", "$KV.>"], deny: [`$KV.${BUCKET.keys}.>`] },
  };
}

/** keymgr: its API and enrollment, its buckets, and replies. */
export function keymgrPermissions(): Permissions {
  const own = [BUCKET.keys, BUCKET.agents, BUCKET.secrets, BUCKET.enroll].map((b) => `$KV.${b}.>`);
  return {
    publish: { allow: ["$JS.API.>", "$JS.FC.>", "$JS.ACK.>", ...own] },
    subscribe: { allow: ["fleet.v1.enroll", "fleet.v1.api.keymgr.>", "_INBOX.keymgr.>"] },
    allowResponses: true,
  };
}

/** The operator CLI: requests to the controller and keymgr APIs only. */
export function operatorPermissions(): Permissions {
  return { publish: { allow: ["fleet.v1.api.controller.>", "fleet.v1.api.keymgr.>"] }, subscribe: { allow: ["_INBOX.operator.>"] } };
}

const q = (s: string) => JSON.stringify(s);
const list = (xs: string[]) => `[${xs.map(q).join(", ")}]`;

function renderPermissions(p: Permissions): string {
  const part = (name: string, x: { allow?: string[]; deny?: string[] }) => {
    const f: string[] = [];
    if (x.allow) f.push(`allow: ${list(x.allow)}`);
    if (x.deny) f.push(`deny: ${list(x.deny)}`);
    return `${name}: { ${f.join(", ")} }`;
  };
  const fields = [part("publish", p.publish), part("subscribe", p.subscribe)];
  if (p.allowResponses) fields.push("allow_responses: true");
  return `{ ${fields.join(", ")} }`;
}

function renderUser(c: NatsCredential, p: Permissions | undefined, comment: string): string {
  const id = c.nkey ? `nkey: ${q(c.nkey)}` : `user: ${q(c.user)}, password: ${q(c.password ?? "")}`;
  return `    # ${comment}\n    { ${id}${p ? `, permissions: ${renderPermissions(p)}` : ""} }`;
}

/** The `authorization { users: [...] }` block for nats-server.conf. */
export function renderFleetAuthorization(spec: FleetAuthSpec): string {
  const users: string[] = [];
  if (spec.admin) users.push(renderUser(spec.admin, undefined, "admin: unrestricted (bootstrap only)"));
  if (spec.controller) users.push(renderUser(spec.controller, controllerPermissions(), "controller"));
  if (spec.keymgr) users.push(renderUser(spec.keymgr, keymgrPermissions(), "keymgr"));
  if (spec.operator) users.push(renderUser(spec.operator, operatorPermissions(), "operator CLI"));
  for (const g of spec.gateways) {
    const cred: NatsCredential = { user: g.name };
    if (g.password !== undefined) cred.password = g.password;
    if (g.nkey !== undefined) cred.nkey = g.nkey;
    users.push(renderUser(cred, gatewayPermissions(g.name), `gateway ${g.name}`));
  }
  return `authorization {\n  users: [\n${users.join("\n")}\n  ]\n}\n`;
}
