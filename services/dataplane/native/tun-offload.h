// TUN offloads (IFF_VNET_HDR + TUNSETOFFLOAD): every read and write of the TUN device starts
// with a struct virtio_net_hdr. Reads may hold a TCP super-packet (TSO, up to 64 KiB) with a
// partial checksum, which we split into MTU-sized segments with full checksums before ESP
// (TcpSegment); writes may carry a run of consecutive segments of one TCP flow as one
// super-packet (GSO_TCPV4/6, NEEDS_CSUM), which the kernel's TCP takes in one go, like GRO
// (CoalesceRun). See docs/userspace-esp.md, "TUN offloads".
#pragma once
#include <stddef.h>
#include <stdint.h>
#include <string.h>

namespace fsesp {

// struct virtio_net_hdr of <linux/virtio_net.h> (which C++ cannot include: a member is called
// `class`); host byte order, as TUN uses it without TUNSETVNETLE/BE on little-endian hosts.
struct virtio_net_hdr {
  uint8_t flags;
  uint8_t gso_type;
  uint16_t hdr_len;
  uint16_t gso_size;
  uint16_t csum_start;
  uint16_t csum_offset;
};
constexpr uint8_t VIRTIO_NET_HDR_F_NEEDS_CSUM = 1;
constexpr uint8_t VIRTIO_NET_HDR_GSO_NONE = 0;
constexpr uint8_t VIRTIO_NET_HDR_GSO_TCPV4 = 1;
constexpr uint8_t VIRTIO_NET_HDR_GSO_TCPV6 = 4;
constexpr uint8_t VIRTIO_NET_HDR_GSO_ECN = 0x80;
static_assert(sizeof(virtio_net_hdr) == 10, "virtio_net_hdr is 10 octets");

// One's complement sum (RFC 1071) of n bytes in native word order, added to acc (not folded).
uint64_t CsumPartial(const uint8_t* p, size_t n, uint64_t acc);
// Fold a partial sum to 16 bits (native order, not complemented).
uint16_t CsumFold(uint64_t acc);
// Partial sum of the IPv4/IPv6 pseudo-header for protocol `proto` and upper-layer length `len`
// of the packet `ip` (version from its first nibble).
uint64_t PseudoHeaderSum(const uint8_t* ip, uint8_t proto, uint32_t len);

// Complete a VIRTIO_NET_HDR_F_NEEDS_CSUM packet: one's complement of the sum from csum_start
// to the end stored at csum_start + csum_offset (whose field holds the pseudo-header sum).
// False if the offsets are outside the packet.
bool CompleteChecksum(uint8_t* pkt, size_t len, uint16_t csumStart, uint16_t csumOffset);

// Header layout of a plain TCP packet (IPv4 without fragmentation, IPv6 without extension
// headers). False for anything else.
struct TcpLayout {
  size_t ipLen;   // IP header length
  size_t tcpLen;  // TCP header length incl. options
  size_t hdrLen;  // ipLen + tcpLen
  size_t payload; // TCP payload octets
};
bool ParseTcp(const uint8_t* pkt, size_t len, TcpLayout* l);

// Split a TSO super-packet (GSO_TCPV4/TCPV6 with gso_size) into segments of at most gsoSize
// payload octets, each with its own IP total length (and IPv4 ID + header checksum), TCP
// sequence number, flags (FIN/PSH only on the last, CWR only on the first) and a full TCP
// checksum. `alloc(len)` returns where the next segment goes. Returns the number of
// segments, or -1 if the packet is not a TCP packet we can split (the caller drops it).
template <class Alloc>
int TcpSegment(const uint8_t* pkt, size_t len, uint16_t gsoSize, Alloc alloc) {
  TcpLayout l;
  if (gsoSize == 0 || !ParseTcp(pkt, len, &l)) return -1;
  const bool v4 = (pkt[0] >> 4) == 4;
  const uint8_t* th = pkt + l.ipLen;
  const uint32_t seq0 = (uint32_t(th[4]) << 24) | (uint32_t(th[5]) << 16) | (uint32_t(th[6]) << 8) | th[7];
  const uint16_t id0 = v4 ? static_cast<uint16_t>((pkt[4] << 8) | pkt[5]) : 0;
  int nseg = 0;
  size_t off = 0;
  do {
    const size_t chunk = l.payload - off < gsoSize ? l.payload - off : gsoSize;
    const bool last = off + chunk >= l.payload;
    const size_t segLen = l.hdrLen + chunk;
    uint8_t* d = alloc(segLen);
    memcpy(d, pkt, l.hdrLen);
    memcpy(d + l.hdrLen, pkt + l.hdrLen + off, chunk);
    if (v4) {
      d[2] = static_cast<uint8_t>(segLen >> 8);
      d[3] = static_cast<uint8_t>(segLen);
      const uint16_t id = static_cast<uint16_t>(id0 + nseg);
      d[4] = static_cast<uint8_t>(id >> 8);
      d[5] = static_cast<uint8_t>(id);
      d[10] = d[11] = 0;
      const uint16_t c = static_cast<uint16_t>(~CsumFold(CsumPartial(d, l.ipLen, 0)));
      memcpy(d + 10, &c, 2);
    } else {
      const size_t pl = segLen - 40;
      d[4] = static_cast<uint8_t>(pl >> 8);
      d[5] = static_cast<uint8_t>(pl);
    }
    uint8_t* t = d + l.ipLen;
    const uint32_t seq = seq0 + static_cast<uint32_t>(off);
    t[4] = static_cast<uint8_t>(seq >> 24);
    t[5] = static_cast<uint8_t>(seq >> 16);
    t[6] = static_cast<uint8_t>(seq >> 8);
    t[7] = static_cast<uint8_t>(seq);
    if (!last) t[13] &= static_cast<uint8_t>(~0x09);  // FIN, PSH only on the last segment
    if (nseg > 0) t[13] &= static_cast<uint8_t>(~0x80);  // CWR only on the first
    t[16] = t[17] = 0;
    const uint32_t tcpLen = static_cast<uint32_t>(segLen - l.ipLen);
    uint16_t c = static_cast<uint16_t>(~CsumFold(CsumPartial(t, tcpLen, PseudoHeaderSum(d, 6, tcpLen))));
    memcpy(t + 16, &c, 2);
    nseg++;
    off += chunk;
  } while (off < l.payload);
  return nseg;
}

// A run of TCP segments to write as one super-packet.
struct Coalesced {
  virtio_net_hdr vnet;
  uint8_t hdr[120];  // IP + TCP header of the super-packet (max 60 + 60)
  size_t hdrLen;
  size_t count;      // packets in the run (1: write the first packet as it is)
};

// Starting at packets[0] (pointers + lengths, n of them), find the longest run (up to 64
// segments, 64 KiB) of in-order, full-sized segments of one TCP flow with identical headers
// except sequence number, IPv4 ID and PSH on the last one, each with a valid TCP checksum.
// Fills `out` with the super-packet's virtio header and rewritten IP/TCP header when the run
// holds more than one packet; out->count = 1 otherwise.
void CoalesceRun(uint8_t* const* packets, const size_t* lens, size_t n, Coalesced* out);

}  // namespace fsesp
