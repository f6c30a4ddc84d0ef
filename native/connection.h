#pragma once

#include "common.h"

#include <atomic>
#include <mutex>
#include <vector>

namespace virt {

// Shared by every libvirt callback registered for one connection (close callback,
// domain events). Each registration holds a reference, dropped by libvirt's free
// callback, so the thread-safe function is released only when libvirt can no longer
// call into it — from whichever thread drops the last reference.
struct CallbackContext {
  Napi::ThreadSafeFunction tsfn;
  std::atomic<int> refs{1};
  void Ref() { refs.fetch_add(1); }
  void Unref() {
    if (refs.fetch_sub(1) == 1) {
      tsfn.Release();
      delete this;
    }
  }
};

class Connection : public Napi::ObjectWrap<Connection> {
 public:
  static Napi::Function Init(Napi::Env env);
  static Napi::Value Open(const Napi::CallbackInfo& info);

  explicit Connection(const Napi::CallbackInfo& info);
  ~Connection() override;

 private:
  Napi::Value Close(const Napi::CallbackInfo& info);
  Napi::Value IsAlive(const Napi::CallbackInfo& info);
  Napi::Value SetKeepAlive(const Napi::CallbackInfo& info);
  Napi::Value ListAllDomains(const Napi::CallbackInfo& info);
  Napi::Value LookupByUUIDString(const Napi::CallbackInfo& info);
  Napi::Value LookupByName(const Napi::CallbackInfo& info);
  Napi::Value DefineXML(const Napi::CallbackInfo& info);
  Napi::Value CreateXML(const Napi::CallbackInfo& info);
  Napi::Value RegisterDomainEvents(const Napi::CallbackInfo& info);
  Napi::Value DeregisterDomainEvents(const Napi::CallbackInfo& info);

  virConnectPtr Checked(const Napi::CallbackInfo& info);

  virConnectPtr conn_ = nullptr;
  CallbackContext* ctx_ = nullptr;
  // Domain event callback ids; guarded because (de)registration runs on pool threads.
  std::shared_ptr<std::mutex> eventsMutex_ = std::make_shared<std::mutex>();
  std::shared_ptr<std::vector<int>> eventIds_ = std::make_shared<std::vector<int>>();
};

}  // namespace virt
