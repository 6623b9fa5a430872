#!/usr/bin/env bash
# Fuzzes every parser for $FUZZTIME each (default 30s).
set -euo pipefail
cd "$(dirname "$0")/.."
for pkg in $(go list ./...); do
  dir=$(go list -f '{{.Dir}}' "$pkg")
  for target in $(grep -ho '^func Fuzz[A-Za-z0-9_]*' "$dir"/*_test.go 2>/dev/null | sed 's/^func //'); do
    echo "-- $pkg $target"
    out=$(go test -run '^$' -fuzz "^${target}\$" -fuzztime "${FUZZTIME:-30s}" "$pkg" 2>&1) || { echo "$out"; exit 1; }
    echo "$out" | tail -n 2
  done
done
