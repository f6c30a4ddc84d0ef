{
  "targets": [
    {
      "target_name": "virt",
      "sources": ["native/addon.cc", "native/connection.cc", "native/domain.cc", "native/executor.cc", "native/lvm_mda.cc", "native/loop.cc"],
      "dependencies": ["<!(node -p \"require('node-addon-api').targets\"):node_addon_api_except"],
      "cflags_cc": ["-std=c++17", "-Wall", "-Wextra", "-Wno-unused-parameter"],
      "cflags_cc!": ["-fno-exceptions"],
      "libraries": ["<!@(pkg-config --libs libvirt)"],
      "include_dirs": ["<!@(pkg-config --cflags-only-I libvirt | sed 's/-I//g')"],
      "defines": ["NAPI_VERSION=8"]
    }
  ]
}
