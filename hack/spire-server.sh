#!/usr/bin/env bash
# Builds SPIRE's server, pinned in hack/tools/spire/go.mod, from the Go
# module proxy into a cache directory keyed by version, and prints the
# binary's path. Used by the benchmark that compares keyd's certificate
# issuance with SPIRE's (BenchmarkIssuanceBesideSPIRE). A second run costs
# nothing; a cold build takes a few minutes. SPIRE's sqlite datastore
# needs cgo.
set -euo pipefail
cd "$(dirname "$0")/tools/spire"
version=$(awk '$1=="github.com/spiffe/spire" {print $2}' go.mod)
cache=${PODKEY_SPIRE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/podkey/spire}/$version
mkdir -p "$cache"
stamp="$cache/.built-from"
want=$(cat go.mod go.sum ../../spire-server.sh | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] || [ ! -x "$cache/spire-server" ]; then
  echo "building spire-server $version (cached in $cache)" >&2
  CGO_ENABLED=1 go build -trimpath -o "$cache/spire-server.tmp" github.com/spiffe/spire/cmd/spire-server
  mv "$cache/spire-server.tmp" "$cache/spire-server"
  echo "$want" > "$stamp"
fi
echo "$cache/spire-server"
