#pragma once

#include "common.h"

namespace virt {

// A domain reference not handed to JS yet (its env may be gone by then): freed on the
// executor, never on the JS thread.
struct OwnedDomain {
  virDomainPtr dom = nullptr;
  OwnedDomain() = default;
  ~OwnedDomain() {
    if (dom == nullptr) return;
    virDomainPtr d = dom;
    Executor::Get().Release([d]() {
      virDomainFree(d);
      virResetLastError();
    });
  }
  virDomainPtr Take() {
    virDomainPtr d = dom;
    dom = nullptr;
    return d;
  }
  OwnedDomain(const OwnedDomain&) = delete;
  OwnedDomain& operator=(const OwnedDomain&) = delete;
};

// A libvirt domain handle. Every method is one libvirt call on the executor; the
// handle is referenced for the duration of each call so GC cannot free it mid-flight.
class Domain : public Napi::ObjectWrap<Domain> {
 public:
  static Napi::Function Init(Napi::Env env);
  // Takes ownership of `dom` (one reference).
  static Napi::Object Wrap(Napi::Env env, virDomainPtr dom);

  explicit Domain(const Napi::CallbackInfo& info);
  ~Domain() override;

 private:
  Napi::Value GetName(const Napi::CallbackInfo& info);
  Napi::Value GetUUID(const Napi::CallbackInfo& info);
  Napi::Value XMLDesc(const Napi::CallbackInfo& info);
  Napi::Value IsActive(const Napi::CallbackInfo& info);
  Napi::Value IsPersistent(const Napi::CallbackInfo& info);
  Napi::Value UpdateDeviceFlags(const Napi::CallbackInfo& info);
  Napi::Value GetMetadata(const Napi::CallbackInfo& info);
  Napi::Value SetMetadata(const Napi::CallbackInfo& info);
  Napi::Value Create(const Napi::CallbackInfo& info);
  Napi::Value Destroy(const Napi::CallbackInfo& info);
  Napi::Value Undefine(const Napi::CallbackInfo& info);
  Napi::Value GetBlockInfo(const Napi::CallbackInfo& info);
  Napi::Value GetControlInfo(const Napi::CallbackInfo& info);

  virDomainPtr dom_ = nullptr;
  std::string name_;
  std::string uuid_;
};

}  // namespace virt
