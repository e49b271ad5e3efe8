// sigil_sys: small Linux system calls Sigil needs and Node does not expose.
//
//   peerCred(fd)                                  getsockopt(SO_PEERCRED) (+ SO_PEERPIDFD when the
//                                                 kernel has it) on a connected AF_UNIX socket
//   nsmRequest(request, maxResponse)              Nitro Secure Module ioctl on /dev/nsm
//   snpGetExtReport(reportData, vmpl, certsLen)   SNP_GET_EXT_REPORT ioctl on /dev/sev-guest
//   listenUnix(path, backlog, onAccept, onError)  a listening AF_UNIX socket whose connections
//                                                 are accepted here and handed to JS as fds
//                                                 (wrapped with new net.Socket({ fd })), so the
//                                                 fd for peerCred is known without reaching into
//                                                 Node's private socket handle
//   closeUnixListener(listener)                   stop accepting and close the listening fd
//   resumeUnixListener(listener)                  accept again after onError paused it
//   setMallocMmapThreshold(bytes)                 glibc mallopt(M_MMAP_THRESHOLD): an allocation
//                                                 of at least `bytes` that no free heap chunk fits
//                                                 gets a mapping of its own instead of growing the
//                                                 heap, so its untouched pages are never resident
//                                                 (Node's TLS layer takes a 64 KiB read buffer per
//                                                 connection and touches a few KiB of it)
//   mallocStats()                                 glibc mallinfo2(): the chunks and bytes served by
//                                                 their own mappings, and the heap's bytes in use
//
// The two ioctls hand raw bytes in and out (NSM: CBOR request/response; SEV: the firmware's
// MSG_REPORT_RSP and the GHCB certificate table). All decoding happens in TypeScript.
// The ioctls run on the libuv thread pool (Napi::AsyncWorker), never on the main thread.
//
// Kernel ABI facts used here (struct layouts and ioctl numbers) come from the Linux uapi headers
// include/uapi/linux/nsm.h and include/uapi/linux/sev-guest.h; they are re-declared below so the
// addon builds on systems whose headers predate those drivers.

#include <napi.h>

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/un.h>
#include <unistd.h>
#include <uv.h>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include <stdio.h>

#include <string>
#include <type_traits>
#include <vector>

#ifndef SO_PEERPIDFD
#define SO_PEERPIDFD 77
#endif

