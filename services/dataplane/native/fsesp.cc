// fsesp: the few syscalls the userspace ESP backend needs and Node cannot do itself.
//
//   openTun(name)                 -> { fd, name, offload }   /dev/net/tun, TUNSETIFF IFF_TUN|IFF_NO_PI
//       |IFF_VNET_HDR, O_NONBLOCK, TUNSETOFFLOAD CSUM|TSO4|TSO6 (offload: true). With offloads the
//       fd is marked: its Poller splits TSO super-packets (tun-offload.h), write/writeBatch add
//       the virtio header and writeBatch coalesces TCP segments. FLEETSWAN_ESP_NO_GSO=1 or
//       FLEETSWAN_TUN_NO_OFFLOAD=1: plain TUN (offload: false).
//   tunStats() -> { reads, superPackets, segments, coalescedWrites, coalescedPackets, dropped }
//   tunSplit(packet, gsoSize) -> Buffer[] | null     TcpSegment on one super-packet (unit tests)
//   tunCoalesce(packets: Buffer[]) -> { count, vnet, header }   CoalesceRun (unit tests)
//   udpSocket(family, addr, port, encap) -> fd      non-blocking UDP socket, optional UDP_ENCAP_ESPINUDP
//   setUdpEncap(fd)                                  UDP_ENCAP_ESPINUDP on any UDP socket fd (xfrm backend)
//   localPort(fd) -> port                            getsockname (a socket bound to port 0)
//   rawEspSocket(family, bindAddr) -> fd             SOCK_RAW, IPPROTO_ESP (plain ESP, RFC 4303 over IP)
//   write(fd, buf) -> bytes                          one write(2) per packet (TUN)
//   sendTo(fd, buf, family, addrBytes, port) -> bytes
//   close(fd)
//   new Poller(fd, withAddr, maxBatch, callback)     uv_poll on fd; when readable, read until EAGAIN
//       (or maxBatch packets) and call callback(data: Buffer, meta: Uint32Array) once per batch.
//       `data` is the poller's long-lived arena: valid during the callback only (copy to keep).
//       meta holds 8 words per packet: offset, length, family (4/6/0), port, address (4 words,
//       raw network-order bytes). Methods: start(), stop(), close().
//
//   writeBatch(fd, data, offLen, n) -> packets written   one write(2) per packet, one JS call
//
// ESP crypto for batches (see esp-native.cc and src/userspace/esp-native.ts): espSaCreate,
// espSaFree, espSeal, espSealSend (seal + sendmmsg), espOpen.
//
// Everything else (sequence numbers, replay, SA choice, policies, routes) is TypeScript. Errors
// are thrown as Error objects with `code` = "ESP_NATIVE" and `errno`, and a message naming the
// syscall and its argument.
#include <napi.h>
#include <uv.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/ioctl.h>
#include <netinet/udp.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <atomic>
#include <vector>

#include "esp-native.h"
#include "tun-offload.h"

#ifndef UDP_ENCAP
#define UDP_ENCAP 100
#endif
#ifndef UDP_ENCAP_ESPINUDP
#define UDP_ENCAP_ESPINUDP 2
#endif
#ifndef SOL_UDP
#define SOL_UDP 17
#endif

namespace {

Napi::Error SysError(Napi::Env env, const std::string& what, int err) {
  Napi::Error e = Napi::Error::New(env, what + ": " + strerror(err));
  e.Set("code", Napi::String::New(env, "ESP_NATIVE"));
  e.Set("errno", Napi::Number::New(env, err));
  e.Set("syscall", Napi::String::New(env, what));
  return e;
}

// Fill a sockaddr from (family, address bytes, port). Returns its length or 0.
socklen_t MakeAddr(int family, const uint8_t* addr, size_t addrLen, int port, sockaddr_storage* ss) {
  memset(ss, 0, sizeof(*ss));
  if (family == 4 && addrLen == 4) {
    auto* s = reinterpret_cast<sockaddr_in*>(ss);
    s->sin_family = AF_INET;
    s->sin_port = htons(static_cast<uint16_t>(port));
    memcpy(&s->sin_addr, addr, 4);
    return sizeof(sockaddr_in);
  }
  if (family == 6 && addrLen == 16) {
    auto* s = reinterpret_cast<sockaddr_in6*>(ss);
    s->sin6_family = AF_INET6;
    s->sin6_port = htons(static_cast<uint16_t>(port));
    memcpy(&s->sin6_addr, addr, 16);
    return sizeof(sockaddr_in6);
  }
  return 0;
}

// Room for bursts: 4 MiB socket buffers. SO_*BUFFORCE (CAP_NET_ADMIN) passes the
// net.core.rmem_max/wmem_max cap (212992 by default, which drops ESP bursts at ~150 packets);
// without the capability the plain option is capped silently.
void BigBuffers(int fd) {
  int sz = 4 << 20;
  if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &sz, sizeof(sz)) < 0) setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &sz, sizeof(sz));
  if (setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &sz, sizeof(sz)) < 0) setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sz, sizeof(sz));
}

