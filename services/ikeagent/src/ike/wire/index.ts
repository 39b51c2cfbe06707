/**
 * IKEv2 wire format (RFC 7296 §3, RFC 7383): the public surface. Pure code, no I/O.
 *
 *   decodeMessage(bytes)            -> header + payloads (SK/SKF left encrypted)
 *   openMessage(msg, cipher)        -> payloads with the SK contents decrypted and decoded
 *   openFragment(msg, cipher)       -> one decrypted SKF fragment for FragmentReassembler
 *   encodeMessage(header, payloads) -> cleartext message (IKE_SA_INIT)
 *   sealMessage(header, inner, cipher) / sealMaybeFragmented(...) -> protected message(s)
 */
export * from "./constants.js";
export * from "./errors.js";
export * from "./payloads.js";
export * from "./message.js";
export * from "./fragment.js";
export { Reader, Writer } from "./reader.js";
