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

#include "errno_worker.h"

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

struct AlignedFree {
  void operator()(uint8_t* p) const { std::free(p); }
};

// In a pool thread: opens `path` with O_DIRECT, reads each range (widened to the
// alignment), keeps exactly the requested bytes (fewer at the end of the device), closes.
SysError ReadRanges(const std::string& path, const std::vector<Range>& ranges, std::vector<std::vector<uint8_t>>& out) {
  int fd;
  do {
    fd = ::open(path.c_str(), O_RDONLY | O_DIRECT | O_CLOEXEC | O_NOCTTY);
  } while (fd < 0 && errno == EINTR);
  if (fd < 0) return Fail(errno, "open", path);
  for (const Range& r : ranges) {
    uint64_t start = r.offset & ~(kAlign - 1);
    uint64_t end = (r.offset + r.length + kAlign - 1) & ~(kAlign - 1);
    size_t want = static_cast<size_t>(end - start);
    void* raw = nullptr;
    int rc = posix_memalign(&raw, kAlign, want);
    if (rc != 0) {
      ::close(fd);
      out.clear();
      return Fail(rc, "read", path);
    }
    std::unique_ptr<uint8_t, AlignedFree> buf(static_cast<uint8_t*>(raw));
    size_t got = 0;
    while (got < want) {
      ssize_t n = ::pread(fd, buf.get() + got, want - got, static_cast<off_t>(start + got));
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) {
        int e = errno != 0 ? errno : EIO;
        ::close(fd);
        out.clear();
        return Fail(e, "read", path);
      }
      if (n == 0) break;  // end of the device
      got += static_cast<size_t>(n);
    }
    uint64_t skip = r.offset - start;
    size_t keep = got > skip ? static_cast<size_t>(std::min<uint64_t>(got - skip, r.length)) : 0;
    out.emplace_back(buf.get() + skip, buf.get() + skip + keep);
  }
  ::close(fd);
  return {};
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
  if (info.Length() < 2 || !info[0].IsString() || !info[1].IsArray()) return RejectedPromise(env, Napi::TypeError::New(env, usage));
  std::string path = info[0].As<Napi::String>().Utf8Value();
  if (path.empty() || path.find('\0') != std::string::npos) return RejectedPromise(env, Napi::TypeError::New(env, "readDirect: bad path"));
  Napi::Array list = info[1].As<Napi::Array>();
  if (list.Length() == 0 || list.Length() > kMaxRanges) {
    return RejectedPromise(env, Napi::RangeError::New(env, "readDirect: 1 to " + std::to_string(kMaxRanges) + " ranges"));
  }
  std::vector<Range> ranges;
  uint64_t total = 0;
  for (uint32_t i = 0; i < list.Length(); i++) {
    Napi::Value item = list.Get(i);
    Range r{};
    if (!item.IsObject() || !SafeUint(item.As<Napi::Object>().Get("offset"), r.offset) ||
        !SafeUint(item.As<Napi::Object>().Get("length"), r.length) || r.length == 0) {
      return RejectedPromise(env, Napi::TypeError::New(env, usage));
    }
    total += r.length;
    if (total > kMaxBytes) return RejectedPromise(env, Napi::RangeError::New(env, "readDirect: more than 16 MiB asked"));
    ranges.push_back(r);
  }
  // Errors are shaped like Node's fs errors (errno_worker.h): `code` the errno name, `errno` negative.
  auto results = std::make_shared<std::vector<std::vector<uint8_t>>>();
  return ErrnoWorker::Start(
      env, "a direct read",
      [path = std::move(path), ranges = std::move(ranges), results]() { return ReadRanges(path, ranges, *results); },
      [results](Napi::Env env) -> Napi::Value {
        Napi::Array out = Napi::Array::New(env, results->size());
        for (size_t i = 0; i < results->size(); i++) {
          out.Set(i, Napi::Buffer<uint8_t>::Copy(env, (*results)[i].data(), (*results)[i].size()));
        }
        return out;
      });
}

}  // namespace virt