using fsesp::Coalesced;
using fsesp::virtio_net_hdr;

// TUN fds opened with IFF_VNET_HDR (every read/write carries a virtio_net_hdr).
constexpr int kMaxVnetFd = 65536;
std::atomic<bool> g_vnet[kMaxVnetFd];
bool IsVnet(int fd) { return fd >= 0 && fd < kMaxVnetFd && g_vnet[fd].load(std::memory_order_relaxed); }
// Coalesced TUN writes; switched off for good if the kernel refuses one.
std::atomic<bool> g_coalesce{true};
struct TunCounters {
  std::atomic<double> reads{0}, superPackets{0}, segments{0}, coalescedWrites{0}, coalescedPackets{0}, dropped{0};
} g_tun;
void Bump(std::atomic<double>& c, double by = 1) { c.store(c.load(std::memory_order_relaxed) + by, std::memory_order_relaxed); }

Napi::Value OpenTun(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string name = info.Length() > 0 && info[0].IsString() ? info[0].As<Napi::String>().Utf8Value() : "";
  if (name.size() >= IFNAMSIZ) {
    Napi::TypeError::New(env, "openTun: interface name longer than 15 characters: " + name).ThrowAsJavaScriptException();
    return env.Null();
  }
  int fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) {
    SysError(env, "open(/dev/net/tun)", errno).ThrowAsJavaScriptException();
    return env.Null();
  }
  bool vnet = fd < kMaxVnetFd && getenv("FLEETSWAN_ESP_NO_GSO") == nullptr && getenv("FLEETSWAN_TUN_NO_OFFLOAD") == nullptr;
  struct ifreq ifr;
  memset(&ifr, 0, sizeof(ifr));
  ifr.ifr_flags = IFF_TUN | IFF_NO_PI | (vnet ? IFF_VNET_HDR : 0);
  strncpy(ifr.ifr_name, name.c_str(), IFNAMSIZ - 1);
  int rc = ioctl(fd, TUNSETIFF, &ifr);
  if (rc < 0 && vnet) {
    // a kernel without virtio headers on TUN: plain packets
    vnet = false;
    ifr.ifr_flags = IFF_TUN | IFF_NO_PI;
    rc = ioctl(fd, TUNSETIFF, &ifr);
  }
  if (rc < 0) {
    int err = errno;
    close(fd);
    SysError(env, "ioctl(TUNSETIFF, " + name + ")", err).ThrowAsJavaScriptException();
    return env.Null();
  }
  if (vnet) {
    // The kernel may hand us TCP super-packets (TSO) and packets with a partial checksum; we
    // split and complete them (tun-offload.h). Without this the header is there, unused.
    unsigned off = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6;
    if (ioctl(fd, TUNSETOFFLOAD, off) < 0) ioctl(fd, TUNSETOFFLOAD, 0u);
    g_vnet[fd].store(true);
  }
  Napi::Object r = Napi::Object::New(env);
  r.Set("fd", Napi::Number::New(env, fd));
  r.Set("name", Napi::String::New(env, ifr.ifr_name));
  r.Set("offload", Napi::Boolean::New(env, vnet));
  return r;
}

Napi::Value UdpSocket(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int family = info[0].As<Napi::Number>().Int32Value();
  Napi::Buffer<uint8_t> addr = info[1].As<Napi::Buffer<uint8_t>>();
  int port = info[2].As<Napi::Number>().Int32Value();
  bool encap = info[3].ToBoolean();
  sockaddr_storage ss;
  socklen_t sl = MakeAddr(family, addr.Data(), addr.Length(), port, &ss);
  if (sl == 0) {
    Napi::TypeError::New(env, "udpSocket: bad family/address").ThrowAsJavaScriptException();
    return env.Null();
  }
  int fd = socket(family == 4 ? AF_INET : AF_INET6, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    SysError(env, "socket(UDP)", errno).ThrowAsJavaScriptException();
    return env.Null();
  }
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (family == 6) setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
  BigBuffers(fd);
  if (bind(fd, reinterpret_cast<sockaddr*>(&ss), sl) < 0) {
    int err = errno;
    close(fd);
    SysError(env, "bind(UDP port " + std::to_string(port) + ")", err).ThrowAsJavaScriptException();
    return env.Null();
  }
  if (!encap && getenv("FLEETSWAN_ESP_NO_GSO") == nullptr) {
    // userspace ESP: take coalesced datagrams (one read for up to 64 packets; split in Poller)
    setsockopt(fd, SOL_UDP, UDP_GRO, &one, sizeof(one));
  }
  if (encap) {
    int t = UDP_ENCAP_ESPINUDP;
    if (setsockopt(fd, SOL_UDP, UDP_ENCAP, &t, sizeof(t)) < 0) {
      int err = errno;
      close(fd);
      SysError(env, "setsockopt(UDP_ENCAP)", err).ThrowAsJavaScriptException();
      return env.Null();
    }
  }
  return Napi::Number::New(env, fd);
}

