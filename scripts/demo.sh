#!/usr/bin/env bash
# Local demo on the embedded default: a verifier on SQLite, a join token, an agent, a registration
# entry for this shell's uid, and an X.509-SVID fetched over the SPIFFE Workload API and printed.
# Everything lives in ./.sigil-demo and both daemons are stopped at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${SIGIL_DEMO_SKIP_SETUP:-}" != 1 ]; then bash scripts/setup.sh; fi

D="$PWD/.sigil-demo"
rm -rf "$D"; mkdir -p "$D"
SIGIL="$PWD/bin/sigil"
PORT=$(node -e 'const s=require("net").createServer().listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})')
export SIGIL_ADMIN_SOCKET="$D/admin.sock"

cat > "$D/verifier.yaml" <<YAML
trustDomain: demo.sigil
listen: { address: 127.0.0.1, port: $PORT }
adminSocket: $D/admin.sock
dataDir: $D/verifier
logLevel: warn
nodeAttestors:
  join_token: {}
YAML

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

echo "== 1. start the verifier (SQLite in $D/verifier)"
"$SIGIL" verifier run --config "$D/verifier.yaml" > "$D/verifier.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do "$SIGIL" healthcheck >/dev/null 2>&1 && break; sleep 0.1; done
"$SIGIL" healthcheck

echo "== 2. a join token for one node, known also as spiffe://demo.sigil/node/demo"
"$SIGIL" token generate --spiffe-id spiffe://demo.sigil/node/demo --json > "$D/token.json"
node -e 'const t=require(process.argv[1]); console.log(`token for ${t.agentId}, expires ${t.expiresAt}`); require("fs").writeFileSync(process.argv[2], t.token, { mode: 0o600 })' "$D/token.json" "$D/join-token"
"$SIGIL" bundle show > "$D/bundle.pem"

echo "== 3. a registration entry: processes of uid $(id -u) on that node get spiffe://demo.sigil/demo/app"
"$SIGIL" entry create --spiffe-id spiffe://demo.sigil/demo/app --parent-id spiffe://demo.sigil/node/demo --selector "unix:uid:$(id -u)"

echo "== 4. start the agent (attests with the join token, serves the Workload API)"
cat > "$D/agent.yaml" <<YAML
trustDomain: demo.sigil
verifier: { address: 127.0.0.1, port: $PORT }
trustBundle: $D/bundle.pem
workloadApiSocket: $D/agent/api.sock
dataDir: $D/agent
logLevel: warn
nodeAttestors:
  join_token: { tokenFile: $D/join-token }
workloadAttestors:
  unix: {}
YAML
"$SIGIL" agent run --config "$D/agent.yaml" > "$D/agent.log" 2>&1 &
pids+=($!)

echo "== 5. fetch the SVID over the SPIFFE Workload API"
for _ in $(seq 1 150); do "$SIGIL" svid fetch --socket "unix://$D/agent/api.sock" --write "$D/svid" >/dev/null 2>&1 && break; sleep 0.2; done
"$SIGIL" svid fetch --socket "unix://$D/agent/api.sock" --write "$D/svid"
openssl x509 -in "$D/svid/svid.pem" -noout -subject -ext subjectAltName -dates
openssl verify -CAfile "$D/svid/bundle.pem" "$D/svid/svid.pem"

echo "== 6. an operator-minted SVID and JWT-SVID, straight from the verifier"
"$SIGIL" x509 mint --spiffe-id spiffe://demo.sigil/demo/cli --ttl 600 --write "$D/minted" | tail -1
"$SIGIL" jwt mint --spiffe-id spiffe://demo.sigil/demo/cli --audience demo | cut -c1-60 | sed 's/$/…/'
echo "demo done: files in $D (logs: verifier.log, agent.log)"
