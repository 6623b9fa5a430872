#!/usr/bin/env bash
# Runs `podkey bench` on a SoftHSM2 token of its own and writes
# docs/benchmarks.md: hack/bench-intro.md, which says what is measured,
# then the figures (generated, never edited by hand).
# BENCH_DURATION (default 2s) sets the length of each measurement.
set -euo pipefail
cd "$(dirname "$0")/.."
hack/install-deps.sh
make -s build
DIR=${PODKEY_BENCH_DIR:-/tmp/podkey-bench}
export PODKEY_HSM_TOKEN=podkey-bench
. hack/softhsm-token.sh
bin/podkey hsm init >/dev/null
OUT=docs/benchmarks.md
bin/podkey bench --duration "${BENCH_DURATION:-2s}" --concurrency 1,8,64 -o "$OUT.table"
{ head -n 1 "$OUT.table"; echo; cat hack/bench-intro.md; tail -n +2 "$OUT.table"; } > "$OUT"
rm -f "$OUT.table"

# The same on podkey's SM development module (hack/smhsm), where the gm
# keys are inside the module: its raw SM2 sign, HMAC-SM3 and SM4-GCM
# beside keyd's gm issuance on it.
SM="$DIR/sm"
mkdir -p "$SM" && chmod 700 "$SM"
go build -buildmode=c-shared -o "$SM/libpodkey-smhsm.so" ./hack/smhsm
(
  export PODKEY_SMHSM_DIR="$SM/tokens" PODKEY_HSM_MODULE="$SM/libpodkey-smhsm.so" PODKEY_HSM_TOKEN=podkey-bench-sm
  export PODKEY_HSM_MECHANISMS="$PWD/hack/smhsm/mechanisms.yaml" PODKEY_HSM_PIN_FILE="$SM/pin"
  bin/podkey hsm init --init-token >/dev/null
  bin/podkey bench --duration "${BENCH_DURATION:-2s}" --concurrency 1,8,64 -o "$OUT.sm"
)
{
  echo
  echo "## On the SM development module: every gm key inside the module"
  echo
  echo "The same bench on a token of \`hack/smhsm\` (mechanism table \`hack/smhsm/mechanisms.yaml\`): the gm rows compare with the module's own SM2 sign, HMAC-SM3 and SM4-GCM."
  tail -n +2 "$OUT.sm"
} >> "$OUT"
rm -f "$OUT.sm"

# The node path: cold publish onto a real tmpfs with a real keyd, beside
# its floor (a bare tmpfs mount plus the same writes), and a no-op
# republish. Needs root for the mounts.
if [ "$(id -u)" = 0 ]; then
  {
    echo
    echo "## Node path (go test -bench, real tmpfs, real keyd on SoftHSM2)"
    echo
    echo '```'
    go test -run '^$' -bench 'PublishCold|BareTmpfs' -benchtime "${BENCH_NODE_N:-300}x" ./internal/node/csidriver | grep -E '^(Benchmark|cpu|goos|goarch)'
    # The no-op republish, with forced renewals of other scopes in force:
    # microseconds, so many more samples for a p99 that means something.
    go test -run '^$' -bench 'RepublishNoop' -benchtime "${BENCH_NOOP_N:-5000}x" ./internal/node/csidriver | grep -E '^Benchmark'
    echo '```'
  } | tee -a "$OUT"
fi

# Issuance with pod tokens reviewed by a real kube-apiserver (cache miss
# and hit) or verified locally, beside issuance with no review, and the
# identity check alone with its API-server calls, in one run.
PODKEY_KUBE_BIN_DIR=$(hack/kube-binaries.sh)
export PODKEY_KUBE_BIN_DIR
{
  echo
  echo "## Pod identity (TokenReview and local verification against a real kube-apiserver on this machine)"
  echo
  echo '```'
  go test -run '^$' -bench 'IssueIdentity|PodIdentityCheck' -benchtime "${BENCH_IDENTITY_TIME:-3s}" ./e2e 2>/dev/null | grep -E '^Benchmark'
  echo '```'
} | tee -a "$OUT"

# keyd's stores and replicas: issuance on bbolt, PostgreSQL with one and
# three replicas (ratios to bbolt); failover after SIGKILL of a replica;
# audit appends per second, PostgreSQL beside bbolt. Every store syncs
# each commit; the replicas share this machine's cores.
{
  echo
  echo "## Stores and replicas (keyd processes over TLS, tokens reviewed by a real kube-apiserver)"
  echo
  echo '```'
  go test -run '^$' -bench 'Replicas' -benchtime 1x -timeout 20m ./e2e 2>/dev/null | grep -E '^Benchmark'
  echo '```'
} | tee -a "$OUT"

