#!/usr/bin/env bash
# Checks the package as users get it: `npm pack` the checkout, install the tarball into an empty
# folder, build the native addon there with the shipped install script, and run `npx sigil --version`.
#
# Needs nothing but the npm registry (or npm's cache): the dependencies' own install scripts are
# skipped (better-sqlite3 would compile SQLite for minutes, and `--version` never opens a
# database); Sigil's install script (scripts/build-native.mjs) is then run by hand in the
# installed package, so a tarball missing binding.gyp, native/ or the script fails here (the TPM
# addon is left out of that build to keep the check near a minute: its source is the checkout's,
# which scripts/setup.sh builds with TPM support; here only its presence is checked). When the
# addon cannot be built on this machine (no compiler), the check says so and goes on: the CLI must
# still start, since the addon is loaded only by the commands that need it.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
want=$(node -p 'require("./package.json").version')
work=$(mktemp -d "${TMPDIR:-/tmp}/sigil-pack.XXXXXX")
trap 'rm -rf "$work"' EXIT

echo "== [${SECONDS}s] pack"
# dist/ is fresh: scripts/test.sh runs setup first, whose `npm ci` runs `prepare` (the TypeScript
# build) on this checkout. Packing without scripts saves building it a second time (about a minute).
[ -f dist/cli/main.js ] || npm run --silent build
tgz=$(npm pack --silent --ignore-scripts --pack-destination "$work" | tail -n 1)
tarball="$work/$tgz"
[ -f "$tarball" ] || { echo "check-pack: npm pack did not write $tarball" >&2; exit 1; }

listing=$(tar -tzf "$tarball")
for f in package/bin/sigil package/dist/cli/main.js package/dist/plugin-kit/index.js package/binding.gyp package/native/sys.cc package/native/tpm.cc package/scripts/build-native.mjs package/proto/workload.proto package/LICENSE; do
  grep -qx "$f" <<<"$listing" || { echo "check-pack: $f is missing from the package" >&2; exit 1; }
done
extra=$(grep -P '^package/(scripts/(?!build-native\.mjs$)|test/|bench/|src/|\.github/)' <<<"$listing" || true)
if [ -n "$extra" ]; then
  echo "check-pack: developer files in the package:" >&2
  echo "$extra" >&2
  exit 1
fi

echo "== [${SECONDS}s] install into an empty folder"
app="$work/app"
mkdir "$app"
printf '{ "name": "sigil-pack-check", "version": "0.0.0", "private": true }\n' >"$app/package.json"
(cd "$app" && npm install --no-audit --no-fund --ignore-scripts --prefer-offline --loglevel=error "$tarball" >/dev/null)

echo "== [${SECONDS}s] native addon (the package's install script)"
if (cd "$app/node_modules/sigil" && SIGIL_DISABLE_TPM=1 node scripts/build-native.mjs >"$work/native.log" 2>&1); then
  [ -f "$app/node_modules/sigil/build/Release/sigil_sys.node" ] || { echo "check-pack: build-native.mjs succeeded but sigil_sys.node is missing" >&2; exit 1; }
  grep -h 'sigil native:' "$work/native.log" || true
else
  if [ "${CI:-}" = "true" ]; then
    cat "$work/native.log" >&2
    echo "check-pack: the native addon did not build from the package" >&2
    exit 1
  fi
  echo "check-pack: the native addon did not build here (see below); checking that the CLI still starts"
  tail -n 5 "$work/native.log"
fi

echo "== [${SECONDS}s] npx sigil --version"
got=$(cd "$app" && npx --no-install sigil --version)
if [ "$got" != "$want" ]; then
  echo "check-pack: sigil --version printed '$got', package.json says '$want'" >&2
  exit 1
fi
echo "check-pack: ok ($tgz installs; sigil --version = $got)"
cd "$root"
