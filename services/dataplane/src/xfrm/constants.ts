/**
 * XFRM netlink constants, from the kernel's include/uapi/linux/xfrm.h and
 * include/uapi/linux/netlink.h. Plain `as const` objects (no TS enums) so unknown values
 * survive decoding.
 */

/** NETLINK_XFRM protocol number for socket(AF_NETLINK, SOCK_RAW, NETLINK_XFRM). */
export const NETLINK_XFRM = 6;

/** struct nlmsghdr flags (netlink.h). */
export const NLM_F = {
  REQUEST: 0x1,
  MULTI: 0x2,
  ACK: 0x4,
  ECHO: 0x8,
  /** GET: ROOT|MATCH. */
  DUMP: 0x300,
  /** NEW: replace existing. */
  REPLACE: 0x100,
  EXCL: 0x200,
  CREATE: 0x400,
} as const;

/** Netlink control message types (netlink.h). */
export const NLMSG = {
  NOOP: 1,
  ERROR: 2,
  DONE: 3,
  OVERRUN: 4,
} as const;

/** enum XFRM_MSG_* (xfrm.h), starting at XFRM_MSG_BASE = 0x10. */
export const XFRM_MSG = {
  NEWSA: 0x10,
  DELSA: 0x11,
  GETSA: 0x12,
  NEWPOLICY: 0x13,
  DELPOLICY: 0x14,
  GETPOLICY: 0x15,
  ALLOCSPI: 0x16,
  ACQUIRE: 0x17,
  EXPIRE: 0x18,
  UPDPOLICY: 0x19,
  UPDSA: 0x1a,
  POLEXPIRE: 0x1b,
  FLUSHSA: 0x1c,
  FLUSHPOLICY: 0x1d,
  NEWAE: 0x1e,
  GETAE: 0x1f,
  REPORT: 0x20,
  MIGRATE: 0x21,
  NEWSADINFO: 0x22,
  GETSADINFO: 0x23,
  NEWSPDINFO: 0x24,
  GETSPDINFO: 0x25,
  MAPPING: 0x26,
} as const;

/** Name of an XFRM/netlink message type, for errors and logs. */
export function msgTypeName(type: number): string {
  for (const [k, v] of Object.entries(XFRM_MSG)) if (v === type) return `XFRM_MSG_${k}`;
  for (const [k, v] of Object.entries(NLMSG)) if (v === type) return `NLMSG_${k}`;
  return `type ${type}`;
}

/** enum xfrm_attr_type_t (xfrm.h). */
export const XFRMA = {
  UNSPEC: 0,
  ALG_AUTH: 1,
  ALG_CRYPT: 2,
  ALG_COMP: 3,
  ENCAP: 4,
  TMPL: 5,
  SA: 6,
  POLICY: 7,
  SEC_CTX: 8,
  LTIME_VAL: 9,
  REPLAY_VAL: 10,
  REPLAY_THRESH: 11,
  ETIMER_THRESH: 12,
  SRCADDR: 13,
  COADDR: 14,
  LASTUSED: 15,
  POLICY_TYPE: 16,
  MIGRATE: 17,
  ALG_AEAD: 18,
  KMADDRESS: 19,
  ALG_AUTH_TRUNC: 20,
  MARK: 21,
  TFCPAD: 22,
  REPLAY_ESN_VAL: 23,
  SA_EXTRA_FLAGS: 24,
  PROTO: 25,
  ADDRESS_FILTER: 26,
  PAD: 27,
  OFFLOAD_DEV: 28,
  SET_MARK: 29,
  SET_MARK_MASK: 30,
  IF_ID: 31,
  MTIMER_THRESH: 32,
} as const;

/** Multicast groups (enum xfrm_nlgroups). Join with addMembership(group). */
export const XFRMNLGRP = {
  ACQUIRE: 1,
  EXPIRE: 2,
  SA: 3,
  POLICY: 4,
  AEVENTS: 5,
  REPORT: 6,
  MIGRATE: 7,
  MAPPING: 8,
} as const;

/** XFRM_POLICY_IN/OUT/FWD. */
export const XFRM_POLICY_DIR = { IN: 0, OUT: 1, FWD: 2 } as const;
/** xfrm_userpolicy_info.action. */
export const XFRM_POLICY_ACTION = { ALLOW: 0, BLOCK: 1 } as const;
/** xfrm_userpolicy_info.flags. */
export const XFRM_POLICY_FLAG = { LOCALOK: 1, ICMP: 2 } as const;
/** XFRM_MODE_*. */
export const XFRM_MODE = { TRANSPORT: 0, TUNNEL: 1, ROUTEOPTIMIZATION: 2, IN_TRIGGER: 3, BEET: 4 } as const;
/** XFRM_SHARE_*. */
export const XFRM_SHARE = { ANY: 0, SESSION: 1, USER: 2, UNIQUE: 3 } as const;
/** xfrm_usersa_info.flags. */
export const XFRM_STATE = {
  NOECN: 1,
  DECAP_DSCP: 2,
  NOPMTUDISC: 4,
  WILDRECV: 8,
  ICMP: 16,
  AF_UNSPEC: 32,
  ALIGN4: 64,
  ESN: 128,
} as const;
/** XFRMA_SA_EXTRA_FLAGS bits. */
export const XFRM_SA_XFLAG = { DONT_ENCAP_DSCP: 1, OSEQ_MAY_WRAP: 2 } as const;
/** xfrm_encap_tmpl.encap_type (linux/udp.h). */
export const UDP_ENCAP = { ESPINUDP_NON_IKE: 1, ESPINUDP: 2 } as const;
/** XFRM_INF: no limit in xfrm_lifetime_cfg. */
export const XFRM_INF = 0xffffffffffffffffn;

export const AF_INET = 2;
export const AF_INET6 = 10;
export const IPPROTO_ESP = 50;
export const IPPROTO_TCP = 6;
export const IPPROTO_UDP = 17;
export const IPPROTO_SCTP = 132;

/** struct sizes on Linux (x86_64, aarch64: identical for these structs). */
export const SIZE = {
  nlmsghdr: 16,
  nlattr: 4,
  address: 16,
  selector: 56,
  id: 24,
  lifetimeCfg: 64,
  lifetimeCur: 32,
  usersaInfo: 224,
  usersaId: 24,
  userspiInfo: 232,
  userpolicyInfo: 168,
  userpolicyId: 64,
  userTmpl: 64,
  encapTmpl: 24,
  userAcquire: 280,
  userExpire: 232,
  userPolexpire: 176,
  usersaFlush: 1,
  algo: 68,
  algoAuth: 72,
  algoAead: 72,
  replayStateEsn: 24,
  replayState: 12,
  mark: 8,
  addressFilter: 36,
  nlmsgerr: 20,
} as const;
