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
# The version the binaries report (helm checks a chart's kubeVersion
# against the API server's), as Kubernetes' own build stamps it.
minor=$(echo "$version" | cut -d. -f2)
pkg=k8s.io/component-base/version
ldflags="-X $pkg.gitVersion=$version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
for bin in kube-apiserver kubelet kube-controller-manager kube-scheduler; do
  if ! "$cache/$bin" --version 2>/dev/null | grep -q "Kubernetes $version\$"; then
    echo "building $bin $version (cached in $cache)" >&2
    go build -trimpath -ldflags "$ldflags" -o "$cache/$bin.tmp" "k8s.io/kubernetes/cmd/$bin"
    mv "$cache/$bin.tmp" "$cache/$bin"
  fi
done
echo "$cache"