# A cluster-wide restart, scaled to this machine: every pod asks at once
# with a token keyd has never seen, three keyd replicas on a durable
# PostgreSQL, tokens checked by TokenReview or locally; the API server's
# own counters give its identity requests per issuance.
{
  echo
  echo "## Cluster-wide restart (${PODKEY_RESTART_PODS:-2000} pods at once, 3 keyd replicas on PostgreSQL, a real kube-apiserver)"
  echo
  echo '```'
  go test -run '^$' -bench 'ClusterRestart' -benchtime 1x -timeout 30m ./e2e 2>/dev/null | grep -E '^Benchmark'
  echo '```'
} | tee -a "$OUT"

# A 10,000-node cluster restarting after maintenance: every simulated
# node (a light in-process client with its own podkey-csi pod, token and
# node certificate) comes back, then pods arrive open loop at the rate of
# 100 pods a node within 10 minutes; three keyd processes on a durable
# PostgreSQL, identities from the real kube-apiserver verified locally.
# Then where replica 1's CPU went, and the pod cache's memory at a
# million pods.
{
  echo
  echo "## ${PODKEY_SIM_NODES:-10000} nodes restarting (simulated nodes, 3 keyd replicas on PostgreSQL, a real kube-apiserver)"
  echo
  echo "Machine: $(nproc) cores, $(free -g | awk '/^Mem:/ {print $2}') GiB, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')."
  echo "Node certificates first (64 nodes at once), then ${PODKEY_SIM_PODS_PER_NODE:-2} pods a node"
  echo "published once each, arriving open loop at the full cluster's restart rate;"
  echo "latency from a pod's arrival, kubelet-style retries included."
  echo
  echo '```'
  PODKEY_SIM_PROFILE="$DIR/sim-top.txt" go test -run '^$' -bench 'TenThousandNodes' -benchtime 1x -timeout 90m ./e2e 2>/dev/null | grep -E '^Benchmark'
  echo '```'
  echo
  echo "Where replica 1's CPU went over the whole run (go tool pprof -top -cum):"
  echo
  echo '```'
  grep -vE '^(File|Build ID|Type|Time):' "$DIR/sim-top.txt"
  echo '```'
  echo
  echo "keyd's pod cache (local verification) filled with a million pods, 10,000 nodes x 100:"
  echo
  echo '```'
  go test -run '^$' -bench 'PodCacheMemory' -benchtime 1x ./internal/keyd/identity/localtoken | grep -E '^Benchmark'
  echo '```'
} | tee -a "$OUT"

# Bursts (10 simulated nodes x 200 pods, and the upstream secrets-store
# driver's load-test scale, 250 x 40; one keyd under the chart's memory
# limit), keyd's admission compared at 250 x 40, and footprint (podkey-csi
# resident memory with 0 and 200 live volumes).
{
  echo
  echo "## Burst load and footprint"
  echo
  echo "keyd runs in a memory cgroup of the chart's limit (256 MiB) except in the"
  echo "'unbounded' row, which has neither admission nor a limit. keyd-peak-MiB is"
  echo "keyd's VmHWM, which also counts its binary's and libraries' pages that"
  echo "other cgroups were charged for; the limit applies to cgroup-peak-MiB, and"
  echo "keyd-peak-anon-MiB is what no reclaim can shrink. Errors are those left"
  echo "once the drivers' retries (and the kubelet's, emulated) settle."
  echo
  echo '```'
  go test -run '^$' -bench 'BurstLoad|PluginFootprint' -benchtime 1x -timeout 30m ./e2e 2>/dev/null | grep -E '^Benchmark'
  echo '```'
  echo
  echo "keyd's admission at 250 x 40, three runs of each: a bounded queue (as"
  echo "shipped), no queue (refuse at once), and no bound at all."
  echo
  echo '```'
  go test -run '^$' -bench 'BurstAdmission' -benchtime 1x -count 3 -timeout 30m ./e2e 2>/dev/null | grep -E '^Benchmark'
  echo '```'
} | tee -a "$OUT"

# End to end, on a real node with podkey installed by helm: pod creation
# to Running with no volume, with podkey-csi, with the upstream
# secrets-store driver and podkey-provider, and with the upstream driver
# and its own fake provider (medians of seven, interleaved); then each
# setup's node processes' resident memory idle and with 200 volumes.
{
  echo
  echo "## Pod start and node memory on a real node: podkey-csi beside the upstream secrets-store driver"
  echo
  echo "upstream+fake is the upstream driver v1.5.4 with its own fake provider"
  echo "(one fixed file, no secret service): the floor of that path. Memory in"
  echo "MiB of each node process, idle and with 200 live volumes (20 pods x 10)."
  echo
  echo '```'
  go test -run '^$' -bench 'PodStartDrivers' -benchtime 1x -timeout 30m ./e2e 2>/dev/null | grep -E '^Benchmark'
  echo '```'
} | tee -a "$OUT"

