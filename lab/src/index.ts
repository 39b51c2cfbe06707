/**
 * fleetswan-lab as a library (docs/lab.md): the e2e tests in test/e2e build the very same
 * fleet as `./fleetswan-lab up`.
 */
export * from "./model.js";
export * from "./spec.js";
export * from "./strongswan.js";
export * from "./topology.js";
export * from "./traffic.js";
export * from "./lab.js";
export * from "./prometheus.js";
export { run, inNs, sleep, waitFor, isAlive, readPid, makeStepper, CommandError, type RunResult } from "./util.js";
export const LAB_VERSION = "0.1.0";