namespace {

// ---- Nitro Secure Module (include/uapi/linux/nsm.h) ----
struct sigil_nsm_iovec {
  uint64_t addr;
  uint64_t len;
};
struct sigil_nsm_raw {
  struct sigil_nsm_iovec request;
  struct sigil_nsm_iovec response;
};
#define SIGIL_NSM_MAGIC 0x0A
#define SIGIL_NSM_IOCTL_REQUEST _IOWR(SIGIL_NSM_MAGIC, 0, struct sigil_nsm_raw)
constexpr size_t kNsmRequestMax = 0x1000;   // NSM_REQUEST_MAX_SIZE in the driver
constexpr size_t kNsmResponseMax = 0x3000;  // NSM_RESPONSE_MAX_SIZE in the driver

// ---- SEV-SNP guest (include/uapi/linux/sev-guest.h) ----
struct sigil_snp_report_req {
  uint8_t user_data[64];
  uint32_t vmpl;
  uint8_t rsvd[28];
};
struct sigil_snp_report_resp {
  uint8_t data[4000];
};
struct sigil_snp_guest_request_ioctl {
  uint8_t msg_version;
  uint64_t req_data;
  uint64_t resp_data;
  union {
    uint64_t exitinfo2;
    struct {
      uint32_t fw_error;
      uint32_t vmm_error;
    };
  };
};
struct sigil_snp_ext_report_req {
  struct sigil_snp_report_req data;
  uint64_t certs_address;
  uint32_t certs_len;
};
#define SIGIL_SNP_IOC_TYPE 'S'
#define SIGIL_SNP_GET_EXT_REPORT _IOWR(SIGIL_SNP_IOC_TYPE, 0x2, struct sigil_snp_guest_request_ioctl)
constexpr uint32_t kSnpVmmErrInvalidLen = 1;
constexpr uint32_t kSnpVmmErrBusy = 2;
constexpr size_t kSnpPage = 4096;
constexpr size_t kSnpCertsMax = 0x4000;  // SEV_FW_BLOB_MAX_SIZE in the driver

static_assert(sizeof(sigil_nsm_raw) == 32, "nsm_raw layout");
static_assert(sizeof(sigil_snp_report_req) == 96, "snp_report_req layout");
static_assert(sizeof(sigil_snp_guest_request_ioctl) == 32, "snp_guest_request_ioctl layout");

std::string ErrnoText(int err) {
  char buf[256];
  buf[0] = '\0';
  // GNU strerror_r returns a char*; XSI returns int. Handle both.
  auto r = strerror_r(err, buf, sizeof buf);
  if constexpr (std::is_same<decltype(r), char*>::value) {
    return std::string(r);
  } else {
    return std::string(buf);
  }
}

const char* ErrnoName(int err) {
  switch (err) {
    case ENOENT: return "ENOENT";
    case EACCES: return "EACCES";
    case EPERM: return "EPERM";
    case EINVAL: return "EINVAL";
    case EIO: return "EIO";
    case ENOTTY: return "ENOTTY";
    case EBADF: return "EBADF";
    case ENOTSOCK: return "ENOTSOCK";
    case ENOTCONN: return "ENOTCONN";
    case ENOPROTOOPT: return "ENOPROTOOPT";
    case ESRCH: return "ESRCH";
    case EBUSY: return "EBUSY";
    case EAGAIN: return "EAGAIN";
    case ENOMEM: return "ENOMEM";
    case ENODEV: return "ENODEV";
    case ENXIO: return "ENXIO";
    case EFAULT: return "EFAULT";
    case E2BIG: return "E2BIG";
    case EMSGSIZE: return "EMSGSIZE";
    case EADDRINUSE: return "EADDRINUSE";
    case EMFILE: return "EMFILE";
    case ENFILE: return "ENFILE";
    case ENOBUFS: return "ENOBUFS";
    default: return "E?";
  }
}

Napi::Error ErrnoError(Napi::Env env, const std::string& what, int err) {
  Napi::Error e = Napi::Error::New(env, what + ": " + ErrnoName(err) + " (" + ErrnoText(err) + ")");
  e.Set("errno", Napi::Number::New(env, err));
  e.Set("syscallCode", Napi::String::New(env, ErrnoName(err)));
  return e;
}

// RAII file descriptor.
struct Fd {
  int fd = -1;
  explicit Fd(int f) : fd(f) {}
  ~Fd() {
    if (fd >= 0) close(fd);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
};

// ---------------------------------------------------------------------------------------------
// peerCred(fd) -> { pid, uid, gid, pidfd? }
Napi::Value PeerCred(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsNumber()) {
    throw Napi::TypeError::New(env, "peerCred(fd): fd must be a number");
  }
  const double d = info[0].As<Napi::Number>().DoubleValue();
  if (!(d >= 0 && d <= 2147483647.0) || d != static_cast<double>(static_cast<int>(d))) {
    throw Napi::TypeError::New(env, "peerCred(fd): fd must be a non-negative integer");
  }
  const int fd = static_cast<int>(d);

  int domain = 0;
  socklen_t dlen = sizeof domain;
  if (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &dlen) != 0) {
    throw ErrnoError(env, "getsockopt(SO_DOMAIN) on fd " + std::to_string(fd), errno);
  }
  if (domain != AF_UNIX) {
    throw Napi::Error::New(env, "fd " + std::to_string(fd) + " is not an AF_UNIX socket (domain " + std::to_string(domain) + ")");
  }

