// TUN offloads: checksum helpers, TSO segmentation and GRO-like coalescing. See tun-offload.h.
#include "tun-offload.h"

#include <arpa/inet.h>

namespace fsesp {

uint64_t CsumPartial(const uint8_t* p, size_t n, uint64_t acc) {
  // 32-bit native words into a 64-bit accumulator: no carry is lost below 2^32 words
  while (n >= 32) {
    uint32_t w[8];
    memcpy(w, p, 32);
    acc += uint64_t(w[0]) + w[1] + w[2] + w[3] + w[4] + w[5] + w[6] + w[7];
    p += 32;
    n -= 32;
  }
  while (n >= 4) {
    uint32_t w;
    memcpy(&w, p, 4);
    acc += w;
    p += 4;
    n -= 4;
  }
  if (n >= 2) {
    uint16_t w;
    memcpy(&w, p, 2);
    acc += w;
    p += 2;
    n -= 2;
  }
  if (n == 1) {
    // a last odd octet is the first octet of a 16-bit word padded with zero (RFC 1071)
    const uint8_t b[2] = {p[0], 0};
    uint16_t w;
    memcpy(&w, b, 2);
    acc += w;
  }
  return acc;
}

uint16_t CsumFold(uint64_t acc) {
  while (acc >> 16) acc = (acc & 0xffff) + (acc >> 16);
  return static_cast<uint16_t>(acc);
}

uint64_t PseudoHeaderSum(const uint8_t* ip, uint8_t proto, uint32_t len) {
  uint64_t acc;
  if ((ip[0] >> 4) == 4) {
    acc = CsumPartial(ip + 12, 8, 0);  // source, destination
    acc += htons(proto);
    acc += htons(static_cast<uint16_t>(len));
  } else {
    acc = CsumPartial(ip + 8, 32, 0);
    const uint32_t l = htonl(len), p = htonl(proto);
    acc = CsumPartial(reinterpret_cast<const uint8_t*>(&l), 4, acc);
    acc = CsumPartial(reinterpret_cast<const uint8_t*>(&p), 4, acc);
  }
  return acc;
}

bool CompleteChecksum(uint8_t* pkt, size_t len, uint16_t csumStart, uint16_t csumOffset) {
  if (static_cast<size_t>(csumStart) + csumOffset + 2 > len) return false;
  uint16_t c = static_cast<uint16_t>(~CsumFold(CsumPartial(pkt + csumStart, len - csumStart, 0)));
  if (c == 0) c = 0xffff;  // same value in one's complement; 0 would mean "no checksum" for UDP
  memcpy(pkt + csumStart + csumOffset, &c, 2);
  return true;
}

bool ParseTcp(const uint8_t* pkt, size_t len, TcpLayout* l) {
  if (len < 20) return false;
  const int ver = pkt[0] >> 4;
  if (ver == 4) {
    l->ipLen = static_cast<size_t>(pkt[0] & 15) * 4;
    if (l->ipLen < 20 || pkt[9] != 6) return false;
    if (((pkt[6] & 0x3f) | pkt[7]) != 0) return false;  // MF or a fragment offset
    const size_t total = (static_cast<size_t>(pkt[2]) << 8) | pkt[3];
    // a super-packet of more than 64 KiB cannot state its length; otherwise it must match
    if (len <= 0xffff && total != len) return false;
  } else if (ver == 6) {
    l->ipLen = 40;
    if (len < 40 || pkt[6] != 6) return false;  // extension headers: not ours to split
    const size_t plen = (static_cast<size_t>(pkt[4]) << 8) | pkt[5];
    if (len <= 0xffff + 40 && plen != len - 40) return false;
  } else {
    return false;
  }
  if (len < l->ipLen + 20) return false;
  l->tcpLen = static_cast<size_t>(pkt[l->ipLen + 12] >> 4) * 4;
  if (l->tcpLen < 20 || len < l->ipLen + l->tcpLen) return false;
  l->hdrLen = l->ipLen + l->tcpLen;
  l->payload = len - l->hdrLen;
  return true;
}

namespace {

uint32_t Be32(const uint8_t* p) { return (uint32_t(p[0]) << 24) | (uint32_t(p[1]) << 16) | (uint32_t(p[2]) << 8) | p[3]; }

// A segment that may join (or start) a run: plain TCP, only ACK (and PSH), some payload,
// and a TCP checksum that verifies (the kernel will not check it again).
bool Candidate(const uint8_t* p, size_t len, TcpLayout* l) {
  if (!ParseTcp(p, len, l) || l->payload == 0) return false;
  const uint8_t flags = p[l->ipLen + 13];
  if ((flags & ~0x08) != 0x10) return false;  // ACK, optionally PSH; no SYN/FIN/RST/URG/ECE/CWR
  const uint32_t tcpLen = static_cast<uint32_t>(len - l->ipLen);
  return CsumFold(CsumPartial(p + l->ipLen, tcpLen, PseudoHeaderSum(p, 6, tcpLen))) == 0xffff;
}

// Same flow and same headers apart from lengths, IPv4 ID/checksum, sequence number, PSH and
// the TCP checksum.
bool SameHeaders(const uint8_t* a, const TcpLayout& la, const uint8_t* b, const TcpLayout& lb) {
  if (la.ipLen != lb.ipLen || la.tcpLen != lb.tcpLen) return false;
  if ((a[0] >> 4) == 4) {
    if (a[0] != b[0] || a[1] != b[1]) return false;        // version/IHL, TOS
    if (memcmp(a + 6, b + 6, 4) != 0) return false;        // flags/fragment, TTL, protocol
    if (memcmp(a + 12, b + 12, la.ipLen - 12) != 0) return false;  // addresses, options
  } else {
    if (memcmp(a, b, 4) != 0) return false;                // traffic class, flow label
    if (memcmp(a + 6, b + 6, 34) != 0) return false;       // next header, hop limit, addresses
  }
  const uint8_t* ta = a + la.ipLen;
  const uint8_t* tb = b + lb.ipLen;
  if (memcmp(ta, tb, 4) != 0) return false;                // ports
  if (memcmp(ta + 8, tb + 8, 5) != 0) return false;        // ACK number, data offset
  if (((ta[13] ^ tb[13]) & ~0x08) != 0) return false;      // flags apart from PSH
  if (memcmp(ta + 14, tb + 14, 2) != 0) return false;      // window
  return memcmp(ta + 20, tb + 20, la.tcpLen - 20) == 0;    // options (timestamps)
}

}  // namespace

void CoalesceRun(uint8_t* const* packets, const size_t* lens, size_t n, Coalesced* out) {
  out->count = 1;
  TcpLayout l0;
  if (n < 2 || !Candidate(packets[0], lens[0], &l0)) return;
  const uint8_t* p0 = packets[0];
  if (p0[l0.ipLen + 13] & 0x08) return;  // PSH ends a run
  const size_t gso = l0.payload;
  size_t total = lens[0];
  uint32_t next = Be32(p0 + l0.ipLen + 4) + static_cast<uint32_t>(gso);
  size_t k = 1;
  bool psh = false;
  while (k < n && k < 64) {
    TcpLayout l;
    const uint8_t* q = packets[k];
    if (!Candidate(q, lens[k], &l) || l.payload > gso || !SameHeaders(p0, l0, q, l)) break;
    if (Be32(q + l.ipLen + 4) != next || total + l.payload > 0xffff) break;
    total += l.payload;
    next += static_cast<uint32_t>(l.payload);
    psh = (q[l.ipLen + 13] & 0x08) != 0;
    k++;
    if (psh || l.payload < gso) break;  // a short or PSH segment is the last one
  }
  if (k < 2) return;
  out->count = k;
  out->hdrLen = l0.hdrLen;
  uint8_t* h = out->hdr;
  memcpy(h, p0, l0.hdrLen);
  const bool v4 = (h[0] >> 4) == 4;
  if (v4) {
    h[2] = static_cast<uint8_t>(total >> 8);
    h[3] = static_cast<uint8_t>(total);
    h[10] = h[11] = 0;
    const uint16_t c = static_cast<uint16_t>(~CsumFold(CsumPartial(h, l0.ipLen, 0)));
    memcpy(h + 10, &c, 2);
  } else {
    h[4] = static_cast<uint8_t>((total - 40) >> 8);
    h[5] = static_cast<uint8_t>(total - 40);
  }
  uint8_t* t = h + l0.ipLen;
  if (psh) t[13] |= 0x08;
  // CHECKSUM_PARTIAL: the field holds the pseudo-header sum of the whole segment; the
  // kernel's GSO fixes it per segment if the packet is forwarded and split again.
  const uint32_t tcpLen = static_cast<uint32_t>(total - l0.ipLen);
  const uint16_t ps = CsumFold(PseudoHeaderSum(h, 6, tcpLen));
  memcpy(t + 16, &ps, 2);
  memset(&out->vnet, 0, sizeof(out->vnet));
  out->vnet.flags = VIRTIO_NET_HDR_F_NEEDS_CSUM;
  out->vnet.gso_type = v4 ? VIRTIO_NET_HDR_GSO_TCPV4 : VIRTIO_NET_HDR_GSO_TCPV6;
  out->vnet.hdr_len = static_cast<uint16_t>(l0.hdrLen);
  out->vnet.gso_size = static_cast<uint16_t>(gso);
  out->vnet.csum_start = static_cast<uint16_t>(l0.ipLen);
  out->vnet.csum_offset = 16;
}

}  // namespace fsesp
