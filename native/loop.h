#pragma once

#include <napi.h>

namespace virt {

// loopAttach, loopDetach, blockHolders, listLoops (see loop.cc).
void InitLoop(Napi::Env env, Napi::Object exports);

}  // namespace virt
