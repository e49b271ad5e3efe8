#!/usr/bin/env bash
# Runs a benchmark compiled to JavaScript (no TypeScript loader in the processes, so RSS numbers
# are what a deployed agent/verifier would show). Usage: bash bench/compiled.sh workload-api
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
npx tsc -p tsconfig.json --outDir "$out" --noEmit false --declaration false --sourceMap false
cp -r proto package.json bin "$out/"
ln -s "$PWD/node_modules" "$out/node_modules"
ln -s "$PWD/build" "$out/build"
node --expose-gc "$out/bench/${1:?name of a bench, e.g. workload-api}.js" "${@:2}"