  struct ucred cred;
  memset(&cred, 0, sizeof cred);
  socklen_t clen = sizeof cred;
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &clen) != 0) {
    throw ErrnoError(env, "getsockopt(SO_PEERCRED) on fd " + std::to_string(fd), errno);
  }
  if (clen != sizeof cred) {
    throw Napi::Error::New(env, "getsockopt(SO_PEERCRED) returned " + std::to_string(clen) + " bytes, expected " + std::to_string(sizeof cred));
  }
  if (cred.pid <= 0) {
    // Linux reports pid 0 for a socket that has no connected peer (e.g. a listening socket).
    throw Napi::Error::New(env, "getsockopt(SO_PEERCRED) on fd " + std::to_string(fd) + " reported no peer process (pid 0): not a connected socket");
  }

  Napi::Object out = Napi::Object::New(env);
  out.Set("pid", Napi::Number::New(env, cred.pid));
  out.Set("uid", Napi::Number::New(env, cred.uid));
  out.Set("gid", Napi::Number::New(env, cred.gid));

  int pidfd = -1;
  socklen_t plen = sizeof pidfd;
  if (getsockopt(fd, SOL_SOCKET, SO_PEERPIDFD, &pidfd, &plen) == 0) {
    if (plen == sizeof pidfd && pidfd >= 0) {
      // Keep it out of child processes; the caller owns it and must close it.
      fcntl(pidfd, F_SETFD, FD_CLOEXEC);
      out.Set("pidfd", Napi::Number::New(env, pidfd));
    }
  } else {
    const int err = errno;
    // ENOPROTOOPT: kernel older than 6.5 (no SO_PEERPIDFD). Anything else is a real failure,
    // e.g. ESRCH when the peer process has already exited and been reaped.
    if (err != ENOPROTOOPT) {
      throw ErrnoError(env, "getsockopt(SO_PEERPIDFD) on fd " + std::to_string(fd), err);
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// nsmRequest(request: Buffer, maxResponse: number) -> Promise<Buffer>
class NsmWorker : public Napi::AsyncWorker {
 public:
  NsmWorker(Napi::Env env, std::vector<uint8_t> req, size_t maxResp, const std::string& path)
      : Napi::AsyncWorker(env, "sigil.nsmRequest"),
        deferred_(Napi::Promise::Deferred::New(env)),
        request_(std::move(req)),
        response_(maxResp),
        path_(path) {}

  Napi::Promise Promise() { return deferred_.Promise(); }

  void Execute() override {
    Fd f(open(path_.c_str(), O_RDWR | O_CLOEXEC));
    if (f.fd < 0) {
      err_ = errno;
      what_ = "open(" + path_ + ")";
      return;
    }
    struct sigil_nsm_raw raw;
    memset(&raw, 0, sizeof raw);
    raw.request.addr = reinterpret_cast<uint64_t>(request_.data());
    raw.request.len = request_.size();
    raw.response.addr = reinterpret_cast<uint64_t>(response_.data());
    raw.response.len = response_.size();
    int rc;
    do {
      rc = ioctl(f.fd, SIGIL_NSM_IOCTL_REQUEST, &raw);
    } while (rc < 0 && errno == EINTR);
    if (rc < 0) {
      err_ = errno;
      what_ = "ioctl(NSM_IOCTL_REQUEST) on " + path_;
      return;
    }
    if (raw.response.len > response_.size()) {
      err_ = EMSGSIZE;
      what_ = "NSM response length " + std::to_string(raw.response.len) + " exceeds the buffer of " + std::to_string(response_.size());
      return;
    }
    response_.resize(raw.response.len);
  }

  void OnOK() override {
    Napi::Env env = Env();
    if (err_ != 0) {
      deferred_.Reject(ErrnoError(env, what_, err_).Value());
      return;
    }
    deferred_.Resolve(Napi::Buffer<uint8_t>::Copy(env, response_.data(), response_.size()));
  }

  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  Napi::Promise::Deferred deferred_;
  std::vector<uint8_t> request_;
  std::vector<uint8_t> response_;
  std::string path_;
  int err_ = 0;
  std::string what_;
};

Napi::Value NsmRequest(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsBuffer()) {
    throw Napi::TypeError::New(env, "nsmRequest(request, maxResponse?): request must be a Buffer");
  }
  auto buf = info[0].As<Napi::Buffer<uint8_t>>();
  if (buf.Length() == 0 || buf.Length() > kNsmRequestMax) {
    throw Napi::RangeError::New(env, "nsmRequest: request must be 1.." + std::to_string(kNsmRequestMax) + " bytes, got " + std::to_string(buf.Length()));
  }
  size_t maxResp = kNsmResponseMax;
  if (info.Length() >= 2 && !info[1].IsUndefined()) {
    if (!info[1].IsNumber()) throw Napi::TypeError::New(env, "nsmRequest: maxResponse must be a number");
    const double m = info[1].As<Napi::Number>().DoubleValue();
    if (!(m >= 1 && m <= 1048576) || m != static_cast<double>(static_cast<size_t>(m))) {
      throw Napi::RangeError::New(env, "nsmRequest: maxResponse must be an integer in 1..1048576");
    }
    maxResp = static_cast<size_t>(m);
  }
  std::string path = "/dev/nsm";
  if (info.Length() >= 3 && info[2].IsString()) path = info[2].As<Napi::String>().Utf8Value();
  std::vector<uint8_t> req(buf.Data(), buf.Data() + buf.Length());
  auto* w = new NsmWorker(env, std::move(req), maxResp, path);
  Napi::Promise p = w->Promise();
  w->Queue();
  return p;
}

// ---------------------------------------------------------------------------------------------
// snpGetExtReport(reportData: Buffer(64), vmpl: number, certsBufferLen: number)
//   -> Promise<{ response: Buffer (the 4000-byte MSG_REPORT_RSP area), certs: Buffer }>
class SnpWorker : public Napi::AsyncWorker {
 public:
  SnpWorker(Napi::Env env, const uint8_t* userData, uint32_t vmpl, size_t certsLen, const std::string& path)
      : Napi::AsyncWorker(env, "sigil.snpGetExtReport"),
        deferred_(Napi::Promise::Deferred::New(env)),
        vmpl_(vmpl),
        certs_(certsLen),
        path_(path) {
    memcpy(userData_, userData, 64);
  }

  Napi::Promise Promise() { return deferred_.Promise(); }

  void Execute() override {
    Fd f(open(path_.c_str(), O_RDWR | O_CLOEXEC));
    if (f.fd < 0) {
      err_ = errno;
      what_ = "open(" + path_ + ")";
      return;
    }
    // The kernel reports the needed certificate length when ours is too small; retry once with it.
    for (int attempt = 0; attempt < 2; attempt++) {
      struct sigil_snp_ext_report_req req;
      struct sigil_snp_report_resp resp;
      struct sigil_snp_guest_request_ioctl guest;
      memset(&req, 0, sizeof req);
      memset(&resp, 0, sizeof resp);
      memset(&guest, 0, sizeof guest);
      memcpy(req.data.user_data, userData_, 64);
      req.data.vmpl = vmpl_;
      req.certs_address = reinterpret_cast<uint64_t>(certs_.data());
      req.certs_len = static_cast<uint32_t>(certs_.size());
      guest.msg_version = 1;
      guest.req_data = reinterpret_cast<uint64_t>(&req);
      guest.resp_data = reinterpret_cast<uint64_t>(&resp);
      int rc;
      do {
        rc = ioctl(f.fd, SIGIL_SNP_GET_EXT_REPORT, &guest);
      } while (rc < 0 && errno == EINTR);
      if (rc == 0) {
        response_.assign(resp.data, resp.data + sizeof resp.data);
        return;
      }
      err_ = errno;
      fwError_ = guest.fw_error;
      vmmError_ = guest.vmm_error;
      if (vmmError_ == kSnpVmmErrInvalidLen && attempt == 0 && req.certs_len > certs_.size() && req.certs_len <= kSnpCertsMax) {
        certs_.assign(req.certs_len, 0);
        err_ = 0;
        continue;
      }
      what_ = "ioctl(SNP_GET_EXT_REPORT) on " + path_ + " (fw_error 0x" + Hex(fwError_) + ", vmm_error 0x" + Hex(vmmError_) +
              (vmmError_ == kSnpVmmErrInvalidLen ? ": certificate buffer too small, need " + std::to_string(req.certs_len) + " bytes"
               : vmmError_ == kSnpVmmErrBusy   ? ": host busy, retry later"
                                               : "") +
              ")";
      return;
    }
  }

  void OnOK() override {
    Napi::Env env = Env();
    if (err_ != 0) {
      Napi::Error e = ErrnoError(env, what_, err_);
      e.Set("fwError", Napi::Number::New(env, fwError_));
      e.Set("vmmError", Napi::Number::New(env, vmmError_));
      deferred_.Reject(e.Value());
      return;
    }
    Napi::Object out = Napi::Object::New(env);
    out.Set("response", Napi::Buffer<uint8_t>::Copy(env, response_.data(), response_.size()));
    out.Set("certs", Napi::Buffer<uint8_t>::Copy(env, certs_.data(), certs_.size()));
    deferred_.Resolve(out);
  }

  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  static std::string Hex(uint32_t v) {
    char b[16];
    snprintf(b, sizeof b, "%x", v);
    return b;
  }
  Napi::Promise::Deferred deferred_;
  uint8_t userData_[64];
  uint32_t vmpl_;
  std::vector<uint8_t> certs_;
  std::vector<uint8_t> response_;
  std::string path_;
  int err_ = 0;
  uint32_t fwError_ = 0;
  uint32_t vmmError_ = 0;
  std::string what_;
};

Napi::Value SnpGetExtReport(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 3 || !info[0].IsBuffer() || !info[1].IsNumber() || !info[2].IsNumber()) {
    throw Napi::TypeError::New(env, "snpGetExtReport(reportData: Buffer, vmpl: number, certsBufferLen: number)");
  }
  auto rd = info[0].As<Napi::Buffer<uint8_t>>();
  if (rd.Length() != 64) {
    throw Napi::RangeError::New(env, "snpGetExtReport: reportData must be exactly 64 bytes, got " + std::to_string(rd.Length()));
  }
  const double vmpl = info[1].As<Napi::Number>().DoubleValue();
  if (!(vmpl >= 0 && vmpl <= 3) || vmpl != static_cast<double>(static_cast<int>(vmpl))) {
    throw Napi::RangeError::New(env, "snpGetExtReport: vmpl must be an integer 0..3");
  }
  const double cl = info[2].As<Napi::Number>().DoubleValue();
  if (!(cl >= 0 && cl <= static_cast<double>(kSnpCertsMax)) || cl != static_cast<double>(static_cast<size_t>(cl))) {
    throw Napi::RangeError::New(env, "snpGetExtReport: certsBufferLen must be an integer 0.." + std::to_string(kSnpCertsMax));
  }
  // The driver requires a page-aligned, non-zero certificate buffer.
  size_t certsLen = static_cast<size_t>(cl);
  certsLen = certsLen == 0 ? kSnpPage : ((certsLen + kSnpPage - 1) / kSnpPage) * kSnpPage;
  std::string path = "/dev/sev-guest";
  if (info.Length() >= 4 && info[3].IsString()) path = info[3].As<Napi::String>().Utf8Value();
  auto* w = new SnpWorker(env, rd.Data(), static_cast<uint32_t>(vmpl), certsLen, path);
  Napi::Promise p = w->Promise();
  w->Queue();
  return p;
}

