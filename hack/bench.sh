#!/usr/bin/env bash
# Runs `podkey bench` on a SoftHSM2 token of its own and writes
# BENCHMARKS.md (the table is generated, never edited by hand).
# BENCH_DURATION (default 2s) sets the length of each measurement.
set -euo pipefail
cd "$(dirname "$0")/.."
hack/install-deps.sh
make -s build
DIR=${PODKEY_BENCH_DIR:-/tmp/podkey-bench}
export PODKEY_HSM_TOKEN=podkey-bench
. hack/softhsm-token.sh
bin/podkey hsm init >/dev/null
bin/podkey bench --duration "${BENCH_DURATION:-2s}" --concurrency 1,8,64 -o BENCHMARKS.md