Napi::Value SetUdpEncap(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = info[0].As<Napi::Number>().Int32Value();
  int t = UDP_ENCAP_ESPINUDP;
  if (setsockopt(fd, SOL_UDP, UDP_ENCAP, &t, sizeof(t)) < 0) {
    SysError(env, "setsockopt(fd " + std::to_string(fd) + ", UDP_ENCAP)", errno).ThrowAsJavaScriptException();
  }
  return env.Undefined();
}

Napi::Value LocalPort(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = info[0].As<Napi::Number>().Int32Value();
  sockaddr_storage ss;
  socklen_t sl = sizeof(ss);
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &sl) < 0) {
    SysError(env, "getsockname(fd " + std::to_string(fd) + ")", errno).ThrowAsJavaScriptException();
    return env.Null();
  }
  int port = ss.ss_family == AF_INET6 ? ntohs(reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port) : ntohs(reinterpret_cast<sockaddr_in*>(&ss)->sin_port);
  return Napi::Number::New(env, port);
}

Napi::Value RawEspSocket(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int family = info[0].As<Napi::Number>().Int32Value();
  int fd = socket(family == 4 ? AF_INET : AF_INET6, SOCK_RAW | SOCK_NONBLOCK | SOCK_CLOEXEC, IPPROTO_ESP);
  if (fd < 0) {
    SysError(env, "socket(SOCK_RAW, IPPROTO_ESP)", errno).ThrowAsJavaScriptException();
    return env.Null();
  }
  if (info.Length() > 1 && info[1].IsBuffer()) {
    Napi::Buffer<uint8_t> addr = info[1].As<Napi::Buffer<uint8_t>>();
    sockaddr_storage ss;
    socklen_t sl = MakeAddr(family, addr.Data(), addr.Length(), 0, &ss);
    if (sl != 0 && bind(fd, reinterpret_cast<sockaddr*>(&ss), sl) < 0) {
      int err = errno;
      close(fd);
      SysError(env, "bind(raw ESP)", err).ThrowAsJavaScriptException();
      return env.Null();
    }
  }
  BigBuffers(fd);
  return Napi::Number::New(env, fd);
}

// Returns bytes written, or -errno for EAGAIN/ENOBUFS-type transient failures (the caller counts
// a drop); throws for anything else.
Napi::Value Write(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = info[0].As<Napi::Number>().Int32Value();
  Napi::Buffer<uint8_t> b = info[1].As<Napi::Buffer<uint8_t>>();
  ssize_t n;
  if (IsVnet(fd)) {
    virtio_net_hdr h;
    memset(&h, 0, sizeof(h));
    iovec iov[2] = {{&h, sizeof(h)}, {b.Data(), b.Length()}};
    n = writev(fd, iov, 2);
    if (n >= static_cast<ssize_t>(sizeof(h))) n -= sizeof(h);
  } else {
    n = write(fd, b.Data(), b.Length());
  }
  if (n < 0) {
    int err = errno;
    if (err == EAGAIN || err == ENOBUFS || err == EINVAL || err == EIO) return Napi::Number::New(env, -err);
    SysError(env, "write(fd " + std::to_string(fd) + ")", err).ThrowAsJavaScriptException();
    return env.Null();
  }
  return Napi::Number::New(env, static_cast<double>(n));
}

Napi::Value SendTo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = info[0].As<Napi::Number>().Int32Value();
  Napi::Buffer<uint8_t> b = info[1].As<Napi::Buffer<uint8_t>>();
  int family = info[2].As<Napi::Number>().Int32Value();
  Napi::Buffer<uint8_t> addr = info[3].As<Napi::Buffer<uint8_t>>();
  int port = info[4].As<Napi::Number>().Int32Value();
  sockaddr_storage ss;
  socklen_t sl = MakeAddr(family, addr.Data(), addr.Length(), port, &ss);
  if (sl == 0) {
    Napi::TypeError::New(env, "sendTo: bad family/address").ThrowAsJavaScriptException();
    return env.Null();
  }
  ssize_t n = sendto(fd, b.Data(), b.Length(), 0, reinterpret_cast<sockaddr*>(&ss), sl);
  if (n < 0) return Napi::Number::New(env, -errno);  // transient (EAGAIN, ENOBUFS, EHOSTUNREACH...): counted by caller
  return Napi::Number::New(env, static_cast<double>(n));
}

