import type { CliCommand } from "@fleetswan/common";
import { dataplaneCommand } from "./main.js";

export type * from "./backend.js";
export { OWNED_REQID_MIN, OWNED_REQID_MAX, isOwnedReqid, describeSaId, describePolicyKey } from "./backend.js";
export { Dataplane, ikeBypassPolicies } from "./reconcile.js";
export { derivePriority, BYPASS_IKE_PRIORITY } from "./priority.js";
export { startDataplaneServer, dataplaneClient } from "./server/grpc.js";
export { FakeBackend } from "./fake/index.js";

/** This service's `fleetswan` subcommands. */
export const commands: CliCommand[] = [dataplaneCommand];
