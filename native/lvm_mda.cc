// readDirect(path, ranges): O_DIRECT reads for the LVM metadata-area check
// (src/infra/storage/lvm.mda.ts parses what it returns).
//
// Why native: the check must see what another host wrote to shared storage, so it reads
// with O_DIRECT, past this host's page cache. O_DIRECT needs buffers aligned to the
// device's DMA alignment (511 on loop devices here), and Node cannot ask for an aligned
// Buffer: measured here, ~13% of plain `fs.readSync` O_DIRECT reads into Node Buffers
// fail with EINVAL. And a read of shared storage may hang (a SAN path down): it runs on
// the addon's executor, where a stuck thread is left behind, never on the libuv pool
// that fs and dns share.
#include "lvm_mda.h"

#include "common.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

namespace virt {

namespace {

// Covers 512- and 4096-byte logical sectors alike.
constexpr uint64_t kAlign = 4096;
constexpr size_t kMaxRanges = 16;
constexpr uint64_t kMaxBytes = 16ull << 20;  // per call, all ranges together

struct Range {
  uint64_t offset;
  uint64_t length;
};

std::string ErrnoName(int e) {
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 32))
  const char* name = strerrorname_np(e);
  if (name != nullptr) return name;
#endif
  return "E" + std::to_string(e);
}

struct AlignedFree {
  void operator()(uint8_t* p) const { std::free(p); }
};

// One call: opens `path` with O_DIRECT, reads each range (widened to the alignment),
// keeps exactly the requested bytes (fewer at the end of the device), closes.
class DirectReadWorker : public Settleable {
 public:
  static Napi::Promise Start(Napi::Env env, std::string path, std::vector<Range> ranges) {
    auto* data = env.GetInstanceData<AddonData>();
    auto d = Napi::Promise::Deferred::New(env);
    Napi::Promise p = d.Promise();
    auto* w = new DirectReadWorker(data->settler, d, std::move(path), std::move(ranges));
    data->settler->Begin(env);
    try {
      Executor::Get().Submit([w]() { w->Execute(); });
    } catch (const std::exception& e) {
      data->settler->End(env);
      delete w;
      d.Reject(Napi::Error::New(env, std::string("cannot start a direct read: ") + e.what()).Value());
    }
    return p;
  }

  ~DirectReadWorker() override { Counts().calls--; }

  void Settle(Napi::Env env) override {
    settler_->End(env);
    if (errno_ != 0) {
      // Shaped like Node's fs errors: `code` the errno name, `errno` negative.
      std::string code = ErrnoName(errno_);
      Napi::Error err = Napi::Error::New(env, code + ": " + std::strerror(errno_) + ", " + syscall_ + " '" + path_ + "'");
      err.Set("code", Napi::String::New(env, code));
      err.Set("errno", Napi::Number::New(env, -errno_));
      err.Set("syscall", Napi::String::New(env, syscall_));
      err.Set("path", Napi::String::New(env, path_));
      deferred_.Reject(err.Value());
      return;
    }
    try {
      Napi::Array out = Napi::Array::New(env, results_.size());
      for (size_t i = 0; i < results_.size(); i++) {
        out.Set(i, Napi::Buffer<uint8_t>::Copy(env, results_[i].data(), results_[i].size()));
      }
      deferred_.Resolve(out);
    } catch (const Napi::Error& e) {
      deferred_.Reject(e.Value());
    }
  }

 private:
  DirectReadWorker(std::shared_ptr<Settler> settler, Napi::Promise::Deferred deferred, std::string path,
                   std::vector<Range> ranges)
      : settler_(std::move(settler)), deferred_(deferred), path_(std::move(path)), ranges_(std::move(ranges)) {
    Counts().calls++;
  }

  void Fail(const char* syscall, int e) {
    syscall_ = syscall;
    errno_ = e != 0 ? e : EIO;
  }

