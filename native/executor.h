// The addon's own thread pool, and the thread-safe functions that bring results back to
// JS. libvirt calls used to run on the libuv pool, which fs and dns share: a call that
// hangs (a VM's QEMU stopped, libvirtd stopped) held one of its 4 threads for good. Here
// (in the spirit of vdsm's executor) a blocked thread is simply left behind and new work
// gets a new thread, up to a cap; idle threads retire.
#pragma once

#include <napi.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>

namespace virt {

// Live native objects, process-wide, for leak tests (`debugCounts()`).
struct DebugCounts {
  std::atomic<long> calls{0};        // calls submitted and not yet settled or dropped
  std::atomic<long> contexts{0};     // CallbackContext (one per open connection)
  std::atomic<long> tsfns{0};        // thread-safe functions not yet finalized by Node
  std::atomic<long> connections{0};  // Connection wrappers
  std::atomic<long> domains{0};      // Domain wrappers
  // Failpoints (`debugFailpoint()`), each a real libvirt failure made on purpose:
  // the next N listAllDomains queries pass isActive a null domain;
  std::atomic<int> failListIsActive{0};
  // the next registerDomainEvents registers an invalid event id as its K-th (0-based).
  std::atomic<int> failEventRegistrationAt{-1};
};
DebugCounts& Counts();

struct ExecutorStats {
  size_t threads;
  size_t busy;
  size_t idle;
  size_t queued;
};

// Process-wide (libvirt handles are process-wide; worker_threads share it). Never
// destroyed: at exit, threads may still be blocked inside libvirt.
class Executor {
 public:
  static Executor& Get();

  // FIFO. Throws std::system_error only when no thread exists and none can be started.
  void Submit(std::function<void()> task);
  // Hands a release (virDomainFree, virConnectClose…) to the pool: finalizers run on the
  // JS thread, and a last unref of a remote handle is an RPC. Never throws; if no thread
  // can be started the handle is leaked rather than released on the JS thread.
  void Release(std::function<void()> task) noexcept;

  void Configure(size_t maxThreads, std::chrono::milliseconds idleTimeout);
  size_t MaxThreads();
  std::chrono::milliseconds IdleTimeout();
  ExecutorStats Stats();

 private:
  Executor() = default;
  void SpawnLocked();
  void Loop();

  std::mutex m_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> queue_;
  size_t threads_ = 0;
  size_t busy_ = 0;
  size_t waiting_ = 0;   // threads blocked in cv_.wait, each will take one queued task
  size_t starting_ = 0;  // threads started and not yet in Loop(): each will take one too
  size_t max_ = 64;
  std::chrono::milliseconds idle_{10000};
};

// A napi_threadsafe_function that any thread may call at any time. After Release() or
// after Node finalized it (the env was torn down: a worker_thread exited), Call() returns
// false instead of touching freed memory; the caller keeps ownership of `data` then.
class SafeTsfn {
 public:
  // `fn` may be nullptr (then `callJs` does all the work). Starts unref'd.
  static std::shared_ptr<SafeTsfn> New(napi_env env, napi_value fn, const char* name,
                                       napi_threadsafe_function_call_js callJs, void* context);
  bool Call(void* data);
  void Release();
  // Main thread only.
  void Ref(napi_env env);
  void Unref(napi_env env);

 private:
  static void Finalize(napi_env env, void* data, void* hint);
  // Recursive: Node must never finalize synchronously inside a call we make under it,
  // but if it ever did, a plain mutex would deadlock the JS thread.
  std::recursive_mutex m_;
  napi_threadsafe_function tsfn_ = nullptr;
  bool open_ = false;
};

// Leaves `e` pending in JS (Node reports it as uncaught) without ever throwing in C++:
// for C callbacks (tsfn call_js), where a C++ exception would end in std::terminate, and
// where JS may no longer run (env teardown) so napi_throw itself fails.
inline void ThrowToJsQuietly(napi_env env, const Napi::Error& e) noexcept {
  try {
    napi_value v = e.Value();
    if (v != nullptr) napi_throw(env, v);
  } catch (...) {
  }
}

// A finished call, settled on the JS thread; dropped unsettled (env == nullptr in the
// tsfn's callback) when its env was torn down meanwhile.
struct Settleable {
  virtual ~Settleable() = default;
  virtual void Settle(Napi::Env env) = 0;
};

// Per env: settles promises of finished calls on the JS thread, and keeps the event loop
// alive exactly while calls are pending (as AsyncWorker did).
class Settler {
 public:
  static std::shared_ptr<Settler> New(napi_env env);
  // Queues `item` for the JS thread; false (item not taken) once the env is gone.
  bool Post(Settleable* item) { return tsfn->Call(item); }
  std::shared_ptr<SafeTsfn> tsfn;
  size_t pending = 0;  // JS thread only
  void Begin(napi_env env) {
    if (pending++ == 0) tsfn->Ref(env);
  }
  void End(napi_env env) {
    if (--pending == 0) tsfn->Unref(env);
  }
};

}  // namespace virt
