#pragma once

#include <napi.h>

namespace virt {

// loopAttach, loopDetach, blockHolders (see loop.cc).
void InitLoop(Napi::Env env, Napi::Object exports);

}  // namespace virt
