#!/usr/bin/env bash
# Builds the upstream secrets-store CSI driver and its fake provider from
# the Go module proxy (module hack/tools/secrets-store, which replaces the
# driver's one unserved dependency, monis.app/mlog, with a shim) into a
# cache directory keyed by version, and prints that directory. Used by the
# tests and benchmarks that run podkey-provider under the real upstream
# driver. A second run costs nothing; a cold build takes about two minutes.
set -euo pipefail
cd "$(dirname "$0")/tools/secrets-store"
version=$(awk '$1=="require" && $2=="sigs.k8s.io/secrets-store-csi-driver" {print $3}' go.mod)
cache=${PODKEY_SECRETS_STORE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/podkey/secrets-store}/$version
mkdir -p "$cache"
stamp="$cache/.built-from"
want=$(cat go.mod go.sum mlog/*.go fakeprovider/*.go ../../secrets-store-driver.sh | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] || [ ! -x "$cache/secrets-store-csi-driver" ] || [ ! -x "$cache/fakeprovider" ]; then
  echo "building the secrets-store CSI driver $version and its fake provider (cached in $cache)" >&2
  # Static, so that the driver also runs in a test node image of its own.
  CGO_ENABLED=0 go build -trimpath -o "$cache/secrets-store-csi-driver.tmp" sigs.k8s.io/secrets-store-csi-driver/cmd/secrets-store-csi-driver
  CGO_ENABLED=0 go build -trimpath -o "$cache/fakeprovider.tmp" ./fakeprovider
  mv "$cache/secrets-store-csi-driver.tmp" "$cache/secrets-store-csi-driver"
  mv "$cache/fakeprovider.tmp" "$cache/fakeprovider"
  echo "$want" > "$stamp"
fi
echo "$cache"
