#!/bin/sh
# Registers one TPM node and the workloads it may run, with `sigil entry create` on the verifier
# (it talks to the admin socket: run it as the verifier's user, or set SIGIL_ADMIN_SOCKET).
#
# A node entry says which machines count: parent = the verifier, selectors = what their TPM
# proved. Workload entries under it say which process on those machines gets which identity: an
# entry applies when all its selectors are among the workload's (DESIGN §5).
#
# Set these first (the values below are examples):
#   TRUST_DOMAIN   your trust domain
#   EK_PUBHASH     sha256 of the node's EK public key, as `sigil evidence tpm` prints it
#   PCR7           the node's Secure Boot state: sha256 PCR 7, hex
#   APP_SHA256     sha256sum of the binary that may be spiffe://$TRUST_DOMAIN/billing
set -eu
TRUST_DOMAIN=${TRUST_DOMAIN:-example.org}
EK_PUBHASH=${EK_PUBHASH:?set EK_PUBHASH to the node EK hash (sigil evidence tpm)}
PCR7=${PCR7:?set PCR7 to the expected sha256 PCR 7 value}
APP_SHA256=${APP_SHA256:?set APP_SHA256 to the sha256 of /usr/local/bin/billing}
TD="spiffe://$TRUST_DOMAIN"

# The node: any agent whose TPM has this EK and booted with this Secure Boot state.
sigil entry create --spiffe-id "$TD/nodes/web-1" --parent-id "$TD/sigil/verifier" \
  --selector "tpm:ek_pubhash:$EK_PUBHASH" --selector "tpm:pcr:sha256:7:$PCR7"

# A process by user: whatever runs as uid 1000 on that node.
sigil entry create --spiffe-id "$TD/web" --parent-id "$TD/nodes/web-1" \
  --selector unix:uid:1000 --x509-ttl 1800

# A process by binary: only this exact executable, at this path, with this hash.
sigil entry create --spiffe-id "$TD/billing" --parent-id "$TD/nodes/web-1" \
  --selector unix:path:/usr/local/bin/billing --selector "unix:sha256:$APP_SHA256" \
  --dns billing.internal

# A Kubernetes pod on that node: namespace and service account, as the kubelet reports them.
sigil entry create --spiffe-id "$TD/ns/payments/sa/api" --parent-id "$TD/nodes/web-1" \
  --selector k8s:ns:payments --selector k8s:sa:api

sigil entry list --parent-id "$TD/nodes/web-1"