// TUN with virtio headers: runs of consecutive segments of one TCP flow go out as one
// super-packet (CoalesceRun: GSO_TCPV4/6, the kernel's TCP takes them in one go, like GRO);
// everything else one packet per writev with an empty header. Returns packets written.
ssize_t WriteV(int fd, const iovec* iov, int cnt) {
  ssize_t r;
  do {
    r = writev(fd, iov, cnt);
  } while (r < 0 && errno == EINTR);
  return r;
}

uint32_t WriteBatchVnet(int fd, uint8_t* data, size_t dataLen, const Napi::Uint32Array& ol, uint32_t n) {
  static thread_local std::vector<uint8_t*> ptrs;
  static thread_local std::vector<size_t> lens;
  iovec iov[2 + 64];
  ptrs.resize(n);
  lens.resize(n);
  virtio_net_hdr plain;
  memset(&plain, 0, sizeof(plain));
  uint32_t ok = 0;
  for (uint32_t k = 0; k < n; k++) {
    const uint32_t off = ol[k * 2], len = ol[k * 2 + 1];
    const bool in = static_cast<size_t>(off) + len <= dataLen;
    ptrs[k] = in ? data + off : nullptr;
    lens[k] = in ? len : 0;
  }
  uint32_t i = 0;
  while (i < n) {
    if (ptrs[i] == nullptr) {
      i++;
      continue;
    }
    size_t m = 0;  // packets in bounds from i on (at most 64)
    while (i + m < n && ptrs[i + m] != nullptr && m < 64) m++;
    Coalesced c;
    c.count = 1;
    if (g_coalesce.load(std::memory_order_relaxed)) fsesp::CoalesceRun(&ptrs[i], &lens[i], m, &c);
    if (c.count > 1) {
      iov[0] = {&c.vnet, sizeof(c.vnet)};
      iov[1] = {c.hdr, c.hdrLen};
      for (size_t k = 0; k < c.count; k++) iov[2 + k] = {ptrs[i + k] + c.hdrLen, lens[i + k] - c.hdrLen};
      if (WriteV(fd, iov, static_cast<int>(2 + c.count)) >= 0) {
        ok += static_cast<uint32_t>(c.count);
        Bump(g_tun.coalescedWrites);
        Bump(g_tun.coalescedPackets, static_cast<double>(c.count));
        i += static_cast<uint32_t>(c.count);
        continue;
      }
      if (errno == EINVAL) g_coalesce.store(false);  // the kernel refuses GSO writes: one by one from now on
    }
    iovec one[2] = {{&plain, sizeof(plain)}, {ptrs[i], lens[i]}};
    if (WriteV(fd, one, 2) >= 0) ok++;
    i++;
  }
  return ok;
}

// writeBatch(fd, data, offLen: Uint32Array [off, len]*, n): write(2) each packet (TUN: one packet
// per write). Returns how many were written; transient failures are skipped (the caller counts
// n - written as drops).
Napi::Value WriteBatch(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = info[0].As<Napi::Number>().Int32Value();
  Napi::Buffer<uint8_t> data = info[1].As<Napi::Buffer<uint8_t>>();
  Napi::Uint32Array ol = info[2].As<Napi::Uint32Array>();
  uint32_t n = info[3].As<Napi::Number>().Uint32Value();
  if (static_cast<size_t>(n) * 2 > ol.ElementLength()) n = static_cast<uint32_t>(ol.ElementLength() / 2);
  if (IsVnet(fd)) return Napi::Number::New(env, WriteBatchVnet(fd, data.Data(), data.Length(), ol, n));
  uint32_t ok = 0;
  for (uint32_t i = 0; i < n; i++) {
    uint32_t off = ol[i * 2], len = ol[i * 2 + 1];
    if (static_cast<size_t>(off) + len > data.Length()) continue;
    ssize_t r;
    do {
      r = write(fd, data.Data() + off, len);
    } while (r < 0 && errno == EINTR);
    if (r >= 0) ok++;
  }
  return Napi::Number::New(env, ok);
}

Napi::Value Close(const Napi::CallbackInfo& info) {
  int fd = info[0].As<Napi::Number>().Int32Value();
  if (fd >= 0 && fd < kMaxVnetFd) g_vnet[fd].store(false);
  if (fd >= 0) close(fd);
  return info.Env().Undefined();
}

// ------------------------------------------------------------------ Poller --

constexpr size_t kMaxPacket = 65536;

class Poller : public Napi::ObjectWrap<Poller> {
 public:
  static Napi::Function Init(Napi::Env env) {
    return DefineClass(env, "Poller",
                       {InstanceMethod("start", &Poller::Start), InstanceMethod("stop", &Poller::Stop),
                        InstanceMethod("close", &Poller::Close)});
  }