  // In a pool thread.
  void Execute() {
    try {
      Read();
    } catch (const std::exception&) {
      results_.clear();
      Fail("read", ENOMEM);
    }
    std::shared_ptr<Settler> settler = settler_;
    if (!settler->Post(this)) delete this;  // env gone: nobody to settle for
  }

  void Read() {
    int fd;
    do {
      fd = ::open(path_.c_str(), O_RDONLY | O_DIRECT | O_CLOEXEC | O_NOCTTY);
    } while (fd < 0 && errno == EINTR);
    if (fd < 0) return Fail("open", errno);
    for (const Range& r : ranges_) {
      uint64_t start = r.offset & ~(kAlign - 1);
      uint64_t end = (r.offset + r.length + kAlign - 1) & ~(kAlign - 1);
      size_t want = static_cast<size_t>(end - start);
      void* raw = nullptr;
      int rc = posix_memalign(&raw, kAlign, want);
      if (rc != 0) {
        ::close(fd);
        results_.clear();
        return Fail("read", rc);
      }
      std::unique_ptr<uint8_t, AlignedFree> buf(static_cast<uint8_t*>(raw));
      size_t got = 0;
      while (got < want) {
        ssize_t n = ::pread(fd, buf.get() + got, want - got, static_cast<off_t>(start + got));
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) {
          int e = errno;
          ::close(fd);
          results_.clear();
          return Fail("read", e);
        }
        if (n == 0) break;  // end of the device
        got += static_cast<size_t>(n);
      }
      uint64_t skip = r.offset - start;
      size_t keep = got > skip ? static_cast<size_t>(std::min<uint64_t>(got - skip, r.length)) : 0;
      results_.emplace_back(buf.get() + skip, buf.get() + skip + keep);
    }
    ::close(fd);
  }

  std::shared_ptr<Settler> settler_;
  Napi::Promise::Deferred deferred_;
  std::string path_;
  std::vector<Range> ranges_;
  std::vector<std::vector<uint8_t>> results_;
  int errno_ = 0;
  std::string syscall_;
};

Napi::Value Rejected(Napi::Env env, Napi::Error err) {
  auto d = Napi::Promise::Deferred::New(env);
  d.Reject(err.Value());
  return d.Promise();
}

bool SafeUint(Napi::Value v, uint64_t& out) {
  if (!v.IsNumber()) return false;
  double n = v.As<Napi::Number>().DoubleValue();
  if (!(n >= 0 && n <= 9007199254740991.0) || std::floor(n) != n) return false;
  out = static_cast<uint64_t>(n);
  return true;
}

}  // namespace

Napi::Value ReadDirect(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* usage = "readDirect(path, [{ offset, length }, ...])";
  if (info.Length() < 2 || !info[0].IsString() || !info[1].IsArray()) return Rejected(env, Napi::TypeError::New(env, usage));
  std::string path = info[0].As<Napi::String>().Utf8Value();
  if (path.empty() || path.find('\0') != std::string::npos) return Rejected(env, Napi::TypeError::New(env, "readDirect: bad path"));
  Napi::Array list = info[1].As<Napi::Array>();
  if (list.Length() == 0 || list.Length() > kMaxRanges) {
    return Rejected(env, Napi::RangeError::New(env, "readDirect: 1 to " + std::to_string(kMaxRanges) + " ranges"));
  }
  std::vector<Range> ranges;
  uint64_t total = 0;
  for (uint32_t i = 0; i < list.Length(); i++) {
    Napi::Value item = list.Get(i);
    Range r{};
    if (!item.IsObject() || !SafeUint(item.As<Napi::Object>().Get("offset"), r.offset) ||
        !SafeUint(item.As<Napi::Object>().Get("length"), r.length) || r.length == 0) {
      return Rejected(env, Napi::TypeError::New(env, usage));
    }
    total += r.length;
    if (total > kMaxBytes) return Rejected(env, Napi::RangeError::New(env, "readDirect: more than 16 MiB asked"));
    ranges.push_back(r);
  }
  return DirectReadWorker::Start(env, std::move(path), std::move(ranges));
}

}  // namespace virt