// ---------------------------------------------------------------------------------------------
// listenUnix(path, backlog, onAccept(fd), onError(err)) -> listener
//
// The socket is created, bound and put into listening state here, watched with a uv_poll handle
// on Node's own event loop, and every connection is accepted here (accept4, non-blocking,
// close-on-exec): onAccept gets the new fd, which JS owns from then on. When accept fails for
// want of resources (EMFILE, ENFILE, ENOBUFS, ENOMEM), the handle stops watching (a pending
// connection would otherwise wake the loop again at once) and onError is told; JS calls
// resumeUnixListener after a pause. The listening fd is closed by closeUnixListener, or at the
// latest when the Node environment shuts down (an async cleanup hook, so that a worker thread's
// loop never ends with the handle open).
struct UnixListener {
  uv_poll_t poll;
  int fd = -1;
  napi_env env = nullptr;
  Napi::FunctionReference onAccept;
  Napi::FunctionReference onError;
  napi_async_context asyncContext = nullptr;
  napi_async_cleanup_hook_handle cleanupHook = nullptr;
  bool closing = false;
  // Freed when both the uv handle has closed and JS's handle on it (the External) is gone.
  bool handleClosed = false;
  bool externalGone = false;
};

constexpr int kAcceptsPerWake = 64;

void ListenerClosed(uv_handle_t* h) {
  auto* l = static_cast<UnixListener*>(h->data);
  if (l->fd >= 0) close(l->fd);
  l->fd = -1;
  if (l->asyncContext != nullptr) napi_async_destroy(l->env, l->asyncContext);
  l->onAccept.Reset();
  l->onError.Reset();
  napi_async_cleanup_hook_handle hook = l->cleanupHook;
  l->cleanupHook = nullptr;
  l->handleClosed = true;
  if (l->externalGone) delete l;
  if (hook != nullptr) napi_remove_async_cleanup_hook(hook);
}