  explicit Poller(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Poller>(info) {
    Napi::Env env = info.Env();
    fd_ = info[0].As<Napi::Number>().Int32Value();
    withAddr_ = info[1].ToBoolean();
    maxBatch_ = info[2].As<Napi::Number>().Uint32Value();
    if (maxBatch_ == 0 || maxBatch_ > 4096) maxBatch_ = 256;
    cb_ = Napi::Persistent(info[3].As<Napi::Function>());
    Grow(env, kMaxPacket * 8, 0);
    meta_.resize(maxBatch_ * 8);
    uv_loop_t* loop = nullptr;
    napi_get_uv_event_loop(env, &loop);
    handle_ = new uv_poll_t;
    int r = uv_poll_init(loop, handle_, fd_);
    if (r != 0) {
      delete handle_;
      handle_ = nullptr;
      Napi::Error::New(env, std::string("uv_poll_init: ") + uv_strerror(r)).ThrowAsJavaScriptException();
      return;
    }
    handle_->data = this;
  }

  ~Poller() override { CloseHandle(); }

 private:
  Napi::Value Start(const Napi::CallbackInfo& info) {
    if (handle_ != nullptr && !active_) {
      uv_poll_start(handle_, UV_READABLE, OnPoll);
      active_ = true;
      Ref();  // keep the JS object (and the loop) alive while polling
    }
    return info.Env().Undefined();
  }
  Napi::Value Stop(const Napi::CallbackInfo& info) {
    StopPoll();
    return info.Env().Undefined();
  }
  // writeBatch(fd, data, offLen: Uint32Array [off, len]*, n): write(2) each packet (TUN: one packet
// per write). Returns how many were written; transient failures are skipped (the caller counts
// n - written as drops).
Napi::Value WriteBatch(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = info[0].As<Napi::Number>().Int32Value();
  Napi::Buffer<uint8_t> data = info[1].As<Napi::Buffer<uint8_t>>();
  Napi::Uint32Array ol = info[2].As<Napi::Uint32Array>();
  uint32_t n = info[3].As<Napi::Number>().Uint32Value();
  if (static_cast<size_t>(n) * 2 > ol.ElementLength()) n = static_cast<uint32_t>(ol.ElementLength() / 2);
  uint32_t ok = 0;
  for (uint32_t i = 0; i < n; i++) {
    uint32_t off = ol[i * 2], len = ol[i * 2 + 1];
    if (static_cast<size_t>(off) + len > data.Length()) continue;
    ssize_t r;
    do {
      r = write(fd, data.Data() + off, len);
    } while (r < 0 && errno == EINTR);
    if (r >= 0) ok++;
  }
  return Napi::Number::New(env, ok);
}

Napi::Value Close(const Napi::CallbackInfo& info) {
    CloseHandle();
    return info.Env().Undefined();
  }
  void StopPoll() {
    if (handle_ != nullptr && active_) {
      uv_poll_stop(handle_);
      active_ = false;
      Unref();
    }
  }
  void CloseHandle() {
    StopPoll();
    if (handle_ != nullptr) {
      uv_close(reinterpret_cast<uv_handle_t*>(handle_), [](uv_handle_t* h) { delete reinterpret_cast<uv_poll_t*>(h); });
      handle_ = nullptr;
    }
  }

  static void OnPoll(uv_poll_t* h, int status, int events) {
    auto* self = static_cast<Poller*>(h->data);
    if (self == nullptr || !self->active_) return;
    self->Drain(status);
  }

  // Read until EAGAIN or maxBatch packets; one JS call per batch. The arena grows when a
  // batch of big packets needs it; a packet never straddles a reallocation (we read into
  // the tail only when kMaxPacket bytes are free).
  void Drain(int status) {
    Napi::Env env = Env();
    Napi::HandleScope scope(env);
    if (status < 0) {
      Deliver(env, 0, std::string("poll: ") + uv_strerror(status));
      return;
    }
    if (withAddr_) {
      DrainSocket(env);
      return;
    }
    if (IsVnet(fd_)) {
      DrainVnet(env);
      return;
    }
    size_t used = 0;
    uint32_t n = 0;
    int err = 0;
    while (n < maxBatch_) {
      if (cap_ - used < kMaxPacket) Grow(env, cap_ * 2, used);
      uint8_t* p = arena_ + used;
      ssize_t r;
      sockaddr_storage ss;
      socklen_t sl = sizeof(ss);
      if (withAddr_) {
        r = recvfrom(fd_, p, kMaxPacket, 0, reinterpret_cast<sockaddr*>(&ss), &sl);
      } else {
        r = read(fd_, p, kMaxPacket);
      }
      if (r < 0) {
        if (errno == EINTR) continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK) err = errno;
        break;
      }
      uint32_t* m = meta_.data() + n * 8;
      m[0] = static_cast<uint32_t>(used);
      m[1] = static_cast<uint32_t>(r);
      m[2] = 0;
      m[3] = 0;
      m[4] = m[5] = m[6] = m[7] = 0;
      if (withAddr_) {
        if (ss.ss_family == AF_INET) {
          auto* s = reinterpret_cast<sockaddr_in*>(&ss);
          m[2] = 4;
          m[3] = ntohs(s->sin_port);
          memcpy(&m[4], &s->sin_addr, 4);
        } else if (ss.ss_family == AF_INET6) {
          auto* s = reinterpret_cast<sockaddr_in6*>(&ss);
          m[2] = 6;
          m[3] = ntohs(s->sin6_port);
          memcpy(&m[4], &s->sin6_addr, 16);
        }
      }
      used += static_cast<size_t>(r);
      // keep the next packet 16-byte aligned (cheap, and helps the JS side's views)
      used = (used + 15) & ~static_cast<size_t>(15);
      n++;
    }
    if (n > 0) Deliver(env, n, "");
    if (err != 0 && err != ENOTCONN && err != ECONNREFUSED) {
      Deliver(env, 0, std::string("read: ") + strerror(err));
    }
  }

