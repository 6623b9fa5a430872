#!/usr/bin/env bash
# Renders charts/podkey with its default values into manifests/: the whole
# install (podkey.yaml) and the SecretProviderClass CRD alone. The chart is
# the source; go test ./charts fails when these files are stale.
set -euo pipefail
cd "$(dirname "$0")/.."
render() {
  go tool helm template podkey charts/podkey --namespace podkey "$@"
}
{
  echo "# podkey, rendered from charts/podkey with default values by 'make manifests'."
  echo "# kubectl create namespace podkey && kubectl apply -f manifests/podkey.yaml"
  render
} > manifests/podkey.yaml
{
  echo "# Rendered from charts/podkey by 'make manifests'."
  render --show-only templates/secretproviderclass-crd.yaml
} > manifests/crds/secretproviderclasses.yaml
echo "wrote manifests/podkey.yaml manifests/crds/secretproviderclasses.yaml"
