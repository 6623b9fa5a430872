#!/usr/bin/env bash
# Installs what podkey's build, demo and tests need on a fresh Debian
# machine: SoftHSM2 (the embedded default HSM), the PKCS#11 tools and the
# protobuf compiler (for `make proto`), etcd (for the test clusters), and
# a JDK (Java keystores are tested on a real JVM), python3 with
# cryptography (the reference request signer and token
# verifier in docs/examples/python, checked against keyd by the tests; the
# evidence verifier hack/evidence/verify.py needs only python3), and
# PostgreSQL (the store's second implementation, tested on a real server)
# and MariaDB (per-pod database logins are tested on both engines).
# Go tools (helm among them) are pinned in go.mod; the Kubernetes
# components are built by hack/kube-binaries.sh.
set -euo pipefail

need=()
[ -e /usr/lib/softhsm/libsofthsm2.so ] || need+=(softhsm2)
command -v softhsm2-util >/dev/null || need+=(softhsm2)
command -v protoc >/dev/null || need+=(protobuf-compiler)
[ -e /usr/include/google/protobuf/timestamp.proto ] || need+=(libprotobuf-dev)
command -v pkcs11-tool >/dev/null || need+=(opensc)
command -v etcd >/dev/null || need+=(etcd-server)
command -v containerd >/dev/null || need+=(containerd)
command -v runc >/dev/null || need+=(runc)
[ -e /usr/lib/cni/bridge ] || need+=(containernetworking-plugins)
command -v python3 >/dev/null || need+=(python3)
python3 -c 'import cryptography' 2>/dev/null || need+=(python3-cryptography)
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || need+=(postgresql) # the store's PostgreSQL tests
command -v mariadbd >/dev/null || need+=(mariadb-server) # per-pod database logins are tested on a real MariaDB
# keystores: keytool reads them and a Java program (run from source, so
# the JDK's compiler module) uses them for a TLS handshake
case "$(command -v keytool >/dev/null && java --list-modules 2>/dev/null)" in
  *jdk.compiler@*) ;;
  *) need+=(openjdk-17-jdk-headless) ;;
esac
{ [ -e /usr/bin/busybox ] && ! ldd /usr/bin/busybox >/dev/null 2>&1; } || need+=(busybox-static) # a static one, for images

if [ ${#need[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO=sudo
  echo "installing: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
command -v go >/dev/null || { echo "Go is required (see go.mod for the version)"; exit 1; }
go mod download