  // TUN with virtio headers: read into a scratch buffer; a TSO super-packet is split into its
  // segments (full checksums), a packet with a partial checksum is completed, then copied
  // into the arena. Until EAGAIN or maxBatch packets (a super-packet may pass it by 64).
  void DrainVnet(Napi::Env env) {
    constexpr size_t kHdr = sizeof(virtio_net_hdr);
    if (scratch_.empty()) scratch_.resize(kHdr + kMaxPacket);
    size_t used = 0;
    uint32_t n = 0;
    int err = 0;
    auto alloc = [&](size_t l) -> uint8_t* {
      if (cap_ - used < l + 16) Grow(env, cap_ * 2 + l, used);
      if (meta_.size() < (static_cast<size_t>(n) + 1) * 8) meta_.resize(meta_.size() * 2 + 8);
      uint32_t* m = meta_.data() + static_cast<size_t>(n) * 8;
      m[0] = static_cast<uint32_t>(used);
      m[1] = static_cast<uint32_t>(l);
      m[2] = m[3] = 0;
      m[4] = m[5] = m[6] = m[7] = 0;
      uint8_t* d = arena_ + used;
      used = (used + l + 15) & ~static_cast<size_t>(15);
      n++;
      return d;
    };
    while (n < maxBatch_) {
      ssize_t r = read(fd_, scratch_.data(), scratch_.size());
      if (r < 0) {
        if (errno == EINTR) continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK) err = errno;
        break;
      }
      Bump(g_tun.reads);
      if (static_cast<size_t>(r) <= kHdr) {
        Bump(g_tun.dropped);
        continue;
      }
      virtio_net_hdr h;
      memcpy(&h, scratch_.data(), kHdr);
      uint8_t* pkt = scratch_.data() + kHdr;
      const size_t len = static_cast<size_t>(r) - kHdr;
      const uint8_t gt = h.gso_type & static_cast<uint8_t>(~fsesp::VIRTIO_NET_HDR_GSO_ECN);
      if (gt == fsesp::VIRTIO_NET_HDR_GSO_NONE) {
        if ((h.flags & fsesp::VIRTIO_NET_HDR_F_NEEDS_CSUM) && !fsesp::CompleteChecksum(pkt, len, h.csum_start, h.csum_offset)) {
          Bump(g_tun.dropped);
          continue;
        }
        memcpy(alloc(len), pkt, len);
      } else if (gt == fsesp::VIRTIO_NET_HDR_GSO_TCPV4 || gt == fsesp::VIRTIO_NET_HDR_GSO_TCPV6) {
        const int segs = fsesp::TcpSegment(pkt, len, h.gso_size, alloc);
        if (segs < 0) {
          Bump(g_tun.dropped);
        } else {
          Bump(g_tun.superPackets);
          Bump(g_tun.segments, segs);
        }
      } else {
        Bump(g_tun.dropped);  // UFO/USO: not offered by us (TUNSETOFFLOAD)
      }
    }
    if (n > 0) Deliver(env, n, "");
    if (err != 0) Deliver(env, 0, std::string("read: ") + strerror(err));
  }

  // Sockets: recvmmsg into 64 KiB slots, kSlots datagrams per syscall, until EAGAIN or
  // maxBatch packets. A UDP GRO datagram (UDP_GRO on the socket, cmsg with the segment size)
  // is split back into its packets. Packets are copied compactly into the arena for Deliver.
  static constexpr unsigned kSlots = 16;
  void DrainSocket(Napi::Env env) {
    if (slots_.empty()) {
      slots_.resize(static_cast<size_t>(kSlots) * kMaxPacket);
      cmsg_.resize(kSlots * CMSG_SPACE(sizeof(int)));
    }
    mmsghdr msgs[kSlots];
    iovec iov[kSlots];
    sockaddr_storage addrs[kSlots];
    size_t used = 0;
    uint32_t n = 0;
    int err = 0;
    while (n < maxBatch_) {
      for (unsigned k = 0; k < kSlots; k++) {
        iov[k] = iovec{slots_.data() + static_cast<size_t>(k) * kMaxPacket, kMaxPacket};
        memset(&msgs[k], 0, sizeof(mmsghdr));
        msgs[k].msg_hdr.msg_name = &addrs[k];
        msgs[k].msg_hdr.msg_namelen = sizeof(sockaddr_storage);
        msgs[k].msg_hdr.msg_iov = &iov[k];
        msgs[k].msg_hdr.msg_iovlen = 1;
        msgs[k].msg_hdr.msg_control = cmsg_.data() + k * CMSG_SPACE(sizeof(int));
        msgs[k].msg_hdr.msg_controllen = CMSG_SPACE(sizeof(int));
      }
      int r = recvmmsg(fd_, msgs, kSlots, MSG_DONTWAIT, nullptr);
      if (r < 0) {
        if (errno == EINTR) continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK) err = errno;
        break;
      }
      if (r == 0) break;
      for (int k = 0; k < r; k++) {
        const uint8_t* p = slots_.data() + static_cast<size_t>(k) * kMaxPacket;
        size_t len = msgs[k].msg_len;
        size_t seg = len;
        for (cmsghdr* c = CMSG_FIRSTHDR(&msgs[k].msg_hdr); c != nullptr; c = CMSG_NXTHDR(&msgs[k].msg_hdr, c)) {
          if (c->cmsg_level == SOL_UDP && c->cmsg_type == UDP_GRO) {
            int g = 0;
            memcpy(&g, CMSG_DATA(c), sizeof(g));
            if (g > 0) seg = static_cast<size_t>(g);
          }
        }
        for (size_t off = 0; off < len || (len == 0 && off == 0); off += seg) {
          const size_t l = len - off < seg ? len - off : seg;
          if (cap_ - used < l + 16) Grow(env, cap_ * 2 + l, used);
          if (meta_.size() < (static_cast<size_t>(n) + 1) * 8) meta_.resize(meta_.size() * 2 + 8);
          memcpy(arena_ + used, p + off, l);
          uint32_t* m = meta_.data() + static_cast<size_t>(n) * 8;
          FillAddr(m, &addrs[k]);
          m[0] = static_cast<uint32_t>(used);
          m[1] = static_cast<uint32_t>(l);
          used = (used + l + 15) & ~static_cast<size_t>(15);
          n++;
          if (len == 0) break;
        }
      }
      if (r < static_cast<int>(kSlots)) break;  // drained
    }
    if (n > 0) Deliver(env, n, "");
    if (err != 0 && err != ENOTCONN && err != ECONNREFUSED) {
      Deliver(env, 0, std::string("recvmmsg: ") + strerror(err));
    }
  }

  static void FillAddr(uint32_t* m, const sockaddr_storage* ss) {
    m[2] = m[3] = 0;
    m[4] = m[5] = m[6] = m[7] = 0;
    if (ss->ss_family == AF_INET) {
      auto* s = reinterpret_cast<const sockaddr_in*>(ss);
      m[2] = 4;
      m[3] = ntohs(s->sin_port);
      memcpy(&m[4], &s->sin_addr, 4);
    } else if (ss->ss_family == AF_INET6) {
      auto* s = reinterpret_cast<const sockaddr_in6*>(ss);
      m[2] = 6;
      m[3] = ntohs(s->sin6_port);
      memcpy(&m[4], &s->sin6_addr, 16);
    }
  }

  void Deliver(Napi::Env env, uint32_t n, const std::string& error) {
    size_t bytes = 0;
    if (n > 0) {
      const uint32_t* last = meta_.data() + (n - 1) * 8;
      bytes = last[0] + last[1];
    }
    (void)bytes;
    // The batch lives in one long-lived Buffer (no copy, no garbage per batch): valid only
    // during the callback, overwritten by the next batch; JS reads it through meta's offsets.
    Napi::Buffer<uint8_t> data = buf_.Value();
    Napi::ArrayBuffer mab = Napi::ArrayBuffer::New(env, n * 8 * sizeof(uint32_t));
    if (n > 0) memcpy(mab.Data(), meta_.data(), n * 8 * sizeof(uint32_t));
    Napi::Uint32Array meta = Napi::Uint32Array::New(env, n * 8, mab, 0);
    Napi::Value errv = error.empty() ? env.Undefined() : Napi::String::New(env, error).As<Napi::Value>();
    // MakeCallback so that microtasks queued by the handler run before we return to libuv.
    cb_.MakeCallback(Value(), {data, meta, errv});
  }

  int fd_ = -1;
  bool withAddr_ = false;
  bool active_ = false;
  uint32_t maxBatch_ = 256;
  uv_poll_t* handle_ = nullptr;
  Napi::FunctionReference cb_;
  // The arena is a JS Buffer kept alive by a reference (stable memory); growing replaces it
  // (the old one is collected once JS drops it) and carries over the bytes read so far.
  void Grow(Napi::Env env, size_t need, size_t keep) {
    if (need <= cap_) return;
    Napi::Buffer<uint8_t> nb = Napi::Buffer<uint8_t>::New(env, need);
    if (keep > 0) memcpy(nb.Data(), arena_, keep);
    buf_ = Napi::Persistent(nb);
    arena_ = nb.Data();
    cap_ = need;
  }

  Napi::Reference<Napi::Buffer<uint8_t>> buf_;
  uint8_t* arena_ = nullptr;
  size_t cap_ = 0;
  std::vector<uint32_t> meta_;
  std::vector<uint8_t> slots_;
  std::vector<uint8_t> scratch_;
  std::vector<uint8_t> cmsg_;
};

