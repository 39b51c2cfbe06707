/**
 * IKEv2 crypto (node:crypto only, no I/O): key exchange, prf/prf+ and key derivation,
 * SK payload protection, AUTH, NAT-D and cookies. Key material is returned as Buffers;
 * wrap it in Secret (@fleetswan/common) when storing and never log it.
 */
export * from "./algorithms.js";
export * from "./prf.js";
export * from "./dh.js";
export * from "./sk.js";
export * from "./auth.js";
export * from "./natd.js";
export * from "./cookie.js";
