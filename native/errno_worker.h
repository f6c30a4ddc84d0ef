// The errno-flavoured sibling of PromiseWorker (common.h): plain system calls (loop
// ioctls, /proc scans) run on the addon's executor like the libvirt calls, and a failure
// becomes an Error shaped like Node's own SystemError: `code` is the errno name
// ('EBUSY'), `errno` the negative number (as util.getSystemErrorName expects), `syscall`
// and `path` say what failed.
#pragma once

#include "common.h"

#include <cerrno>
#include <cstring>
#include <functional>
#include <string>

namespace virt {

struct SysError {
  int err = 0;  // 0: success
  std::string syscall;
  std::string path;
  std::string detail;  // replaces strerror() in the message when set
};

inline SysError Fail(int err, std::string syscall, std::string path, std::string detail = "") {
  return SysError{err, std::move(syscall), std::move(path), std::move(detail)};
}

inline Napi::Error MakeSysError(Napi::Env env, const SysError& e) {
  const char* name = strerrorname_np(e.err);
  std::string code = name != nullptr ? name : "E" + std::to_string(e.err);
  std::string message = code + ": " + (e.detail.empty() ? std::strerror(e.err) : e.detail) + ", " + e.syscall;
  if (!e.path.empty()) message += " '" + e.path + "'";
  Napi::Error err = Napi::Error::New(env, message);
  err.Set("code", Napi::String::New(env, code));
  err.Set("errno", Napi::Number::New(env, -e.err));
  err.Set("syscall", Napi::String::New(env, e.syscall));
  if (!e.path.empty()) err.Set("path", Napi::String::New(env, e.path));
  return err;
}

// Runs `exec` on the executor and settles a promise on the JS thread. `exec` returns a
// SysError (err 0 on success) and leaves its result where `done` (JS thread) finds it.
class ErrnoWorker : public Settleable {
 public:
  using Exec = std::function<SysError()>;
  using Done = std::function<Napi::Value(Napi::Env)>;

  static Napi::Promise Start(Napi::Env env, const char* what, Exec exec, Done done) {
    auto* data = env.GetInstanceData<AddonData>();
    auto d = Napi::Promise::Deferred::New(env);
    Napi::Promise p = d.Promise();
    auto* w = new ErrnoWorker(data->settler, d, what, std::move(exec), std::move(done));
    data->settler->Begin(env);
    try {
      Executor::Get().Submit([w]() { w->Execute(); });
    } catch (const std::exception& e) {
      data->settler->End(env);
      delete w;
      d.Reject(Napi::Error::New(env, std::string("cannot start ") + what + ": " + e.what()).Value());
    }
    return p;
  }

  ~ErrnoWorker() override { Counts().calls--; }

  void Settle(Napi::Env env) override {
    settler_->End(env);
    if (err_.err != 0) {
      deferred_.Reject(MakeSysError(env, err_).Value());
      return;
    }
    try {
      deferred_.Resolve(done_ ? done_(env) : env.Undefined());
    } catch (const Napi::Error& e) {
      deferred_.Reject(e.Value());
    }
  }

 private:
  ErrnoWorker(std::shared_ptr<Settler> settler, Napi::Promise::Deferred deferred, const char* what, Exec exec, Done done)
      : settler_(std::move(settler)), deferred_(deferred), what_(what), exec_(std::move(exec)), done_(std::move(done)) {
    Counts().calls++;
  }

  // In a pool thread.
  void Execute() {
    try {
      err_ = exec_();
    } catch (const std::exception& e) {
      err_ = Fail(ENOMEM, what_, "", e.what());
    }
    exec_ = nullptr;
    std::shared_ptr<Settler> settler = settler_;
    if (!settler->Post(this)) delete this;  // env gone: nobody to settle for
  }

  std::shared_ptr<Settler> settler_;
  Napi::Promise::Deferred deferred_;
  std::string what_;
  Exec exec_;
  Done done_;
  SysError err_;
};

}  // namespace virt