Napi::Value TunStats(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object r = Napi::Object::New(env);
  r.Set("reads", g_tun.reads.load());
  r.Set("superPackets", g_tun.superPackets.load());
  r.Set("segments", g_tun.segments.load());
  r.Set("coalescedWrites", g_tun.coalescedWrites.load());
  r.Set("coalescedPackets", g_tun.coalescedPackets.load());
  r.Set("dropped", g_tun.dropped.load());
  return r;
}

// Test hooks: the same functions the poller and writeBatch use, on JS buffers.
Napi::Value TunSplit(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Buffer<uint8_t> b = info[0].As<Napi::Buffer<uint8_t>>();
  const uint32_t gso = info[1].As<Napi::Number>().Uint32Value();
  std::vector<std::vector<uint8_t>> segs;
  const int r = fsesp::TcpSegment(b.Data(), b.Length(), static_cast<uint16_t>(gso), [&](size_t l) {
    segs.emplace_back(l);
    return segs.back().data();
  });
  if (r < 0) return env.Null();
  Napi::Array out = Napi::Array::New(env, segs.size());
  for (size_t i = 0; i < segs.size(); i++) out.Set(static_cast<uint32_t>(i), Napi::Buffer<uint8_t>::Copy(env, segs[i].data(), segs[i].size()));
  return out;
}

