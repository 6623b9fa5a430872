#!/usr/bin/env bash
# Builds kube-apiserver, kubelet, kube-controller-manager and kube-scheduler
# from the Go module proxy (module hack/kube) into a cache directory keyed
# by version, and prints that directory. A second run costs nothing. A cold
# build takes about fifteen minutes on two cores.
set -euo pipefail
cd "$(dirname "$0")/kube"
version=$(awk '$1=="require" && $2=="k8s.io/kubernetes" {print $3}' go.mod)
cache=${PODKEY_KUBE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/podkey/kube}/$version
mkdir -p "$cache"
for bin in kube-apiserver kubelet kube-controller-manager kube-scheduler; do
  if [ ! -x "$cache/$bin" ]; then
    echo "building $bin $version (cached in $cache)" >&2
    go build -trimpath -o "$cache/$bin.tmp" "k8s.io/kubernetes/cmd/$bin"
    mv "$cache/$bin.tmp" "$cache/$bin"
  fi
done
echo "$cache"
