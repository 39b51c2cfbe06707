/**
 * Generated protobuf types and gRPC service definitions (ts-proto), one namespace per
 * API. Regenerate with `npm run proto:gen`; `npm run proto:check` verifies the
 * committed code matches proto/.
 */
export * as dataplane from "./gen/fleetswan/dataplane/v1/dataplane.js";
export * as ikeagent from "./gen/fleetswan/ikeagent/v1/ikeagent.js";
export * as fleet from "./gen/fleetswan/fleet/v1/fleet.js";
export * as controller from "./gen/fleetswan/controller/v1/controller.js";
export * as keymgr from "./gen/fleetswan/keymgr/v1/keymgr.js";
