#!/usr/bin/env bash
# Runs every podkey test on this machine, installing what is missing:
# formatting and vet, the generated API code being current, unit and
# integration tests (real SoftHSM2 tokens, real keyd over gRPC, real tmpfs
# mounts, a real etcd and kube-apiserver), short fuzzing of every parser,
# and the demo as an end-to-end smoke test. The first run builds
# kube-apiserver, kubelet, kube-controller-manager and kube-scheduler from
# the Go module proxy (about 15 minutes on two cores); later runs reuse
# them.
set -euo pipefail
cd "$(dirname "$0")/.."

hack/install-deps.sh

echo "== gofmt and go vet"
unformatted=$(gofmt -l $(git ls-files '*.go'))
[ -z "$unformatted" ] || { echo "gofmt needed: $unformatted"; exit 1; }
go vet ./...
(cd e2e/tlcpinterop && go vet ./...) # its own module: the independent TLCP stack

echo "== generated API code is current"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
cp pkg/api/keydv1/*.pb.go "$tmp"/
make -s proto >/dev/null
for f in pkg/api/keydv1/*.pb.go; do cmp -s "$f" "$tmp/$(basename "$f")" || { echo "$f is stale: run make proto"; exit 1; }; done

echo "== Kubernetes binaries for the test clusters (cached after the first build)"
PODKEY_KUBE_BIN_DIR=$(hack/kube-binaries.sh)
export PODKEY_KUBE_BIN_DIR

echo "== go test"
go test -count=1 -timeout 30m ./...

# A count, not a duration: Go 1.26's coordinator can race its own timer
# on a loaded machine (see hack/fuzz.sh); a count never starts that timer.
echo "== fuzz (${FUZZTIME:=50000x} per target)"
FUZZTIME=$FUZZTIME hack/fuzz.sh

echo "== demo (end to end with the real binaries)"
PODKEY_DEMO_LISTEN=127.0.0.1:0 PODKEY_DEMO_DIR=$(mktemp -d /tmp/podkey-demo-test.XXXX) hack/demo.sh > /tmp/podkey-demo-test.log 2>&1 || { cat /tmp/podkey-demo-test.log; exit 1; }
grep -q "audit chain intact" /tmp/podkey-demo-test.log
if grep -q "legacy-db-password-" /tmp/podkey-demo-test.log; then echo "demo output shows a secret"; exit 1; fi
echo "demo ok"
echo "== demo on the SM development module (PODKEY_HSM=sm)"
PODKEY_HSM=sm PODKEY_DEMO_LISTEN=127.0.0.1:0 PODKEY_DEMO_DIR=$(mktemp -d /tmp/podkey-demo-sm.XXXX) hack/demo.sh > /tmp/podkey-demo-sm.log 2>&1 || { cat /tmp/podkey-demo-sm.log; exit 1; }
grep -q "audit chain intact" /tmp/podkey-demo-sm.log
for k in mac derive ca jwt; do
  grep -Eq "^podkey/$k/gm/g1 +inside the module" /tmp/podkey-demo-sm.log || { echo "SM demo: the gm $k key is not inside the module"; cat /tmp/podkey-demo-sm.log; exit 1; }
done
if grep -q "legacy-db-password-" /tmp/podkey-demo-sm.log; then echo "SM demo output shows a secret"; exit 1; fi
echo "demo on the SM module ok"
