#!/usr/bin/env bash
# Builds containerd's image decoder ctd-decoder, pinned in
# hack/tools/imgcrypt/go.mod (imgcrypt v1.1.8), from the Go module proxy
# into a cache directory keyed by version, and prints the binary's path.
# containerd's stream processors run it for every encrypted layer; the
# real-node test and the image benchmarks use it. A second run costs
# nothing; a cold build takes about a minute and a half.
set -euo pipefail
cd "$(dirname "$0")/tools/imgcrypt"
version=$(awk '$1=="github.com/containerd/imgcrypt" {print $2}' go.mod)
cache=${PODKEY_CTD_DECODER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/podkey/ctd-decoder}/$version
mkdir -p "$cache"
stamp="$cache/.built-from"
want=$(cat go.mod go.sum ../../ctd-decoder.sh | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] || [ ! -x "$cache/ctd-decoder" ]; then
  echo "building ctd-decoder $version (cached in $cache)" >&2
  CGO_ENABLED=0 go build -trimpath -o "$cache/ctd-decoder.tmp" github.com/containerd/imgcrypt/cmd/ctd-decoder
  mv "$cache/ctd-decoder.tmp" "$cache/ctd-decoder"
  echo "$want" > "$stamp"
fi
echo "$cache/ctd-decoder"
