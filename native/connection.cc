#include "connection.h"

#include "domain.h"

#include <memory>

namespace virt {

namespace {

// A libvirt callback's payload, copied in the event-loop thread and turned into a JS
// object on the main thread.
struct NativeEvent {
  std::string kind;
  std::string uuid;
  std::string name;
  int event = 0;
  int detail = 0;
  std::string device;
  bool hasText = false;
  std::string text;
};

void Deliver(CallbackContext* ctx, NativeEvent* ev) {
  napi_status st = ctx->tsfn.NonBlockingCall(ev, [](Napi::Env env, Napi::Function cb, NativeEvent* e) {
    std::unique_ptr<NativeEvent> owned(e);
    if (env == nullptr || cb.IsEmpty()) return;
    Napi::Object o = Napi::Object::New(env);
    o.Set("kind", e->kind);
    if (!e->uuid.empty()) o.Set("uuid", e->uuid);
    if (!e->name.empty()) o.Set("name", e->name);
    if (e->kind == "lifecycle" || e->kind == "close") {
      o.Set("event", Napi::Number::New(env, e->event));
      o.Set("detail", Napi::Number::New(env, e->detail));
    }
    if (e->kind == "tray-change") o.Set("reason", Napi::Number::New(env, e->event));
    if (e->kind == "metadata-change") o.Set("type", Napi::Number::New(env, e->event));
    if (!e->device.empty()) o.Set("device", e->device);
    if (e->kind == "metadata-change") o.Set("nsUri", e->hasText ? Napi::Value(Napi::String::New(env, e->text)) : env.Null());
    try {
      cb.Call({o});
    } catch (const Napi::Error& err) {
      // Left pending, Node reports it as an uncaught exception: a listener bug must surface.
      err.ThrowAsJavaScriptException();
    }
  });
  if (st != napi_ok) delete ev;
}

NativeEvent* EventFor(const char* kind, virDomainPtr dom) {
  auto* ev = new NativeEvent();
  ev->kind = kind;
  char uuid[VIR_UUID_STRING_BUFLEN];
  if (virDomainGetUUIDString(dom, uuid) == 0) ev->uuid = uuid;
  const char* name = virDomainGetName(dom);
  if (name != nullptr) ev->name = name;
  return ev;
}

int OnLifecycle(virConnectPtr, virDomainPtr dom, int event, int detail, void* opaque) {
  auto* ev = EventFor("lifecycle", dom);
  ev->event = event;
  ev->detail = detail;
  Deliver(static_cast<CallbackContext*>(opaque), ev);
  return 0;
}

void OnTrayChange(virConnectPtr, virDomainPtr dom, const char* devAlias, int reason, void* opaque) {
  auto* ev = EventFor("tray-change", dom);
  ev->device = devAlias != nullptr ? devAlias : "";
  ev->event = reason;
  Deliver(static_cast<CallbackContext*>(opaque), ev);
}

void OnDeviceRemoved(virConnectPtr, virDomainPtr dom, const char* devAlias, void* opaque) {
  auto* ev = EventFor("device-removed", dom);
  ev->device = devAlias != nullptr ? devAlias : "";
  Deliver(static_cast<CallbackContext*>(opaque), ev);
}

#if LIBVIR_CHECK_VERSION(3, 0, 0)
void OnMetadataChange(virConnectPtr, virDomainPtr dom, int type, const char* nsuri, void* opaque) {
  auto* ev = EventFor("metadata-change", dom);
  ev->event = type;
  ev->hasText = nsuri != nullptr;
  if (nsuri != nullptr) ev->text = nsuri;
  Deliver(static_cast<CallbackContext*>(opaque), ev);
}
#endif

void OnClose(virConnectPtr, int reason, void* opaque) {
  auto* ev = new NativeEvent();
  ev->kind = "close";
  ev->event = reason;
  Deliver(static_cast<CallbackContext*>(opaque), ev);
}

void FreeContextRef(void* opaque) { static_cast<CallbackContext*>(opaque)->Unref(); }

struct ConnRef {
  virConnectPtr conn;
  explicit ConnRef(virConnectPtr c) : conn(c) { virConnectRef(conn); }
  ~ConnRef() { virConnectClose(conn); }
  ConnRef(const ConnRef&) = delete;
  ConnRef& operator=(const ConnRef&) = delete;
};

std::string ReqString(const Napi::CallbackInfo& info, size_t i) {
  if (info.Length() <= i || !info[i].IsString()) throw Napi::TypeError::New(info.Env(), "expected a string");
  return info[i].As<Napi::String>().Utf8Value();
}

unsigned int OptFlags(const Napi::CallbackInfo& info, size_t i) {
  if (info.Length() <= i || info[i].IsUndefined() || info[i].IsNull()) return 0;
  return info[i].As<Napi::Number>().Uint32Value();
}

// Hands a looked-up or created domain to JS; on the success path the worker owns it.
Napi::Promise QueueDomainCall(Napi::Env env, virConnectPtr conn, const char* what,
                              std::function<virDomainPtr(virConnectPtr)> call) {
  auto ref = std::make_shared<ConnRef>(conn);
  auto out = std::make_shared<virDomainPtr>(nullptr);
  return PromiseWorker::Start(
      env, what,
      [ref = std::move(ref), out, call]() mutable {
        *out = call(ref->conn);
        return *out != nullptr;
      },
      [out](Napi::Env e) {
        virDomainPtr d = *out;
        *out = nullptr;
        return Domain::Wrap(e, d);
      });
}

}  // namespace

Napi::Function Connection::Init(Napi::Env env) {
  return DefineClass(env, "Connection",
                     {
                         InstanceMethod<&Connection::Close>("close"),
                         InstanceMethod<&Connection::IsAlive>("isAlive"),
                         InstanceMethod<&Connection::SetKeepAlive>("setKeepAlive"),
                         InstanceMethod<&Connection::ListAllDomains>("listAllDomains"),
                         InstanceMethod<&Connection::LookupByUUIDString>("lookupByUUIDString"),
                         InstanceMethod<&Connection::LookupByName>("lookupByName"),
                         InstanceMethod<&Connection::DefineXML>("defineXML"),
                         InstanceMethod<&Connection::CreateXML>("createXML"),
                         InstanceMethod<&Connection::RegisterDomainEvents>("registerDomainEvents"),
                         InstanceMethod<&Connection::DeregisterDomainEvents>("deregisterDomainEvents"),
                     });
}

Connection::Connection(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Connection>(info) {
  if (info.Length() < 2 || !info[0].IsExternal() || !info[1].IsExternal()) {
    throw Napi::TypeError::New(info.Env(), "use open(uri, listener)");
  }
  conn_ = info[0].As<Napi::External<virConnect>>().Data();
  ctx_ = info[1].As<Napi::External<CallbackContext>>().Data();
}

Connection::~Connection() {
  // A connection that was never closed is only unreferenced; closing would be an RPC
  // on the main thread inside GC.
  if (ctx_ != nullptr) ctx_->Unref();
}

// open(uri, listener, keepAliveIntervalSec, keepAliveCount) -> Promise<Connection>
Napi::Value Connection::Open(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string uri = ReqString(info, 0);
  if (info.Length() < 2 || !info[1].IsFunction()) throw Napi::TypeError::New(env, "listener must be a function");
  int interval = info.Length() > 2 && info[2].IsNumber() ? info[2].As<Napi::Number>().Int32Value() : 5;
  unsigned int count = info.Length() > 3 && info[3].IsNumber() ? info[3].As<Napi::Number>().Uint32Value() : 3;
  EnsureEventLoop();

  auto* ctx = new CallbackContext();
  ctx->tsfn = Napi::ThreadSafeFunction::New(env, info[1].As<Napi::Function>(), "virt-events", 0, 1);
  // Events must never keep the process alive on their own.
  ctx->tsfn.Unref(env);

  auto out = std::make_shared<virConnectPtr>(nullptr);
  return PromiseWorker::Start(
      env, "virConnectOpen failed",
      [uri, out, ctx, interval, count]() {
        virConnectPtr conn = virConnectOpen(uri.c_str());
        if (conn == nullptr) return false;
        if (interval > 0 && virConnectSetKeepAlive(conn, interval, count) < 0) {
          VirtError ignored = CaptureError("keepalive");  // not every driver supports it
          (void)ignored;
        }
        ctx->Ref();
        if (virConnectRegisterCloseCallback(conn, OnClose, ctx, FreeContextRef) < 0) {
          ctx->Unref();
          VirtError ignored = CaptureError("close callback");  // local drivers have none
          (void)ignored;
        }
        *out = conn;
        return true;
      },
      [out, ctx](Napi::Env e) -> Napi::Value {
        auto* data = e.GetInstanceData<AddonData>();
        if (*out == nullptr) {
          ctx->Unref();
          return e.Undefined();
        }
        return data->connectionCtor.New({Napi::External<virConnect>::New(e, *out),
                                         Napi::External<CallbackContext>::New(e, ctx)});
      });
}

virConnectPtr Connection::Checked(const Napi::CallbackInfo& info) {
  if (conn_ == nullptr) throw Napi::Error::New(info.Env(), "connection is closed");
  return conn_;
}

Napi::Value Connection::Close(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (conn_ == nullptr) {
    auto d = Napi::Promise::Deferred::New(env);
    d.Resolve(env.Undefined());
    return d.Promise();
  }
  virConnectPtr conn = conn_;
  conn_ = nullptr;
  // The JS object's reference on the callback context is dropped once the connection is
  // closed, here on the main thread, not later from a GC finalizer: at process exit the
  // environment tears the thread-safe function down first, and releasing it from a
  // finalizer then aborts the process.
  CallbackContext* ctx = ctx_;
  ctx_ = nullptr;
  auto mtx = eventsMutex_;
  auto ids = eventIds_;
  auto closing = PromiseWorker::Start(
      env, "virConnectClose failed",
      [conn, mtx, ids]() {
        {
          std::lock_guard<std::mutex> lock(*mtx);
          for (int id : *ids) virConnectDomainEventDeregisterAny(conn, id);
          ids->clear();
        }
        virConnectUnregisterCloseCallback(conn, OnClose);
        // A dead connection cannot deregister remotely; those errors do not matter now.
        virResetLastError();
        // >0 only means domain handles still reference it; they release it later.
        return virConnectClose(conn) >= 0;
      },
      [ctx](Napi::Env e) -> Napi::Value {
        if (ctx != nullptr) ctx->Unref();
        return e.Undefined();
      });
  return closing;
}

Napi::Value Connection::IsAlive(const Napi::CallbackInfo& info) {
  // For remote connections this only inspects the client's socket state (no RPC).
  if (conn_ == nullptr) return Napi::Boolean::New(info.Env(), false);
  return Napi::Boolean::New(info.Env(), virConnectIsAlive(conn_) == 1);
}

Napi::Value Connection::SetKeepAlive(const Napi::CallbackInfo& info) {
  int interval = info[0].As<Napi::Number>().Int32Value();
  unsigned int count = info[1].As<Napi::Number>().Uint32Value();
  auto ref = std::make_shared<ConnRef>(Checked(info));
  return PromiseWorker::Start(
      info.Env(), "virConnectSetKeepAlive failed",
      [ref = std::move(ref), interval, count]() mutable {
        int rc = virConnectSetKeepAlive(ref->conn, interval, count);
        return rc >= 0;
      },
      nullptr);
}

struct DomainSummary {
  std::string name;
  std::string uuid;
  int id;
  bool active;
  bool persistent;
};

Napi::Value Connection::ListAllDomains(const Napi::CallbackInfo& info) {
  unsigned int flags = OptFlags(info, 0);
  auto ref = std::make_shared<ConnRef>(Checked(info));
  auto out = std::make_shared<std::vector<DomainSummary>>();
  return PromiseWorker::Start(
      info.Env(), "virConnectListAllDomains failed",
      [ref = std::move(ref), out, flags]() mutable {
        virDomainPtr* doms = nullptr;
        int n = virConnectListAllDomains(ref->conn, &doms, flags);
        if (n < 0) return false;
        bool ok = true;
        for (int i = 0; i < n; i++) {
          DomainSummary s;
          const char* name = virDomainGetName(doms[i]);
          s.name = name != nullptr ? name : "";
          char uuid[VIR_UUID_STRING_BUFLEN];
          if (virDomainGetUUIDString(doms[i], uuid) == 0) s.uuid = uuid;
          s.id = static_cast<int>(virDomainGetID(doms[i]));
          int active = virDomainIsActive(doms[i]);
          int persistent = virDomainIsPersistent(doms[i]);
          if (active < 0 || persistent < 0) {
            // A domain that vanished between list and query is simply not listed.
            if (ok && virGetLastErrorCode() != VIR_ERR_NO_DOMAIN) {
              CaptureNow("virDomainIsActive failed");
              ok = false;
            }
          } else {
            s.active = active == 1;
            s.persistent = persistent == 1;
            if (ok) out->push_back(s);
          }
          virDomainFree(doms[i]);
        }
        free(doms);
        return ok;
      },
      [out](Napi::Env env) {
        Napi::Array arr = Napi::Array::New(env, out->size());
        for (size_t i = 0; i < out->size(); i++) {
          const DomainSummary& s = (*out)[i];
          Napi::Object o = Napi::Object::New(env);
          o.Set("name", s.name);
          o.Set("uuid", s.uuid);
          o.Set("id", Napi::Number::New(env, s.id));
          o.Set("active", Napi::Boolean::New(env, s.active));
          o.Set("persistent", Napi::Boolean::New(env, s.persistent));
          arr.Set(static_cast<uint32_t>(i), o);
        }
        return arr;
      });
}

Napi::Value Connection::LookupByUUIDString(const Napi::CallbackInfo& info) {
  std::string uuid = ReqString(info, 0);
  return QueueDomainCall(info.Env(), Checked(info), "virDomainLookupByUUIDString failed",
                         [uuid](virConnectPtr c) { return virDomainLookupByUUIDString(c, uuid.c_str()); });
}

Napi::Value Connection::LookupByName(const Napi::CallbackInfo& info) {
  std::string name = ReqString(info, 0);
  return QueueDomainCall(info.Env(), Checked(info), "virDomainLookupByName failed",
                         [name](virConnectPtr c) { return virDomainLookupByName(c, name.c_str()); });
}

Napi::Value Connection::DefineXML(const Napi::CallbackInfo& info) {
  std::string xml = ReqString(info, 0);
  return QueueDomainCall(info.Env(), Checked(info), "virDomainDefineXML failed",
                         [xml](virConnectPtr c) { return virDomainDefineXML(c, xml.c_str()); });
}

Napi::Value Connection::CreateXML(const Napi::CallbackInfo& info) {
  std::string xml = ReqString(info, 0);
  unsigned int flags = OptFlags(info, 1);
  return QueueDomainCall(info.Env(), Checked(info), "virDomainCreateXML failed",
                         [xml, flags](virConnectPtr c) { return virDomainCreateXML(c, xml.c_str(), flags); });
}

Napi::Value Connection::RegisterDomainEvents(const Napi::CallbackInfo& info) {
  auto ref = std::make_shared<ConnRef>(Checked(info));
  CallbackContext* ctx = ctx_;
  auto mtx = eventsMutex_;
  auto ids = eventIds_;
  return PromiseWorker::Start(
      info.Env(), "virConnectDomainEventRegisterAny failed",
      [ref = std::move(ref), ctx, mtx, ids]() mutable {
        std::lock_guard<std::mutex> lock(*mtx);
        if (!ids->empty()) return true;  // already registered: idempotent
        struct Reg {
          int id;
          virConnectDomainEventGenericCallback cb;
        };
        const Reg regs[] = {
            {VIR_DOMAIN_EVENT_ID_LIFECYCLE, VIR_DOMAIN_EVENT_CALLBACK(OnLifecycle)},
            {VIR_DOMAIN_EVENT_ID_TRAY_CHANGE, VIR_DOMAIN_EVENT_CALLBACK(OnTrayChange)},
            {VIR_DOMAIN_EVENT_ID_DEVICE_REMOVED, VIR_DOMAIN_EVENT_CALLBACK(OnDeviceRemoved)},
#if LIBVIR_CHECK_VERSION(3, 0, 0)
            {VIR_DOMAIN_EVENT_ID_METADATA_CHANGE, VIR_DOMAIN_EVENT_CALLBACK(OnMetadataChange)},
#endif
        };
        for (const Reg& r : regs) {
          ctx->Ref();
          int id = virConnectDomainEventRegisterAny(ref->conn, nullptr, r.id, r.cb, ctx, FreeContextRef);
          if (id < 0) {
            // Registrations made so far stay in `ids` and go with deregister/close; the
            // error is left in place for the worker to capture.
            ctx->Unref();
            return false;
          }
          ids->push_back(id);
        }
        return true;
      },
      nullptr);
}

Napi::Value Connection::DeregisterDomainEvents(const Napi::CallbackInfo& info) {
  auto ref = std::make_shared<ConnRef>(Checked(info));
  auto mtx = eventsMutex_;
  auto ids = eventIds_;
  return PromiseWorker::Start(
      info.Env(), "virConnectDomainEventDeregisterAny failed",
      [ref = std::move(ref), mtx, ids]() mutable {
        std::lock_guard<std::mutex> lock(*mtx);
        bool ok = true;
        for (int id : *ids) ok = virConnectDomainEventDeregisterAny(ref->conn, id) == 0 && ok;
        ids->clear();
        return ok;
      },
      nullptr);
}

}  // namespace virt
