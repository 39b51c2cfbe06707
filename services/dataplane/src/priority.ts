/**
 * Policy priorities from selector specificity, so "the most specific connection wins"
 * (XFRM: the lowest priority value wins among matching policies).
 *
 *   prefixBits  = (srcLen + dstLen) * (IPv4 ? 4 : 1)        0..256, IPv4 scaled to IPv6
 *   priority    = 100000 - 16 * prefixBits
 *                        - 4 * (protocol != 0)
 *                        - 2 * (srcPort != 0) - 2 * (dstPort != 0)
 *
 * Longer prefixes always win (one prefix bit = 16 > 8, everything else together); with
 * equal prefixes a protocol beats "any" and ports beat no ports. The range is
 * 95896..100000. IKE bypass policies use BYPASS_IKE_PRIORITY, below the whole range, so
 * negotiation is never itself encrypted or dropped. An explicit non-zero priority in the
 * request is used as given.
 */
import type { dataplane } from "@fleetswan/proto";
import { isIPv4 } from "node:net";

export const PRIORITY_BASE = 100000;
export const BYPASS_IKE_PRIORITY = 1000;

export function derivePriority(s: dataplane.Selector): number {
  const v4 = isIPv4(s.src?.address ?? "") || isIPv4(s.dst?.address ?? "");
  const prefixBits = ((s.src?.length ?? 0) + (s.dst?.length ?? 0)) * (v4 ? 4 : 1);
  return PRIORITY_BASE - 16 * prefixBits - (s.protocol ? 4 : 0) - (s.srcPort ? 2 : 0) - (s.dstPort ? 2 : 0);
}

export function effectivePriority(p: dataplane.Policy): number {
  return p.priority || derivePriority(p.selector!);
}