# Certificate issuance beside SPIRE's server v1.13.3 (the closest peer;
# built from the Go module proxy by hack/spire-server.sh, cached: a cold
# build takes about 15 minutes here), both as their own processes and
# driven by the same load from the test process, interleaved, three
# rounds of 5 s: rates, latency, the server's CPU per certificate and
# resident memory, and keyd's ratios to SPIRE (per-core/spire: SPIRE's CPU
# per certificate over keyd's).
{
  echo
  echo "## Certificate issuance beside SPIRE (separate processes, same load generator)"
  echo
  echo "keyd: suite intl on SoftHSM2, suite gm in software, development identity"
  echo "over its local socket, every certificate's audit record and node binding"
  echo "fsynced before the reply. SPIRE: memory key manager, sqlite datastore,"
  echo "MintX509SVID over its local admin socket (it writes nothing per call)."
  echo "Medians of three interleaved rounds; both share this machine's cores with"
  echo "the callers."
  if [ -n "${PODKEY_BASELINE_BIN:-}" ]; then
    echo "The baseline-keyd rows are keyd built from ${PODKEY_BASELINE_REV:-another revision}"
    echo "(PODKEY_BASELINE_BIN), measured interleaved in the same run."
  fi
  echo
  echo '```'
  go test -run '^$' -bench 'IssuanceBesideSPIRE' -benchtime 1x -timeout 40m ./e2e 2>/dev/null | grep -E '^Benchmark'
  echo '```'
} | tee -a "$OUT"

# Encrypted images: unwrapping a layer's key through ocicrypt's
# DecryptLayer with R recipients and the node's key first, in the middle
# or last: podkey's scheme (node keyprovider -> keyd -> one ECDH on
# SoftHSM2, audited) beside ocicrypt's JWE (RSA-2048) and ocicrypt's
# PKCS#11 scheme with the node's RSA key on the same token. Medians of
# interleaved rounds, in milliseconds, and ratios.
{
  echo
  echo "## Encrypted images: unwrapping a layer key (ocicrypt DecryptLayer, one run)"
  echo
  echo "podkey-ms: one layer, the node's keyprovider asking keyd (no cache): a new"
  echo "gRPC connection from ocicrypt to the keyprovider per call, keyd's ECDH on"
  echo "SoftHSM2 and its audit record fsynced before the reply. podkey-image5: a"
  echo "five-layer image through the caching keyprovider (one keyd call), per layer."
  echo
  echo '```'
  go test -run '^$' -bench 'ImageUnwrap' -benchtime 1x -timeout 20m ./e2e 2>/dev/null | grep -E '^Benchmark'
  echo '```'
  echo
  echo "Whole-image decryption through containerd's decoder protocol (a process per"
  echo "layer, payload on fd 3), five layers of 1 to 16 MiB, the node's key last:"
  echo "podkey beside JWE, with imgcrypt's ctd-decoder and podkey-image-decoder."
  echo
  echo '```'
  go test -run '^$' -bench 'ImageDecoder' -benchtime 1x -timeout 20m ./e2e 2>/dev/null | grep -E '^Benchmark'
  echo '```'
  if [ "$(id -u)" = 0 ]; then
    echo
    echo "Pull to running on the real node (kubelet, containerd's CRI, a registry on"
    echo "127.0.0.1): the same five-layer 30 MiB service image plain, JWE-encrypted"
    echo "and podkey-encrypted for 20 image keys, a fresh image per pull, medians."
    echo
    echo '```'
    go test -run '^$' -bench 'ImagePull' -benchtime 1x -timeout 30m ./e2e 2>/dev/null | grep -E '^Benchmark'
    echo '```'
  fi
} | tee -a "$OUT"

# Under attack, beside the same calls unloaded (the attack suite's own
# measurements): other callers' Verify during floods of idle streams, and
# the other replicas' Issue while one replica is cut off its database.
{
  echo
  echo "## Under attack (e2e/attack: flood and partition)"
  echo
  echo "Three callers' Verify p99 unloaded, then with 600 idle streams from callers"
  echo "without a certificate and one authenticated caller's 400 idle streams and"
  echo "continuous calls; and two replicas' Issue while the third, cut off"
  echo "PostgreSQL while it held the audit chain's lock, stays cut for 12 s."
  echo
  echo '```'
  go test -count=1 -v -run 'TestFloodsDoNotStarveOtherCallers|TestSilentPartitionOfOneReplica' ./e2e/attack/flood ./e2e/attack/partition 2>&1 |
    grep -E "p99|the cut replica" | sed 's/^ *[a-z_]*_test.go:[0-9]*: //'
  echo '```'
} | tee -a "$OUT"
