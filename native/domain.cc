#include "domain.h"

#include <memory>
#include <optional>

namespace virt {

namespace {

// One reference held by an in-flight call; released in the pool thread because the
// last unref of a remote handle may talk to libvirtd.
struct DomRef {
  virDomainPtr dom;
  explicit DomRef(virDomainPtr d) : dom(d) { virDomainRef(dom); }
  ~DomRef() { virDomainFree(dom); }
  DomRef(const DomRef&) = delete;
  DomRef& operator=(const DomRef&) = delete;
};

unsigned int OptFlags(const Napi::CallbackInfo& info, size_t i) {
  if (info.Length() <= i || info[i].IsUndefined() || info[i].IsNull()) return 0;
  return info[i].As<Napi::Number>().Uint32Value();
}

std::optional<std::string> OptString(const Napi::CallbackInfo& info, size_t i) {
  if (info.Length() <= i || info[i].IsUndefined() || info[i].IsNull()) return std::nullopt;
  if (!info[i].IsString()) throw Napi::TypeError::New(info.Env(), "expected a string or null");
  return info[i].As<Napi::String>().Utf8Value();
}

std::string ReqString(const Napi::CallbackInfo& info, size_t i) {
  if (info.Length() <= i || !info[i].IsString()) throw Napi::TypeError::New(info.Env(), "expected a string");
  return info[i].As<Napi::String>().Utf8Value();
}

}  // namespace

Napi::Function Domain::Init(Napi::Env env) {
  return DefineClass(env, "Domain",
                     {
                         InstanceAccessor<&Domain::GetName>("name"),
                         InstanceAccessor<&Domain::GetUUID>("uuid"),
                         InstanceMethod<&Domain::XMLDesc>("xmlDesc"),
                         InstanceMethod<&Domain::IsActive>("isActive"),
                         InstanceMethod<&Domain::IsPersistent>("isPersistent"),
                         InstanceMethod<&Domain::UpdateDeviceFlags>("updateDeviceFlags"),
                         InstanceMethod<&Domain::GetMetadata>("getMetadata"),
                         InstanceMethod<&Domain::SetMetadata>("setMetadata"),
                         InstanceMethod<&Domain::Create>("create"),
                         InstanceMethod<&Domain::Destroy>("destroy"),
                         InstanceMethod<&Domain::Undefine>("undefine"),
                         InstanceMethod<&Domain::GetBlockInfo>("getBlockInfo"),
                         InstanceMethod<&Domain::GetControlInfo>("getControlInfo"),
                     });
}

Napi::Object Domain::Wrap(Napi::Env env, virDomainPtr dom) {
  auto* data = env.GetInstanceData<AddonData>();
  return data->domainCtor.New({Napi::External<virDomain>::New(env, dom)});
}

Domain::Domain(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Domain>(info) {
  if (info.Length() < 1 || !info[0].IsExternal()) {
    throw Napi::TypeError::New(info.Env(), "Domain objects come from a Connection");
  }
  dom_ = info[0].As<Napi::External<virDomain>>().Data();
  // Name and UUID are cached in the handle by libvirt: no RPC here.
  const char* name = virDomainGetName(dom_);
  if (name != nullptr) name_ = name;
  char uuid[VIR_UUID_STRING_BUFLEN];
  if (virDomainGetUUIDString(dom_, uuid) == 0) uuid_ = uuid;
  Counts().domains++;
}

Domain::~Domain() {
  Counts().domains--;
  // Freed on the executor: this finalizer runs on the JS thread, and after the
  // connection's close() the last domain reference is the connection's last one, whose
  // release is the close RPC (it blocked JS while libvirtd did not answer).
  if (dom_ != nullptr) {
    virDomainPtr d = dom_;
    dom_ = nullptr;
    Executor::Get().Release([d]() {
      virDomainFree(d);
      virResetLastError();
    });
  }
}

Napi::Value Domain::GetName(const Napi::CallbackInfo& info) { return Napi::String::New(info.Env(), name_); }
Napi::Value Domain::GetUUID(const Napi::CallbackInfo& info) { return Napi::String::New(info.Env(), uuid_); }

Napi::Value Domain::XMLDesc(const Napi::CallbackInfo& info) {
  unsigned int flags = OptFlags(info, 0);
  auto ref = std::make_shared<DomRef>(dom_);
  auto out = std::make_shared<std::string>();
  return PromiseWorker::Start(
      info.Env(), "virDomainGetXMLDesc failed",
      [ref = std::move(ref), out, flags]() mutable {
        char* xml = virDomainGetXMLDesc(ref->dom, flags);
        if (xml == nullptr) return false;
        out->assign(xml);
        free(xml);
        return true;
      },
      [out](Napi::Env env) { return Napi::String::New(env, *out); });
}

Napi::Value Domain::IsActive(const Napi::CallbackInfo& info) {
  auto ref = std::make_shared<DomRef>(dom_);
  auto out = std::make_shared<int>(0);
  return PromiseWorker::Start(
      info.Env(), "virDomainIsActive failed",
      [ref = std::move(ref), out]() mutable {
        *out = virDomainIsActive(ref->dom);
        return *out >= 0;
      },
      [out](Napi::Env env) { return Napi::Boolean::New(env, *out == 1); });
}

Napi::Value Domain::IsPersistent(const Napi::CallbackInfo& info) {
  auto ref = std::make_shared<DomRef>(dom_);
  auto out = std::make_shared<int>(0);
  return PromiseWorker::Start(
      info.Env(), "virDomainIsPersistent failed",
      [ref = std::move(ref), out]() mutable {
        *out = virDomainIsPersistent(ref->dom);
        return *out >= 0;
      },
      [out](Napi::Env env) { return Napi::Boolean::New(env, *out == 1); });
}

Napi::Value Domain::UpdateDeviceFlags(const Napi::CallbackInfo& info) {
  std::string xml = ReqString(info, 0);
  unsigned int flags = OptFlags(info, 1);
  auto ref = std::make_shared<DomRef>(dom_);
  return PromiseWorker::Start(
      info.Env(), "virDomainUpdateDeviceFlags failed",
      [ref = std::move(ref), xml, flags]() mutable {
        int rc = virDomainUpdateDeviceFlags(ref->dom, xml.c_str(), flags);
        return rc == 0;
      },
      nullptr);
}

// getMetadata(type, uri | null, flags) -> string
Napi::Value Domain::GetMetadata(const Napi::CallbackInfo& info) {
  int type = static_cast<int>(OptFlags(info, 0));
  std::optional<std::string> uri = OptString(info, 1);
  unsigned int flags = OptFlags(info, 2);
  auto ref = std::make_shared<DomRef>(dom_);
  auto out = std::make_shared<std::string>();
  return PromiseWorker::Start(
      info.Env(), "virDomainGetMetadata failed",
      [ref = std::move(ref), out, type, uri, flags]() mutable {
        char* md = virDomainGetMetadata(ref->dom, type, uri ? uri->c_str() : nullptr, flags);
        if (md == nullptr) return false;
        out->assign(md);
        free(md);
        return true;
      },
      [out](Napi::Env env) { return Napi::String::New(env, *out); });
}

// setMetadata(type, metadata | null, key | null, uri | null, flags); null metadata removes.
Napi::Value Domain::SetMetadata(const Napi::CallbackInfo& info) {
  int type = static_cast<int>(OptFlags(info, 0));
  std::optional<std::string> metadata = OptString(info, 1);
  std::optional<std::string> key = OptString(info, 2);
  std::optional<std::string> uri = OptString(info, 3);
  unsigned int flags = OptFlags(info, 4);
  auto ref = std::make_shared<DomRef>(dom_);
  return PromiseWorker::Start(
      info.Env(), "virDomainSetMetadata failed",
      [ref = std::move(ref), type, metadata, key, uri, flags]() mutable {
        int rc = virDomainSetMetadata(ref->dom, type, metadata ? metadata->c_str() : nullptr,
                                      key ? key->c_str() : nullptr, uri ? uri->c_str() : nullptr, flags);
        return rc == 0;
      },
      nullptr);
}

Napi::Value Domain::Create(const Napi::CallbackInfo& info) {
  unsigned int flags = OptFlags(info, 0);
  auto ref = std::make_shared<DomRef>(dom_);
  return PromiseWorker::Start(
      info.Env(), "virDomainCreateWithFlags failed",
      [ref = std::move(ref), flags]() mutable {
        int rc = virDomainCreateWithFlags(ref->dom, flags);
        return rc == 0;
      },
      nullptr);
}

Napi::Value Domain::Destroy(const Napi::CallbackInfo& info) {
  auto ref = std::make_shared<DomRef>(dom_);
  return PromiseWorker::Start(
      info.Env(), "virDomainDestroy failed",
      [ref = std::move(ref)]() mutable {
        int rc = virDomainDestroy(ref->dom);
        return rc == 0;
      },
      nullptr);
}

Napi::Value Domain::Undefine(const Napi::CallbackInfo& info) {
  unsigned int flags = OptFlags(info, 0);
  auto ref = std::make_shared<DomRef>(dom_);
  return PromiseWorker::Start(
      info.Env(), "virDomainUndefineFlags failed",
      [ref = std::move(ref), flags]() mutable {
        int rc = virDomainUndefineFlags(ref->dom, flags);
        return rc == 0;
      },
      nullptr);
}

Napi::Value Domain::GetBlockInfo(const Napi::CallbackInfo& info) {
  std::string disk = ReqString(info, 0);
  auto ref = std::make_shared<DomRef>(dom_);
  auto out = std::make_shared<virDomainBlockInfo>();
  return PromiseWorker::Start(
      info.Env(), "virDomainGetBlockInfo failed",
      [ref = std::move(ref), disk, out]() mutable {
        int rc = virDomainGetBlockInfo(ref->dom, disk.c_str(), out.get(), 0);
        return rc == 0;
      },
      [out](Napi::Env env) {
        Napi::Object o = Napi::Object::New(env);
        o.Set("capacity", Napi::Number::New(env, static_cast<double>(out->capacity)));
        o.Set("allocation", Napi::Number::New(env, static_cast<double>(out->allocation)));
        o.Set("physical", Napi::Number::New(env, static_cast<double>(out->physical)));
        return o;
      });
}

}  // namespace virt

namespace virt {

// getControlInfo() -> { state, details, stateTime }. QEMU answers from its own state of
// the monitor and job, without taking the domain's job: it works while a call on the
// domain hangs, and says whether the monitor is still OCCUPIED by it.
Napi::Value Domain::GetControlInfo(const Napi::CallbackInfo& info) {
  auto ref = std::make_shared<DomRef>(dom_);
  auto out = std::make_shared<virDomainControlInfo>();
  return PromiseWorker::Start(
      info.Env(), "virDomainGetControlInfo failed",
      [ref = std::move(ref), out]() mutable { return virDomainGetControlInfo(ref->dom, out.get(), 0) == 0; },
      [out](Napi::Env env) {
        Napi::Object o = Napi::Object::New(env);
        o.Set("state", Napi::Number::New(env, out->state));
        o.Set("details", Napi::Number::New(env, out->details));
        o.Set("stateTime", Napi::Number::New(env, static_cast<double>(out->stateTime)));
        return o;
      });
}

}  // namespace virt
