#!/usr/bin/env bash
# Brings podkey up on its embedded defaults and shows it working:
#   a SoftHSM2 token initialised here, root keys created in it,
#   podkey-keyd started on a local socket (development identity mode),
#   a policy, an enrolled secret, credentials of every kind issued by the
#   CLI and printed with secrets redacted, a policy refusal, the pod
#   revoked, and the audit chain proven.
# Everything lives under $PODKEY_DEMO_DIR (default /tmp/podkey-demo);
# set PODKEY_DEMO_KEEP=1 to leave keyd running afterwards.
# PODKEY_HSM=sm runs it on podkey's SM development module (hack/smhsm,
# built here) instead of SoftHSM2: every gm key inside the module.
set -euo pipefail
cd "$(dirname "$0")/.."

hack/install-deps.sh
make -s build

DIR=${PODKEY_DEMO_DIR:-/tmp/podkey-demo}
export PODKEY_HSM_TOKEN=podkey-demo
export PODKEY_SOCKET="$DIR/keyd.sock"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

if [ "${PODKEY_HSM:-softhsm}" = sm ]; then
  step "SM development module (hack/smhsm), token $PODKEY_HSM_TOKEN"
  mkdir -p "$DIR" && chmod 700 "$DIR"
  go build -buildmode=c-shared -o "$DIR/libpodkey-smhsm.so" ./hack/smhsm
  export PODKEY_SMHSM_DIR="$DIR/smhsm" PODKEY_HSM_MODULE="$DIR/libpodkey-smhsm.so"
  export PODKEY_HSM_MECHANISMS="$PWD/hack/smhsm/mechanisms.yaml" PODKEY_HSM_PIN_FILE="$DIR/pin"
  step "podkey hsm init --init-token"
  bin/podkey hsm init --init-token
else
  step "SoftHSM2 token $PODKEY_HSM_TOKEN"
  . hack/softhsm-token.sh
  step "podkey hsm init"
  bin/podkey hsm init
fi
step "podkey hsm status"
bin/podkey hsm status

cat > "$DIR/policy.yaml" <<'YAML'
version: v1
rules:
- namespace: payments
  serviceAccount: payments
  objects: [ledger-api, mtls, card-token-key, svc-token, legacy-db]
YAML
cat > "$DIR/objects.yaml" <<'YAML'
- name: ledger-api
  kind: apiKey
  ttl: 1h
- name: mtls
  kind: certificate
  algorithm: sm2
  ttl: 24h
- name: card-token-key
  kind: derivedKey
  suite: gm
  scope: serviceAccount
- name: svc-token
  kind: token
  audience: [ledger]
- name: legacy-db
  kind: secret
YAML

step "start podkey-keyd (store $DIR/keyd.db, socket $PODKEY_SOCKET)"
pkill -f "podkey-keyd.*$DIR" 2>/dev/null || true
bin/podkey-keyd --store "$DIR/keyd.db" --socket "$PODKEY_SOCKET" --listen "${PODKEY_DEMO_LISTEN:-127.0.0.1:7443}" \
  --policy-file "$DIR/policy.yaml" --insecure-local-identity >"$DIR/keyd.log" 2>&1 &
KEYD=$!
if [ "${PODKEY_DEMO_KEEP:-0}" != 1 ]; then trap 'kill $KEYD 2>/dev/null; wait $KEYD 2>/dev/null || true' EXIT; fi
for _ in $(seq 100); do bin/podkey policy get >/dev/null 2>&1 && break; sleep 0.1; done
bin/podkey policy get

step "enroll a static secret (value from stdin)"
printf 'legacy-db-password-%s' "$(head -c 6 /dev/urandom | od -An -tx1 | tr -d ' \n')" | bin/podkey secret put payments/legacy-db
bin/podkey secret list

step "issue every kind for a payments pod (secrets redacted)"
bin/podkey issue -f "$DIR/objects.yaml" --namespace payments --service-account payments \
  --pod payments-7f9c --pod-uid 7d3c1a52-0000-4c1e-9b1e-5f0c2a7d9e11 | tee "$DIR/issue.txt"

step "a pod the policy does not name is refused"
if bin/podkey issue --object ledger-api:apiKey --namespace shop --service-account web; then
  echo "expected a refusal"; exit 1
fi

step "revoke the pod and prove the audit chain"
bin/podkey revoke --namespace payments --service-account payments --pod payments-7f9c --pod-uid 7d3c1a52-0000-4c1e-9b1e-5f0c2a7d9e11
bin/podkey audit verify
bin/podkey audit export | tail -n 3

step "keyd log (no secrets, no tokens)"
tail -n 5 "$DIR/keyd.log"
echo
echo "podkey is up. keyd: socket $PODKEY_SOCKET, TLS ${PODKEY_DEMO_LISTEN:-127.0.0.1:7443} (CA: bin/podkey ca bundle)"
