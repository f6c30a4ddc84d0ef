#pragma once

#include "common.h"

#include <atomic>
#include <memory>
#include <mutex>
#include <vector>

namespace virt {

// Shared by every libvirt callback registered for one connection (close callback,
// domain events). Each registration holds a reference, dropped by libvirt's free
// callback, so the thread-safe function is released only when libvirt can no longer
// call into it — from whichever thread drops the last reference. The tsfn itself
// tolerates env teardown (SafeTsfn).
struct CallbackContext {
  std::shared_ptr<SafeTsfn> tsfn;
  std::atomic<int> refs{1};
  CallbackContext() { Counts().contexts++; }
  ~CallbackContext() { Counts().contexts--; }
  void Ref() { refs.fetch_add(1); }
  void Unref() {
    if (refs.fetch_sub(1) == 1) {
      if (tsfn) tsfn->Release();  // null when creating it failed
      delete this;
    }
  }
};

// What a connection's calls share with close(): event registration and close are
// serialised here, and a registration that comes after close() is refused, so nothing
// registered can outlive the close (a live registration holds the connection open).
struct ConnState : std::enable_shared_from_this<ConnState> {
  std::mutex mutex;
  bool closed = false;
  std::vector<int> eventIds;
  // The close callback's context reference, held here rather than by libvirt's free
  // callback: local drivers accept the registration and never call it.
  CallbackContext* closeCbCtx = nullptr;
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
  CallbackContext* ctx_ = nullptr;  // this object's own reference
  std::shared_ptr<ConnState> state_;
};

}  // namespace virt
