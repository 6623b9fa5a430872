#!/usr/bin/env bash
# Fuzzes every parser for $FUZZTIME each (default 30s): a duration
# ("30s") or a count of executions ("50000x"), as go test -fuzztime takes.
#
# With a duration, Go 1.26's fuzz coordinator can report a bare "context
# deadline exceeded" when its timer fires (golang/go#75804, fixed in Go
# 1.27): its main loop sees the deadline before the workers' context is
# cancelled, and reports the deadline itself as the error. No input failed
# and nothing was written. Such a run is retried once; any run that writes
# a failing input, panics or fails otherwise fails at once. A count never
# starts that timer, so the test suite (hack/test.sh) fuzzes by count.
set -euo pipefail
cd "$(dirname "$0")/.."

fuzz() {
  go test -run '^$' -fuzz "^$2\$" -fuzztime "${FUZZTIME:-30s}" "$1" 2>&1
}

# deadline_flake: the output is the coordinator's shutdown race and nothing else.
deadline_flake() {
  grep -q 'context deadline exceeded' <<<"$1" &&
    ! grep -qE 'Failing input written|panic:|_test\.go:[0-9]+:' <<<"$1"
}

for pkg in $(go list ./...); do
  dir=$(go list -f '{{.Dir}}' "$pkg")
  for target in $(grep -ho '^func Fuzz[A-Za-z0-9_]*' "$dir"/*_test.go 2>/dev/null | sed 's/^func //'); do
    echo "-- $pkg $target"
    if ! out=$(fuzz "$pkg" "$target"); then
      if deadline_flake "$out"; then
        echo "$out" | tail -n 3
        echo "   (the Go fuzz coordinator's deadline race, nothing found: running $target again)"
        out=$(fuzz "$pkg" "$target") || { echo "$out"; exit 1; }
      else
        echo "$out"
        exit 1
      fi
    fi
    echo "$out" | tail -n 2
  done
done
