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

// On the JS thread; env is null when the queue is drained at env teardown.
void EventToJs(napi_env rawEnv, napi_value rawCb, void*, void* data) {
  std::unique_ptr<NativeEvent> e(static_cast<NativeEvent*>(data));
  if (rawEnv == nullptr || rawCb == nullptr) return;
  Napi::Env env(rawEnv);
  try {
    Napi::HandleScope scope(env);
    Napi::Function cb(env, rawCb);
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
    cb.Call({o});
  } catch (const Napi::Error& err) {
    // Left pending, Node reports it as an uncaught exception: a listener bug must surface.
    ThrowToJsQuietly(rawEnv, err);
  } catch (...) {
    // A C callback: nothing may escape it.
  }
}

void Deliver(CallbackContext* ctx, NativeEvent* ev) {
  if (!ctx->tsfn->Call(ev)) delete ev;
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

// Owns one reference on a CallbackContext; dropped wherever the holder dies.
struct CtxRef {
  CallbackContext* ctx;
  explicit CtxRef(CallbackContext* c) : ctx(c) {}
  ~CtxRef() {
    if (ctx != nullptr) ctx->Unref();
  }
  CallbackContext* Take() {
    CallbackContext* c = ctx;
    ctx = nullptr;
    return c;
  }
  CtxRef(const CtxRef&) = delete;
  CtxRef& operator=(const CtxRef&) = delete;
};

// Deregisters everything and drops the caller's reference; runs in a pool thread. After
// it, registrations are refused (ConnState::closed).
bool CloseConnection(virConnectPtr conn, const std::shared_ptr<ConnState>& st) {
  CallbackContext* closeCtx = nullptr;
  {
    std::lock_guard<std::mutex> lock(st->mutex);
    st->closed = true;
    for (int id : st->eventIds) virConnectDomainEventDeregisterAny(conn, id);
    st->eventIds.clear();
    closeCtx = st->closeCbCtx;
    st->closeCbCtx = nullptr;
  }
  if (closeCtx != nullptr) {
    // Once this returns libvirt no longer calls OnClose (it holds its lock around it).
    virConnectUnregisterCloseCallback(conn, OnClose);
    closeCtx->Unref();
  }
  // A dead connection cannot deregister remotely; those errors do not matter now.
  virResetLastError();
  // >0 only means domain handles still reference it; they release it later.
  return virConnectClose(conn) >= 0;
}

// A connection opened for JS but not handed over yet (its env may be gone by then):
// closed on the executor, never on the JS thread.
struct OwnedConn {
  virConnectPtr conn = nullptr;
  std::shared_ptr<ConnState> st = std::make_shared<ConnState>();
  OwnedConn() = default;
  ~OwnedConn() {
    if (conn == nullptr) return;
    virConnectPtr c = conn;
    auto s = st;
    Executor::Get().Release([c, s]() {
      CloseConnection(c, s);
      virResetLastError();
    });
  }
  OwnedConn(const OwnedConn&) = delete;
  OwnedConn& operator=(const OwnedConn&) = delete;
};

// The error a call reports without libvirt having set one.
void CaptureOwn(int code, const char* message) {
  tlsCaptured = VirtError{code, VIR_FROM_NONE, VIR_ERR_ERROR, message};
  tlsHasCaptured = true;
}

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
  auto out = std::make_shared<OwnedDomain>();
  return PromiseWorker::Start(
      env, what,
      [ref = std::move(ref), out, call]() mutable {
        out->dom = call(ref->conn);
        return out->dom != nullptr;
      },
      [out](Napi::Env e) {
        Napi::Object dom = Domain::Wrap(e, out->dom);
        out->Take();  // the Domain owns it now; until then `out` would free it
        return dom;
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
  if (info.Length() < 3 || !info[0].IsExternal() || !info[1].IsExternal() || !info[2].IsExternal()) {
    throw Napi::TypeError::New(info.Env(), "use open(uri, listener)");
  }
  conn_ = info[0].As<Napi::External<virConnect>>().Data();
  ctx_ = info[1].As<Napi::External<CallbackContext>>().Data();
  state_ = info[2].As<Napi::External<ConnState>>().Data()->shared_from_this();
  Counts().connections++;
}

Connection::~Connection() {
  Counts().connections--;
  // Never closed: closed now, but on the executor. A finalizer runs on the JS thread, and
  // closing is an RPC (it would block JS for as long as libvirtd does not answer).
  if (conn_ != nullptr) {
    virConnectPtr conn = conn_;
    conn_ = nullptr;
    auto st = state_;
    Executor::Get().Release([conn, st]() {
      CloseConnection(conn, st);
      virResetLastError();
    });
  }
  if (ctx_ != nullptr) ctx_->Unref();
}

// open(uri, listener, keepAliveIntervalSec, keepAliveCount) -> Promise<Connection>
Napi::Value Connection::Open(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string uri = ReqString(info, 0);
  if (info.Length() < 2 || !info[1].IsFunction()) throw Napi::TypeError::New(env, "listener must be a function");
  int interval = info.Length() > 2 && info[2].IsNumber() ? info[2].As<Napi::Number>().Int32Value() : 5;
  unsigned int count = info.Length() > 3 && info[3].IsNumber() ? info[3].As<Napi::Number>().Uint32Value() : 3;
  EnsureEventLoop(env);

  auto* ctx = new CallbackContext();
  // One reference for the open call, handed to the Connection on success and dropped
  // with the call otherwise (a failed open used to leak the context and its tsfn).
  auto hold = std::make_shared<CtxRef>(ctx);
  // Events must never keep the process alive on their own (SafeTsfn starts unref'd).
  ctx->tsfn = SafeTsfn::New(env, info[1], "virt-events", EventToJs, nullptr);

  auto out = std::make_shared<OwnedConn>();
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
        if (virConnectRegisterCloseCallback(conn, OnClose, ctx, nullptr) < 0) {
          ctx->Unref();
          VirtError ignored = CaptureError("close callback");
          (void)ignored;
        } else {
          out->st->closeCbCtx = ctx;
        }
        out->conn = conn;
        return true;
      },
      [out, hold](Napi::Env e) -> Napi::Value {
        auto* data = e.GetInstanceData<AddonData>();
        Napi::Value conn = data->connectionCtor.New({Napi::External<virConnect>::New(e, out->conn),
                                                     Napi::External<CallbackContext>::New(e, hold->ctx),
                                                     Napi::External<ConnState>::New(e, out->st.get())});
        out->conn = nullptr;
        hold->Take();
        return conn;
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
  // This object's context reference goes with the close: the listener is done with.
  auto hold = std::make_shared<CtxRef>(ctx_);
  ctx_ = nullptr;
  auto st = state_;
  return PromiseWorker::Start(
      env, "virConnectClose failed", [conn, st, hold]() { return CloseConnection(conn, st); }, nullptr);
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
          bool failIsActive = Counts().failListIsActive.load() > 0 && Counts().failListIsActive.fetch_sub(1) > 0;
          int active = virDomainIsActive(failIsActive ? nullptr : doms[i]);
          // Not after a failure: the next call would reset the error being reported.
          int persistent = active < 0 ? -1 : virDomainIsPersistent(doms[i]);
          if (active < 0 || persistent < 0) {
            // A domain that vanished between list and query is simply not listed.
            if (ok && virGetLastErrorCode() != VIR_ERR_NO_DOMAIN) {
              CaptureNow(active < 0 ? "virDomainIsActive failed" : "virDomainIsPersistent failed");
              ok = false;
            }
            virResetLastError();
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
  // The registrations take their own references; this one keeps the context alive
  // while the call runs, whatever happens to this object meanwhile.
  ctx_->Ref();
  auto hold = std::make_shared<CtxRef>(ctx_);
  auto st = state_;
  return PromiseWorker::Start(
      info.Env(), "virConnectDomainEventRegisterAny failed",
      [ref = std::move(ref), hold, st]() mutable {
        std::lock_guard<std::mutex> lock(st->mutex);
        if (st->closed) {
          // close() came first: a registration now would hold the connection open.
          CaptureOwn(VIR_ERR_INVALID_CONN, "connection is closed");
          return false;
        }
        if (!st->eventIds.empty()) return true;  // already registered: idempotent
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
        CallbackContext* ctx = hold->ctx;
        int failAt = Counts().failEventRegistrationAt.exchange(-1);
        int i = 0;
        for (const Reg& r : regs) {
          ctx->Ref();
          int eventId = i++ == failAt ? -1 : r.id;  // -1: libvirt refuses it (failpoint)
          int id = virConnectDomainEventRegisterAny(ref->conn, nullptr, eventId, r.cb, ctx, FreeContextRef);
          if (id < 0) {
            // All or nothing: a partial set left registered would make the next call
            // report success while some events never come.
            CaptureNow("virConnectDomainEventRegisterAny failed");
            ctx->Unref();
            for (int made : st->eventIds) virConnectDomainEventDeregisterAny(ref->conn, made);
            st->eventIds.clear();
            virResetLastError();
            return false;
          }
          st->eventIds.push_back(id);
        }
        return true;
      },
      nullptr);
}

Napi::Value Connection::DeregisterDomainEvents(const Napi::CallbackInfo& info) {
  auto ref = std::make_shared<ConnRef>(Checked(info));
  auto st = state_;
  return PromiseWorker::Start(
      info.Env(), "virConnectDomainEventDeregisterAny failed",
      [ref = std::move(ref), st]() mutable {
        std::lock_guard<std::mutex> lock(st->mutex);
        bool ok = true;
        for (int id : st->eventIds) {
          if (virConnectDomainEventDeregisterAny(ref->conn, id) != 0 && ok) {
            CaptureNow("virConnectDomainEventDeregisterAny failed");
            ok = false;
          }
        }
        st->eventIds.clear();
        return ok;
      },
      nullptr);
}

}  // namespace virt
