#!/usr/bin/env bash
# The test command: set up, then type-check, lint and run every test (real swtpm, real evidence,
# real SQLite, real gRPC clients). Under CI=true nothing that needs a real component may be skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "== type-check"; npm run --silent typecheck
echo "== lint"; npm run --silent lint
echo "== tests"; npx vitest run
echo "== package"; bash scripts/check-pack.sh
