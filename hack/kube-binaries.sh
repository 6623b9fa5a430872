#!/usr/bin/env bash
# Builds kube-apiserver, kubelet, kube-controller-manager, kube-scheduler
# and kubectl from the Go module proxy (module hack/kube) into a cache directory keyed
# by version, and prints that directory. A second run costs nothing. A cold
# build takes about fifteen minutes on two cores.
set -euo pipefail
cd "$(dirname "$0")/kube"
version=$(sed -nE 's/^(require)?[[:space:]]*k8s\.io\/kubernetes (v[^ ]+).*/\2/p' go.mod)
[ -n "$version" ] || { echo "kube-binaries: no k8s.io/kubernetes version in hack/kube/go.mod" >&2; exit 1; }
cache=${PODKEY_KUBE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/podkey/kube}/$version
mkdir -p "$cache"
# The version the binaries report (helm checks a chart's kubeVersion
# against the API server's), as Kubernetes' own build stamps it.
minor=$(echo "$version" | cut -d. -f2)
pkg=k8s.io/component-base/version
ldflags="-X $pkg.gitVersion=$version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
# The version output is read whole before grep looks at it: grep -q
# stops at its match, and under pipefail the writer's SIGPIPE would read
# as "not built" and rebuild every time.
built() {
  local out
  if [ "$1" = kubectl ]; then
    out=$("$cache/kubectl" version --client 2>/dev/null) || return 1
    grep -q "^Client Version: $version\$" <<<"$out"
  else
    out=$("$cache/$1" --version 2>/dev/null) || return 1
    grep -q "Kubernetes $version\$" <<<"$out"
  fi
}
for bin in kube-apiserver kubelet kube-controller-manager kube-scheduler kubectl; do
  if ! built "$bin"; then
    echo "building $bin $version (cached in $cache)" >&2
    go build -trimpath -ldflags "$ldflags" -o "$cache/$bin.tmp" "k8s.io/kubernetes/cmd/$bin"
    mv "$cache/$bin.tmp" "$cache/$bin"
  fi
done
echo "$cache"
