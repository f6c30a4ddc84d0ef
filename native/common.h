// Shared pieces of the binding: libvirt error capture and the promise-returning call
// every libvirt call runs in (on the addon's executor, so the event loop never blocks on
// libvirt and a hung call never holds a libuv thread).
#pragma once

#include <napi.h>
#include "executor.h"
#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>

#include <exception>
#include <functional>
#include <string>

namespace virt {

// A copy of libvirt's thread-local last error, taken in the thread that failed:
// virGetLastError() is per thread, so it must be read in the pool thread, never later.
struct VirtError {
  int code = 0;
  int domain = 0;
  int level = 0;
  std::string message;
};

inline VirtError CaptureError(const char* fallback) {
  VirtError e;
  virErrorPtr last = virGetLastError();
  if (last != nullptr) {
    e.code = last->code;
    e.domain = last->domain;
    e.level = last->level;
    e.message = last->message != nullptr ? last->message : fallback;
  } else {
    e.code = VIR_ERR_INTERNAL_ERROR;
    e.domain = VIR_FROM_NONE;
    e.level = VIR_ERR_ERROR;
    e.message = fallback;
  }
  virResetLastError();
  return e;
}

// For calls that must do more libvirt work after a failure (each entry point resets
// the last error): the lambda captures early, and the worker prefers that copy.
inline thread_local bool tlsHasCaptured = false;
inline thread_local VirtError tlsCaptured;
inline void CaptureNow(const char* fallback) {
  tlsCaptured = CaptureError(fallback);
  tlsHasCaptured = true;
}

inline Napi::Error MakeError(Napi::Env env, const VirtError& e) {
  Napi::Error err = Napi::Error::New(env, e.message);
  err.Set("code", Napi::Number::New(env, e.code));
  err.Set("domain", Napi::Number::New(env, e.domain));
  err.Set("level", Napi::Number::New(env, e.level));
  err.Set("libvirt", Napi::Boolean::New(env, true));
  return err;
}

// Per-addon-instance state (the module may be loaded in several worker threads).
struct AddonData {
  Napi::FunctionReference connectionCtor;
  Napi::FunctionReference domainCtor;
  std::shared_ptr<Settler> settler;
};

// Runs `exec` on the addon's executor and settles a promise on the JS thread. `exec`
// returns false after a failed libvirt call; the error is captured right there, in the
// thread that failed. `done` builds the result on the JS thread; it is destroyed there
// too, or in a pool thread when the env went away meanwhile.
class PromiseWorker : public Settleable {
 public:
  using Exec = std::function<bool()>;
  using Done = std::function<Napi::Value(Napi::Env)>;

  static Napi::Promise Start(Napi::Env env, const char* what, Exec exec, Done done) {
    auto* data = env.GetInstanceData<AddonData>();
    auto d = Napi::Promise::Deferred::New(env);
    Napi::Promise p = d.Promise();
    auto* w = new PromiseWorker(data->settler, d, what, std::move(exec), std::move(done));
    data->settler->Begin(env);
    try {
      Executor::Get().Submit([w]() { w->Execute(); });
    } catch (const std::exception& e) {
      data->settler->End(env);
      delete w;
      d.Reject(Napi::Error::New(env, std::string("cannot start a libvirt call: ") + e.what()).Value());
    }
    return p;
  }

  ~PromiseWorker() override { Counts().calls--; }

  void Settle(Napi::Env env) override {
    settler_->End(env);
    if (failed_) {
      deferred_.Reject(MakeError(env, err_).Value());
      return;
    }
    try {
      deferred_.Resolve(done_ ? done_(env) : env.Undefined());
    } catch (const Napi::Error& e) {
      deferred_.Reject(e.Value());
    }
  }

 private:
  PromiseWorker(std::shared_ptr<Settler> settler, Napi::Promise::Deferred deferred, const char* what, Exec exec,
                Done done)
      : settler_(std::move(settler)),
        deferred_(deferred),
        what_(what),
        exec_(std::move(exec)),
        done_(std::move(done)) {
    Counts().calls++;
  }

  // In a pool thread.
  void Execute() {
    tlsHasCaptured = false;
    bool ok = false;
    try {
      ok = exec_();
    } catch (const std::exception& e) {
      // Only std::bad_alloc and the like: still a rejection, never a lost promise.
      virResetLastError();
      tlsCaptured = VirtError{VIR_ERR_INTERNAL_ERROR, VIR_FROM_NONE, VIR_ERR_ERROR, what_ + ": " + e.what()};
      tlsHasCaptured = true;
    }
    if (!ok) {
      failed_ = true;
      err_ = tlsHasCaptured ? tlsCaptured : CaptureError(what_.c_str());
    }
    tlsHasCaptured = false;
    // Drops the handle references the call captured here, in the pool thread: every
    // libvirt entry point (virDomainFree too) resets the thread's last error, so this
    // must come after the capture, and a last unref may be an RPC.
    exec_ = nullptr;
    std::shared_ptr<Settler> settler = settler_;
    if (!settler->Post(this)) delete this;  // env gone: nobody to settle for
  }

  std::shared_ptr<Settler> settler_;
  Napi::Promise::Deferred deferred_;
  std::string what_;
  Exec exec_;
  Done done_;
  bool failed_ = false;
  VirtError err_;
};

inline Napi::Promise RejectedPromise(Napi::Env env, const Napi::Error& err) {
  auto d = Napi::Promise::Deferred::New(env);
  d.Reject(err.Value());
  return d.Promise();
}

inline Napi::Promise RejectedPromise(Napi::Env env, const std::string& message) {
  return RejectedPromise(env, Napi::Error::New(env, message));
}

void EnsureEventLoop(Napi::Env env);

}  // namespace virt