void CloseListener(UnixListener* l) {
  if (l->closing) return;
  l->closing = true;
  uv_poll_stop(&l->poll);
  uv_close(reinterpret_cast<uv_handle_t*>(&l->poll), ListenerClosed);
}

void ListenerCleanup(napi_async_cleanup_hook_handle handle, void* arg) {
  auto* l = static_cast<UnixListener*>(arg);
  if (l->closing) return;  // its close callback removes the hook
  CloseListener(l);
}

// Calls fn(arg) as a callback from the event loop; an exception it throws becomes an uncaught
// exception of the process, as it would from any Node event.
void CallBack(UnixListener* l, Napi::FunctionReference& fn, napi_value arg) {
  Napi::Env env(l->env);
  try {
    fn.MakeCallback(env.Global(), {arg}, l->asyncContext);
  } catch (const Napi::Error& e) {
    napi_fatal_exception(l->env, e.Value());
  }
}

void ListenerReadable(uv_poll_t* h, int status, int events) {
  auto* l = static_cast<UnixListener*>(h->data);
  if (l->closing) return;
  Napi::Env env(l->env);
  Napi::HandleScope scope(env);
  if (status < 0) {
    uv_poll_stop(&l->poll);
    Napi::Error e = Napi::Error::New(env, std::string("poll on the listening socket: ") + uv_strerror(status));
    CallBack(l, l->onError, e.Value());
    return;
  }
  for (int i = 0; i < kAcceptsPerWake && !l->closing; i++) {
    const int c = accept4(l->fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (c < 0) {
      const int err = errno;
      if (err == EINTR || err == ECONNABORTED || err == EPROTO) continue;
      if (err == EAGAIN || err == EWOULDBLOCK) return;
      uv_poll_stop(&l->poll);
      CallBack(l, l->onError, ErrnoError(env, "accept4 on the listening socket", err).Value());
      return;
    }
    CallBack(l, l->onAccept, Napi::Number::New(env, c));
  }
}

UnixListener* ListenerOf(const Napi::CallbackInfo& info, const char* fn) {
  if (info.Length() < 1 || !info[0].IsExternal()) {
    throw Napi::TypeError::New(info.Env(), std::string(fn) + "(listener): not a listener from listenUnix");
  }
  return info[0].As<Napi::External<UnixListener>>().Data();
}

Napi::Value ListenUnix(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 4 || !info[0].IsString() || !info[1].IsNumber() || !info[2].IsFunction() || !info[3].IsFunction()) {
    throw Napi::TypeError::New(env, "listenUnix(path: string, backlog: number, onAccept: (fd) => void, onError: (err) => void)");
  }
  const std::string path = info[0].As<Napi::String>().Utf8Value();
  struct sockaddr_un addr;
  memset(&addr, 0, sizeof addr);
  addr.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof addr.sun_path || path.find('\0') != std::string::npos) {
    throw Napi::RangeError::New(env, "listenUnix: path must be 1.." + std::to_string(sizeof addr.sun_path - 1) + " bytes without NUL");
  }
  memcpy(addr.sun_path, path.data(), path.size());
  const double b = info[1].As<Napi::Number>().DoubleValue();
  if (!(b >= 1 && b <= 65535) || b != static_cast<double>(static_cast<int>(b))) {
    throw Napi::RangeError::New(env, "listenUnix: backlog must be an integer 1..65535");
  }

  Fd s(socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (s.fd < 0) throw ErrnoError(env, "socket(AF_UNIX)", errno);
  if (bind(s.fd, reinterpret_cast<struct sockaddr*>(&addr), sizeof addr) != 0) throw ErrnoError(env, "bind " + path, errno);
  if (listen(s.fd, static_cast<int>(b)) != 0) throw ErrnoError(env, "listen " + path, errno);

  uv_loop_t* loop = nullptr;
  if (napi_get_uv_event_loop(env, &loop) != napi_ok || loop == nullptr) throw Napi::Error::New(env, "listenUnix: no event loop");
  auto* l = new UnixListener();
  l->env = env;
  const int pr = uv_poll_init(loop, &l->poll, s.fd);
  if (pr != 0) {
    delete l;
    throw Napi::Error::New(env, std::string("listenUnix: uv_poll_init: ") + uv_strerror(pr));
  }
  l->poll.data = l;
  l->fd = s.fd;
  s.fd = -1;  // owned by the listener now
  l->onAccept = Napi::Persistent(info[2].As<Napi::Function>());
  l->onError = Napi::Persistent(info[3].As<Napi::Function>());
  napi_async_init(env, Napi::Object::New(env), Napi::String::New(env, "sigil.UnixListener"), &l->asyncContext);
  napi_add_async_cleanup_hook(env, ListenerCleanup, l, &l->cleanupHook);
  const int sr = uv_poll_start(&l->poll, UV_READABLE, ListenerReadable);
  if (sr != 0) {
    CloseListener(l);
    throw Napi::Error::New(env, std::string("listenUnix: uv_poll_start: ") + uv_strerror(sr));
  }
  return Napi::External<UnixListener>::New(env, l, [](Napi::Env, UnixListener* gone) {
    gone->externalGone = true;
    if (gone->handleClosed) delete gone;
    else CloseListener(gone);  // dropped without closeUnixListener: stop it now
  });
}

