{
  # Two addons:
  #   sigil_sys  - always built: SO_PEERCRED/SO_PEERPIDFD, the Nitro NSM ioctl, the SEV-SNP
  #                SNP_GET_EXT_REPORT ioctl. Needs only libc and Node headers.
  #   sigil_tpm  - built only when pkg-config finds tss2-esys, tss2-tctildr, tss2-mu and tss2-rc
  #                (Debian: libtss2-dev). Without them the target is left out and the build still
  #                succeeds; src/native/tpm.ts then reports TPM support as unavailable.
  # SIGIL_DISABLE_TPM=1 in the environment leaves sigil_tpm out even when libtss2 is present
  # (scripts/build-native.mjs sets it for its retry after a failed TPM compile).
  "variables": {
    "have_tss2%": "<!(test \"$SIGIL_DISABLE_TPM\" = 1 && echo 0 || { pkg-config --exists tss2-esys tss2-tctildr tss2-mu tss2-rc >/dev/null 2>&1 && echo 1 || echo 0; })"
  },
  "target_defaults": {
    "cflags!": ["-fno-exceptions"],
    "cflags_cc!": ["-fno-exceptions"],
    "cflags_cc": ["-std=c++17", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Wno-missing-field-initializers"],
    "defines": ["NAPI_VERSION=8", "NODE_ADDON_API_DISABLE_DEPRECATED", "NAPI_CPP_EXCEPTIONS"],
    "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"]
  },
  "targets": [
    {
      "target_name": "sigil_sys",
      "sources": ["native/sys.cc"]
    }
  ],
  "conditions": [
    ["have_tss2==1", {
      "targets": [
        {
          "target_name": "sigil_tpm",
          "sources": ["native/tpm.cc"],
          "cflags_cc": ["<!@(pkg-config --cflags tss2-esys tss2-tctildr tss2-mu tss2-rc)"],
          "libraries": ["<!@(pkg-config --libs tss2-esys tss2-tctildr tss2-mu tss2-rc)"]
        }
      ]
    }]
  ]
}
