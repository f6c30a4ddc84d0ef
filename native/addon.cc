// Entry point of the `virt` addon: libvirt initialisation, the event-loop thread and
// the exported API (open, Connection, Domain, constants).
#include "common.h"
#include "connection.h"
#include "domain.h"
#include "loop.h"
#include "lvm_mda.h"

#include <chrono>
#include <mutex>
#include <string>
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
void EnsureEventLoop(Napi::Env env) {
  std::call_once(eventLoopOnce, []() {
    if (virEventRegisterDefaultImpl() < 0) return;
    eventLoopOk = true;
    std::thread([]() {
      for (;;) {
        if (virEventRunDefaultImpl() < 0) virResetLastError();
      }
    }).detach();
  });
  // A Napi::Error becomes a JS exception; anything else would end in std::terminate.
  if (!eventLoopOk) throw Napi::Error::New(env, "virEventRegisterDefaultImpl failed");
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
  C(VIR_DOMAIN_CONTROL_OK);
  C(VIR_DOMAIN_CONTROL_JOB);
  C(VIR_DOMAIN_CONTROL_OCCUPIED);
  C(VIR_DOMAIN_CONTROL_ERROR);
  C(VIR_DOMAIN_CONTROL_ERROR_REASON_NONE);
  C(VIR_DOMAIN_CONTROL_ERROR_REASON_UNKNOWN);
  C(VIR_DOMAIN_CONTROL_ERROR_REASON_MONITOR);
  C(VIR_DOMAIN_CONTROL_ERROR_REASON_INTERNAL);
#undef C
  SetConst(env, c, "HAS_METADATA_CHANGE_EVENT", LIBVIR_CHECK_VERSION(3, 0, 0) ? 1 : 0);
  return c;
}

Napi::Value LibVersion(const Napi::CallbackInfo& info) {
  unsigned long v = 0;
  if (virGetVersion(&v, nullptr, nullptr) < 0) throw Napi::Error::New(info.Env(), "virGetVersion failed");
  return Napi::Number::New(info.Env(), static_cast<double>(v));
}

uint32_t OptUint(Napi::Object o, const char* key, uint32_t min, uint32_t max, uint32_t fallback) {
  Napi::Value v = o.Get(key);
  if (v.IsUndefined()) return fallback;
  double n = v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : -1;
  if (!(n >= min && n <= max) || n != static_cast<double>(static_cast<uint32_t>(n))) {
    throw Napi::RangeError::New(o.Env(), std::string(key) + " must be an integer in [" + std::to_string(min) + ", " +
                                             std::to_string(max) + "]");
  }
  return static_cast<uint32_t>(n);
}

// configureExecutor({ maxThreads?, idleTimeoutMs? }) -> the settings now in force
Napi::Value ConfigureExecutor(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Executor& ex = Executor::Get();
  if (info.Length() > 0 && !info[0].IsUndefined()) {
    if (!info[0].IsObject()) throw Napi::TypeError::New(env, "configureExecutor({ maxThreads?, idleTimeoutMs? })");
    Napi::Object o = info[0].As<Napi::Object>();
    uint32_t maxThreads = OptUint(o, "maxThreads", 1, 4096, static_cast<uint32_t>(ex.MaxThreads()));
    uint32_t idleMs = OptUint(o, "idleTimeoutMs", 1, 86400000, static_cast<uint32_t>(ex.IdleTimeout().count()));
    ex.Configure(maxThreads, std::chrono::milliseconds(idleMs));
  }
  Napi::Object out = Napi::Object::New(env);
  out.Set("maxThreads", Napi::Number::New(env, static_cast<double>(ex.MaxThreads())));
  out.Set("idleTimeoutMs", Napi::Number::New(env, static_cast<double>(ex.IdleTimeout().count())));
  return out;
}

Napi::Value ExecutorStatsJs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  ExecutorStats s = Executor::Get().Stats();
  Napi::Object o = Napi::Object::New(env);
  o.Set("threads", Napi::Number::New(env, static_cast<double>(s.threads)));
  o.Set("busy", Napi::Number::New(env, static_cast<double>(s.busy)));
  o.Set("idle", Napi::Number::New(env, static_cast<double>(s.idle)));
  o.Set("queued", Napi::Number::New(env, static_cast<double>(s.queued)));
  return o;
}

Napi::Value DebugCountsJs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  DebugCounts& c = Counts();
  Napi::Object o = Napi::Object::New(env);
  o.Set("calls", Napi::Number::New(env, static_cast<double>(c.calls.load())));
  o.Set("contexts", Napi::Number::New(env, static_cast<double>(c.contexts.load())));
  o.Set("tsfns", Napi::Number::New(env, static_cast<double>(c.tsfns.load())));
  o.Set("connections", Napi::Number::New(env, static_cast<double>(c.connections.load())));
  o.Set("domains", Napi::Number::New(env, static_cast<double>(c.domains.load())));
  return o;
}

// debugFailpoint(name, value): see DebugCounts. For tests only.
Napi::Value DebugFailpoint(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsString() || !info[1].IsNumber()) {
    throw Napi::TypeError::New(env, "debugFailpoint(name, value)");
  }
  std::string name = info[0].As<Napi::String>().Utf8Value();
  int value = info[1].As<Napi::Number>().Int32Value();
  if (name == "listAllDomains.isActive") {
    Counts().failListIsActive.store(value);
  } else if (name == "registerDomainEvents") {
    Counts().failEventRegistrationAt.store(value);
  } else {
    throw Napi::Error::New(env, "unknown failpoint " + name);
  }
  return env.Undefined();
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
  data->settler = Settler::New(env);
  env.SetInstanceData<AddonData>(data);
  exports.Set("open", Napi::Function::New(env, Connection::Open, "open"));
  exports.Set("libVersion", Napi::Function::New(env, LibVersion, "libVersion"));
  exports.Set("configureExecutor", Napi::Function::New(env, ConfigureExecutor, "configureExecutor"));
  exports.Set("executorStats", Napi::Function::New(env, ExecutorStatsJs, "executorStats"));
  exports.Set("debugCounts", Napi::Function::New(env, DebugCountsJs, "debugCounts"));
  exports.Set("debugFailpoint", Napi::Function::New(env, DebugFailpoint, "debugFailpoint"));
  exports.Set("readDirect", Napi::Function::New(env, ReadDirect, "readDirect"));
  exports.Set("Connection", conn);
  exports.Set("Domain", dom);
  exports.Set("constants", Constants(env));
  InitLoop(env, exports);
  return exports;
}

}  // namespace

Napi::Object Init(Napi::Env env, Napi::Object exports) { return InitExports(env, exports); }

}  // namespace virt

static Napi::Object InitVirt(Napi::Env env, Napi::Object exports) { return virt::Init(env, exports); }

NODE_API_MODULE(NODE_GYP_MODULE_NAME, InitVirt)