Napi::Value CloseUnixListener(const Napi::CallbackInfo& info) {
  CloseListener(ListenerOf(info, "closeUnixListener"));
  return info.Env().Undefined();
}

Napi::Value ResumeUnixListener(const Napi::CallbackInfo& info) {
  UnixListener* l = ListenerOf(info, "resumeUnixListener");
  if (!l->closing) {
    const int r = uv_poll_start(&l->poll, UV_READABLE, ListenerReadable);
    if (r != 0) throw Napi::Error::New(info.Env(), std::string("resumeUnixListener: uv_poll_start: ") + uv_strerror(r));
  }
  return info.Env().Undefined();
}

// Some glibc versions refuse thresholds above HEAP_MAX_SIZE / 2 (32 MiB on 64-bit): "refused".
Napi::Value SetMallocMmapThreshold(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsNumber()) throw Napi::TypeError::New(env, "setMallocMmapThreshold: bytes must be a number");
  const double bytes = info[0].As<Napi::Number>().DoubleValue();
  if (!(bytes >= 0 && bytes <= 2147483647.0) || bytes != static_cast<double>(static_cast<int64_t>(bytes))) {
    throw Napi::RangeError::New(env, "setMallocMmapThreshold: bytes must be an integer from 0 to 2^31-1");
  }
