# podkey — common tasks. `make demo` and `make test` are the two commands
# the README promises; both install what they need.

GO ?= go
BIN := bin
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X github.com/podkey/podkey/internal/version.Version=$(VERSION)

.PHONY: all build test e2e cluster demo proto fuzz bench deps vet clean manifests images

all: build

deps:
	hack/install-deps.sh

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN)/ ./cmd/...

proto:
	protoc -I pkg/api/keydv1 -I /usr/include \
		--plugin=protoc-gen-go="$$($(GO) tool -n protoc-gen-go)" \
		--plugin=protoc-gen-go-grpc="$$($(GO) tool -n protoc-gen-go-grpc)" \
		--go_out=paths=source_relative:pkg/api/keydv1 \
		--go-grpc_out=paths=source_relative:pkg/api/keydv1 \
		pkg/api/keydv1/keyd.proto

# podkey-keyd and podkey-csi images as docker archives, built without a
# container engine (same content as the Dockerfile's keyd and csi targets).
images:
	$(GO) run ./hack/images -o $(BIN)/images -tag $(VERSION)

# manifests/ is the chart rendered with its default values (checked by
# go test ./charts: edit the chart, then run this).
manifests:
	hack/manifests.sh

vet:
	gofmt -l . | (! grep .) || (echo "gofmt needed"; exit 1)
	$(GO) vet ./...

test:
	hack/test.sh

# The end-to-end suite alone: real binaries, a real etcd, kube-apiserver,
# containerd and kubelet (root; builds Kubernetes once, cached).
e2e:
	hack/install-deps.sh
	PODKEY_KUBE_BIN_DIR=$$(hack/kube-binaries.sh) $(GO) test -count=1 -v ./e2e/

# A local single-node cluster for people; Ctrl-C or SIGTERM tears it down.
# Built, then exec'd, so a signal reaches the cluster itself.
cluster:
	hack/install-deps.sh
	$(GO) build -o .cache/bin/cluster ./hack/cluster
	PODKEY_KUBE_BIN_DIR=$$(hack/kube-binaries.sh) exec .cache/bin/cluster

fuzz:
	hack/fuzz.sh

demo:
	hack/demo.sh

bench: build
	hack/bench.sh

clean:
	rm -rf $(BIN)