Napi::Value TunCoalesce(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Array a = info[0].As<Napi::Array>();
  std::vector<uint8_t*> ptrs;
  std::vector<size_t> lens;
  for (uint32_t i = 0; i < a.Length(); i++) {
    Napi::Buffer<uint8_t> b = a.Get(i).As<Napi::Buffer<uint8_t>>();
    ptrs.push_back(b.Data());
    lens.push_back(b.Length());
  }
  Coalesced c;
  fsesp::CoalesceRun(ptrs.data(), lens.data(), ptrs.size(), &c);
  Napi::Object r = Napi::Object::New(env);
  r.Set("count", Napi::Number::New(env, static_cast<double>(c.count)));
  if (c.count > 1) {
    r.Set("vnet", Napi::Buffer<uint8_t>::Copy(env, reinterpret_cast<const uint8_t*>(&c.vnet), sizeof(c.vnet)));
    r.Set("header", Napi::Buffer<uint8_t>::Copy(env, c.hdr, c.hdrLen));
  }
  return r;
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("tunSplit", Napi::Function::New(env, TunSplit));
  exports.Set("tunCoalesce", Napi::Function::New(env, TunCoalesce));
  exports.Set("tunStats", Napi::Function::New(env, TunStats));
  exports.Set("openTun", Napi::Function::New(env, OpenTun));
  exports.Set("udpSocket", Napi::Function::New(env, UdpSocket));
  exports.Set("setUdpEncap", Napi::Function::New(env, SetUdpEncap));
  exports.Set("localPort", Napi::Function::New(env, LocalPort));
  exports.Set("rawEspSocket", Napi::Function::New(env, RawEspSocket));
  exports.Set("write", Napi::Function::New(env, Write));
  exports.Set("sendTo", Napi::Function::New(env, SendTo));
  exports.Set("close", Napi::Function::New(env, Close));
  exports.Set("writeBatch", Napi::Function::New(env, WriteBatch));
  exports.Set("Poller", Poller::Init(env));
  fsesp::InitEsp(env, exports);
  return exports;
}

}  // namespace

NODE_API_MODULE(fsesp, Init)