#if defined(__GLIBC__)
  return Napi::String::New(env, mallopt(M_MMAP_THRESHOLD, static_cast<int>(bytes)) == 1 ? "set" : "refused");
#else
  return Napi::String::New(env, "not_glibc");
#endif
}

Napi::Value MallocStats(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 33))
  const struct mallinfo2 m = mallinfo2();
  Napi::Object o = Napi::Object::New(env);
  o.Set("mmappedChunks", Napi::Number::New(env, static_cast<double>(m.hblks)));
  o.Set("mmappedBytes", Napi::Number::New(env, static_cast<double>(m.hblkhd)));
  o.Set("heapInUseBytes", Napi::Number::New(env, static_cast<double>(m.uordblks)));
  return o;
#else
  return env.Null();
#endif
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("peerCred", Napi::Function::New(env, PeerCred, "peerCred"));
  exports.Set("nsmRequest", Napi::Function::New(env, NsmRequest, "nsmRequest"));
  exports.Set("snpGetExtReport", Napi::Function::New(env, SnpGetExtReport, "snpGetExtReport"));
  exports.Set("listenUnix", Napi::Function::New(env, ListenUnix, "listenUnix"));
  exports.Set("closeUnixListener", Napi::Function::New(env, CloseUnixListener, "closeUnixListener"));
  exports.Set("resumeUnixListener", Napi::Function::New(env, ResumeUnixListener, "resumeUnixListener"));
  exports.Set("setMallocMmapThreshold", Napi::Function::New(env, SetMallocMmapThreshold, "setMallocMmapThreshold"));
  exports.Set("mallocStats", Napi::Function::New(env, MallocStats, "mallocStats"));
  exports.Set("soPeerPidfd", Napi::Number::New(env, SO_PEERPIDFD));
  return exports;
}

}  // namespace

NODE_API_MODULE(sigil_sys, Init)
