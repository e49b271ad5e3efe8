#!/usr/bin/env bash
# Installs what Sigil needs on a Debian/Ubuntu machine, then the npm dependencies (which also build
# the native addon). Safe to run again: packages already present are not reinstalled.
#   swtpm swtpm-tools tpm2-tools libtss2-dev   TPM agent + TPM tests (a software TPM)
#   python3-grpcio python3-protobuf            Workload API interop test with a client Sigil did not write
#   openssl util-linux                         openssl verify in tests; setpriv for the other-uid test
#   postgresql                                 the PostgreSQL datastore tests start a private server
#   libssl-dev                                 bench/fleet.ts --client native (a C load generator, built with cc)
#   podman containerd runc busybox-static      container attestation tests run real containers (podman's
#                                              Docker Engine API, containerd's gRPC API) from a local busybox image
set -euo pipefail
cd "$(dirname "$0")/.."

PKGS=(swtpm swtpm-tools tpm2-tools libtss2-dev python3-grpcio python3-protobuf openssl util-linux ca-certificates postgresql libssl-dev podman containerd runc busybox-static)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""
    if [ "$(id -u)" != 0 ]; then
      if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else echo "setup: need root (or sudo) to install: ${missing[*]}" >&2; exit 1; fi
    fi
    echo "setup: installing Debian packages: ${missing[*]}"
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "setup: apt-get not found; install these yourself for TPM support and the full test suite: ${missing[*]}" >&2
    if [ "${CI:-}" = "true" ]; then exit 1; fi
  fi
fi

if [ -f package-lock.json ]; then npm ci --no-audit --no-fund; else npm install --no-audit --no-fund; fi
