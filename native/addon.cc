// Entry point of the `virt` addon: libvirt initialisation, the event-loop thread and
// the exported API (open, Connection, Domain, constants).
#include "common.h"
#include "connection.h"
#include "domain.h"

#include <mutex>
#include <thread>

namespace virt {

namespace {

std::once_flag eventLoopOnce;
bool eventLoopOk = false;

// libvirt prints every error to stderr unless a handler is installed; errors reach JS
// through the rejected promises instead.
void SilentErrorHandler(void*, virErrorPtr) {}

}  // namespace

// Keepalive, close callbacks and domain events all need libvirt's event loop, and it
// must be registered before the first connection is opened. One loop per process.
void EnsureEventLoop() {
  std::call_once(eventLoopOnce, []() {
    if (virEventRegisterDefaultImpl() < 0) return;
    eventLoopOk = true;
    std::thread([]() {
      for (;;) {
        if (virEventRunDefaultImpl() < 0) virResetLastError();
      }
    }).detach();
  });
  if (!eventLoopOk) throw std::runtime_error("virEventRegisterDefaultImpl failed");
}

namespace {

void SetConst(Napi::Env env, Napi::Object o, const char* name, long long value) {
  o.Set(name, Napi::Number::New(env, static_cast<double>(value)));
}

Napi::Object Constants(Napi::Env env) {
  Napi::Object c = Napi::Object::New(env);
#define C(name) SetConst(env, c, #name, name)
  C(VIR_DOMAIN_XML_SECURE);
  C(VIR_DOMAIN_XML_INACTIVE);
  C(VIR_DOMAIN_XML_UPDATE_CPU);
  C(VIR_DOMAIN_XML_MIGRATABLE);
  C(VIR_DOMAIN_AFFECT_CURRENT);
  C(VIR_DOMAIN_AFFECT_LIVE);
  C(VIR_DOMAIN_AFFECT_CONFIG);
  C(VIR_DOMAIN_DEVICE_MODIFY_FORCE);
  C(VIR_DOMAIN_METADATA_DESCRIPTION);
  C(VIR_DOMAIN_METADATA_TITLE);
  C(VIR_DOMAIN_METADATA_ELEMENT);
  C(VIR_DOMAIN_NONE);
  C(VIR_DOMAIN_START_PAUSED);
  C(VIR_DOMAIN_UNDEFINE_MANAGED_SAVE);
  C(VIR_DOMAIN_UNDEFINE_NVRAM);
  C(VIR_CONNECT_LIST_DOMAINS_ACTIVE);
  C(VIR_CONNECT_LIST_DOMAINS_INACTIVE);
  C(VIR_CONNECT_LIST_DOMAINS_PERSISTENT);
  C(VIR_CONNECT_LIST_DOMAINS_TRANSIENT);
  C(VIR_DOMAIN_EVENT_DEFINED);
  C(VIR_DOMAIN_EVENT_UNDEFINED);
  C(VIR_DOMAIN_EVENT_STARTED);
  C(VIR_DOMAIN_EVENT_SUSPENDED);
  C(VIR_DOMAIN_EVENT_RESUMED);
  C(VIR_DOMAIN_EVENT_STOPPED);
  C(VIR_DOMAIN_EVENT_SHUTDOWN);
  C(VIR_DOMAIN_EVENT_PMSUSPENDED);
  C(VIR_DOMAIN_EVENT_CRASHED);
  C(VIR_DOMAIN_EVENT_TRAY_CHANGE_OPEN);
  C(VIR_DOMAIN_EVENT_TRAY_CHANGE_CLOSE);
  C(VIR_CONNECT_CLOSE_REASON_ERROR);
  C(VIR_CONNECT_CLOSE_REASON_EOF);
  C(VIR_CONNECT_CLOSE_REASON_KEEPALIVE);
  C(VIR_CONNECT_CLOSE_REASON_CLIENT);
  C(VIR_ERR_OK);
  C(VIR_ERR_INTERNAL_ERROR);
  C(VIR_ERR_NO_MEMORY);
  C(VIR_ERR_NO_CONNECT);
  C(VIR_ERR_INVALID_CONN);
  C(VIR_ERR_SYSTEM_ERROR);
  C(VIR_ERR_RPC);
  C(VIR_ERR_NO_DOMAIN);
  C(VIR_ERR_INVALID_DOMAIN);
  C(VIR_ERR_OPERATION_FAILED);
  C(VIR_ERR_OPERATION_INVALID);
  C(VIR_ERR_OPERATION_TIMEOUT);
  C(VIR_ERR_OPERATION_UNSUPPORTED);
  C(VIR_ERR_OPERATION_ABORTED);
  C(VIR_ERR_XML_ERROR);
  C(VIR_ERR_XML_DETAIL);
  C(VIR_ERR_CONFIG_UNSUPPORTED);
  C(VIR_ERR_INVALID_ARG);
  C(VIR_ERR_NO_DOMAIN_METADATA);
  C(VIR_ERR_AGENT_UNRESPONSIVE);
  C(VIR_ERR_AUTH_FAILED);
  C(VIR_ERR_NO_SOURCE);
  C(VIR_ERR_NO_SUPPORT);
  C(VIR_ERR_DEVICE_MISSING);
  C(VIR_ERR_NO_SECURITY_MODEL);
  C(VIR_ERR_AUTH_UNAVAILABLE);
  C(VIR_ERR_AUTH_CANCELLED);
  C(VIR_FROM_RPC);
  C(VIR_FROM_REMOTE);
  C(VIR_FROM_QEMU);
  C(VIR_FROM_DOMAIN);
#undef C
  SetConst(env, c, "HAS_METADATA_CHANGE_EVENT", LIBVIR_CHECK_VERSION(3, 0, 0) ? 1 : 0);
  return c;
}

Napi::Value LibVersion(const Napi::CallbackInfo& info) {
  unsigned long v = 0;
  if (virGetVersion(&v, nullptr, nullptr) < 0) throw Napi::Error::New(info.Env(), "virGetVersion failed");
  return Napi::Number::New(info.Env(), static_cast<double>(v));
}

Napi::Object InitExports(Napi::Env env, Napi::Object exports) {
  static std::once_flag initOnce;
  std::call_once(initOnce, []() {
    virInitialize();
    virSetErrorFunc(nullptr, SilentErrorHandler);
  });
  auto* data = new AddonData();
  Napi::Function conn = Connection::Init(env);
  Napi::Function dom = Domain::Init(env);
  data->connectionCtor = Napi::Persistent(conn);
  data->domainCtor = Napi::Persistent(dom);
  env.SetInstanceData<AddonData>(data);
  exports.Set("open", Napi::Function::New(env, Connection::Open, "open"));
  exports.Set("libVersion", Napi::Function::New(env, LibVersion, "libVersion"));
  exports.Set("Connection", conn);
  exports.Set("Domain", dom);
  exports.Set("constants", Constants(env));
  return exports;
}

}  // namespace

Napi::Object Init(Napi::Env env, Napi::Object exports) { return InitExports(env, exports); }

}  // namespace virt

static Napi::Object InitVirt(Napi::Env env, Napi::Object exports) { return virt::Init(env, exports); }

NODE_API_MODULE(NODE_GYP_MODULE_NAME, InitVirt)
