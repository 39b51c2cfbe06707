/**
 * Builders for the XFRM requests the backend sends, from API types. Flags follow
 * iproute2 (REQUEST|ACK for changes, REQUEST for GETs, REQUEST|DUMP for dumps) so the
 * golden captures compare byte for byte; the kernel answers every ACK'd request with an
 * NLMSG_ERROR (errno 0 = success).
 */
import type { dataplane } from "@fleetswan/proto";
import type { PolicyKey } from "../backend.js";
import { canonicalAddress, familyOf } from "./addr.js";
import { IPPROTO_ESP, NLM_F, XFRM_MODE, XFRM_MSG } from "./constants.js";
import { type XfrmMessage, emptySelector, zeroLifetimeCur } from "./codec.js";
import { dirToXfrm, policyToXfrm, saToXfrm, selectorToXfrm } from "./translate.js";

const CHANGE = NLM_F.REQUEST | NLM_F.ACK;

function msg(type: number, flags: number, seq: number, body: XfrmMessage["body"]): XfrmMessage {
  return { type, flags, seq, pid: 0, body };
}

export const requests = {
  /** XFRM_MSG_NEWSA (or UPDSA with update=true). */
  addSa(sa: dataplane.SecurityAssociation, seq: number, update = false): XfrmMessage {
    return msg(update ? XFRM_MSG.UPDSA : XFRM_MSG.NEWSA, CHANGE, seq, { kind: "sa", ...saToXfrm(sa) });
  },
  delSa(id: dataplane.SaId, src: string, seq: number): XfrmMessage {
    return msg(XFRM_MSG.DELSA, CHANGE, seq, saIdBody(id, src));
  },
  getSa(id: dataplane.SaId, src: string, seq: number): XfrmMessage {
    return msg(XFRM_MSG.GETSA, NLM_F.REQUEST, seq, saIdBody(id, src));
  },
  dumpSas(seq: number): XfrmMessage {
    return msg(XFRM_MSG.GETSA, NLM_F.REQUEST | NLM_F.DUMP, seq, { kind: "bare", attrs: {} });
  },
  /** XFRM_MSG_FLUSHSA for ESP. Flushes everything, not only ours: tests and scratch netns only. */
  flushSas(seq: number): XfrmMessage {
    return msg(XFRM_MSG.FLUSHSA, CHANGE, seq, { kind: "flushSa", proto: IPPROTO_ESP });
  },
  /** XFRM_MSG_ALLOCSPI: a larval SA for (src -> dst, ESP) with an SPI in [min, max]. */
  allocSpi(p: { src: string; dst: string; reqid: number; min: number; max: number }, seq: number): XfrmMessage {
    const family = familyOf(p.dst);
    return msg(XFRM_MSG.ALLOCSPI, NLM_F.REQUEST, seq, {
      kind: "allocSpi",
      info: {
        sel: emptySelector(0),
        id: { daddr: canonicalAddress(p.dst), spi: 0, proto: IPPROTO_ESP },
        saddr: canonicalAddress(p.src),
        lft: { softByteLimit: 0n, hardByteLimit: 0n, softPacketLimit: 0n, hardPacketLimit: 0n, softAddExpiresSeconds: 0n, hardAddExpiresSeconds: 0n, softUseExpiresSeconds: 0n, hardUseExpiresSeconds: 0n },
        curlft: zeroLifetimeCur(),
        stats: { replayWindow: 0, replay: 0, integrityFailed: 0 },
        seq: 0,
        reqid: p.reqid >>> 0,
        family,
        mode: XFRM_MODE.TUNNEL,
        replayWindow: 0,
        flags: 0,
      },
      min: p.min >>> 0,
      max: p.max >>> 0,
      attrs: {},
    });
  },
  /** XFRM_MSG_UPDPOLICY inserts or replaces (idempotent); NEWPOLICY with update=false. */
  addPolicy(p: dataplane.Policy, seq: number, update = true): XfrmMessage {
    return msg(update ? XFRM_MSG.UPDPOLICY : XFRM_MSG.NEWPOLICY, CHANGE, seq, { kind: "policy", ...policyToXfrm(p) });
  },
  delPolicy(key: PolicyKey, seq: number): XfrmMessage {
    return msg(XFRM_MSG.DELPOLICY, CHANGE, seq, policyIdBody(key));
  },
  getPolicy(key: PolicyKey, seq: number): XfrmMessage {
    return msg(XFRM_MSG.GETPOLICY, NLM_F.REQUEST, seq, policyIdBody(key));
  },
  dumpPolicies(seq: number): XfrmMessage {
    return msg(XFRM_MSG.GETPOLICY, NLM_F.REQUEST | NLM_F.DUMP, seq, { kind: "bare", attrs: {} });
  },
  /** XFRM_MSG_FLUSHPOLICY. Flushes everything: tests and scratch netns only (we prune by owner). */
  flushPolicies(seq: number): XfrmMessage {
    return msg(XFRM_MSG.FLUSHPOLICY, CHANGE, seq, { kind: "bare", attrs: {} });
  },
};

function saIdBody(id: dataplane.SaId, src: string): XfrmMessage["body"] {
  return {
    kind: "saId",
    id: { daddr: canonicalAddress(id.dst), spi: id.spi >>> 0, family: familyOf(id.dst), proto: id.protocol || IPPROTO_ESP },
    attrs: src ? { srcaddr: canonicalAddress(src) } : {},
  };
}

function policyIdBody(key: PolicyKey): XfrmMessage["body"] {
  return {
    kind: "policyId",
    id: { sel: selectorToXfrm(key.selector, "policy key"), index: 0, dir: dirToXfrm(key.direction, "policy key") },
    attrs: key.mark ? { mark: { value: key.mark, mask: 0xffffffff } } : {},
  };
}
