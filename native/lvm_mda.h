// Direct (O_DIRECT) reads of a block device, for the LVM metadata-area check.
#pragma once

#include <napi.h>

namespace virt {

// readDirect(path, [{ offset, length }, …]) -> Promise<Buffer[]>
Napi::Value ReadDirect(const Napi::CallbackInfo& info);

}  // namespace virt
