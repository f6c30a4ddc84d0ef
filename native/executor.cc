#include "executor.h"

#include <system_error>
#include <thread>

namespace virt {

DebugCounts& Counts() {
  static DebugCounts* counts = new DebugCounts();
  return *counts;
}

Executor& Executor::Get() {
  // Leaked on purpose: its threads may outlive main() blocked in libvirt.
  static Executor* executor = new Executor();
  return *executor;
}

void Executor::SpawnLocked() {
  threads_++;
  starting_++;
  try {
    std::thread([this]() { Loop(); }).detach();
  } catch (...) {
    threads_--;
    starting_--;
    throw;
  }
}

void Executor::Submit(std::function<void()> task) {
  std::unique_lock<std::mutex> lock(m_);
  queue_.push_back(std::move(task));
  // Each waiting or starting thread takes one task; past them, a new thread unless at
  // the cap.
  if (waiting_ + starting_ >= queue_.size()) {
    cv_.notify_one();
    return;
  }
  if (threads_ >= max_) return;  // waits FIFO for a thread to come free
  try {
    SpawnLocked();
  } catch (const std::system_error&) {
    if (threads_ > 0) return;  // a running thread will get to it
    queue_.pop_back();
    throw;
  }
}

void Executor::Release(std::function<void()> task) noexcept {
  try {
    Submit(std::move(task));
  } catch (...) {
    // Leaking a handle beats an RPC on the JS thread.
  }
}

void Executor::Loop() {
  std::unique_lock<std::mutex> lock(m_);
  starting_--;
  for (;;) {
    while (queue_.empty()) {
      if (threads_ > max_) {  // the cap was lowered
        threads_--;
        return;
      }
      waiting_++;
      bool timedOut = cv_.wait_for(lock, idle_) == std::cv_status::timeout;
      waiting_--;
      if (queue_.empty() && timedOut) {
        threads_--;
        return;
      }
    }
    std::function<void()> task = std::move(queue_.front());
    queue_.pop_front();
    busy_++;
    lock.unlock();
    try {
      task();
    } catch (...) {
      // Tasks handle their own failures; this only keeps the thread's count right.
    }
    // Whatever the task captured (handle references) is dropped here, in this thread.
    task = nullptr;
    lock.lock();
    busy_--;
  }
}

void Executor::Configure(size_t maxThreads, std::chrono::milliseconds idleTimeout) {
  std::unique_lock<std::mutex> lock(m_);
  max_ = maxThreads;
  idle_ = idleTimeout;
  // Waiting threads re-read the timeout; a raised cap starts threads for queued work.
  cv_.notify_all();
  try {
    while (threads_ < max_ && queue_.size() > waiting_ + starting_) SpawnLocked();
  } catch (const std::system_error&) {
    // Queued work waits for the threads there are.
  }
}

size_t Executor::MaxThreads() {
  std::lock_guard<std::mutex> lock(m_);
  return max_;
}

std::chrono::milliseconds Executor::IdleTimeout() {
  std::lock_guard<std::mutex> lock(m_);
  return idle_;
}

ExecutorStats Executor::Stats() {
  std::lock_guard<std::mutex> lock(m_);
  return ExecutorStats{threads_, busy_, threads_ - busy_, queue_.size()};
}

std::shared_ptr<SafeTsfn> SafeTsfn::New(napi_env env, napi_value fn, const char* name,
                                        napi_threadsafe_function_call_js callJs, void* context) {
  auto self = std::shared_ptr<SafeTsfn>(new SafeTsfn());
  napi_value resourceName;
  NAPI_THROW_IF_FAILED(env, napi_create_string_utf8(env, name, NAPI_AUTO_LENGTH, &resourceName),
                       std::shared_ptr<SafeTsfn>());
  // The finalizer's own reference keeps this object valid until Node is done with it.
  auto* keep = new std::shared_ptr<SafeTsfn>(self);
  napi_status st = napi_create_threadsafe_function(env, fn, nullptr, resourceName, 0, 1, keep, Finalize,
                                                   context, callJs, &self->tsfn_);
  if (st != napi_ok) {
    delete keep;
    NAPI_THROW_IF_FAILED(env, st, std::shared_ptr<SafeTsfn>());
  }
  Counts().tsfns++;
  self->open_ = true;
  napi_unref_threadsafe_function(env, self->tsfn_);
  return self;
}

bool SafeTsfn::Call(void* data) {
  std::lock_guard<std::recursive_mutex> lock(m_);
  if (!open_) return false;
  napi_status st = napi_call_threadsafe_function(tsfn_, data, napi_tsfn_nonblocking);
  if (st == napi_closing) open_ = false;
  return st == napi_ok;
}

void SafeTsfn::Release() {
  std::lock_guard<std::recursive_mutex> lock(m_);
  if (!open_) return;
  open_ = false;
  napi_release_threadsafe_function(tsfn_, napi_tsfn_release);
}

void SafeTsfn::Ref(napi_env env) {
  std::lock_guard<std::recursive_mutex> lock(m_);
  if (open_) napi_ref_threadsafe_function(env, tsfn_);
}

void SafeTsfn::Unref(napi_env env) {
  std::lock_guard<std::recursive_mutex> lock(m_);
  if (open_) napi_unref_threadsafe_function(env, tsfn_);
}

// Runs on the JS thread when Node destroys the tsfn: after the last Release, or at env
// teardown whatever the thread count (so no thread may call it afterwards).
void SafeTsfn::Finalize(napi_env, void* data, void*) {
  auto* keep = static_cast<std::shared_ptr<SafeTsfn>*>(data);
  {
    std::lock_guard<std::recursive_mutex> lock((*keep)->m_);
    (*keep)->open_ = false;
    (*keep)->tsfn_ = nullptr;
  }
  Counts().tsfns--;
  delete keep;
}

namespace {

void SettleOnJsThread(napi_env env, napi_value, void*, void* data) {
  std::unique_ptr<Settleable> item(static_cast<Settleable*>(data));
  if (env == nullptr) return;  // env torn down: nobody is waiting any more
  try {
    Napi::HandleScope scope(env);
    item->Settle(Napi::Env(env));
  } catch (const Napi::Error& e) {
    ThrowToJsQuietly(env, e);
  } catch (...) {
    // A C callback: nothing may escape it.
  }
}

}  // namespace

std::shared_ptr<Settler> Settler::New(napi_env env) {
  auto s = std::make_shared<Settler>();
  s->tsfn = SafeTsfn::New(env, nullptr, "virt-executor", SettleOnJsThread, nullptr);
  return s;
}

}  // namespace virt
