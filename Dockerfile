# podkey images. keyd needs cgo (PKCS#11 modules are C libraries) and ships
# the SoftHSM2 module as its embedded default; point --hsm-module at a
# vendor module mounted into the container for a real HSM. The CSI plugin
# is static and needs only mount(8).
#
#   docker build --target keyd -t ghcr.io/podkey/podkey-keyd:dev .
#   docker build --target csi  -t ghcr.io/podkey/podkey-csi:dev .
#
# `make images` builds the same two images without a container engine
# (hack/images); e2e/cluster/images_test.go keeps the two in step.

FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=1 go build -trimpath \
      -ldflags "-s -w -X github.com/podkey/podkey/internal/version.Version=${VERSION}" \
      -o /out/ ./cmd/podkey-keyd ./cmd/podkey \
 && CGO_ENABLED=0 go build -trimpath \
      -ldflags "-s -w -X github.com/podkey/podkey/internal/version.Version=${VERSION}" \
      -o /out/ ./cmd/podkey-csi

FROM debian:bookworm-slim AS keyd
# Debian's /etc/softhsm is readable by the softhsm group only: the image
# carries its own SoftHSM2 configuration, with the tokens on keyd's data
# volume (podkey hsm init --init-token creates the directory).
RUN apt-get update && apt-get install -y --no-install-recommends softhsm2 ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 65532 podkey \
    && useradd --system --uid 65532 --gid 65532 --home-dir /var/lib/podkey podkey \
    && mkdir -p /etc/podkey /var/lib/podkey \
    && printf 'directories.tokendir = /var/lib/podkey/softhsm-tokens/\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n' > /etc/podkey/softhsm2.conf \
    && chown podkey:podkey /var/lib/podkey
COPY --from=build /out/podkey-keyd /out/podkey /usr/local/bin/
ENV SOFTHSM2_CONF=/etc/podkey/softhsm2.conf
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/podkey-keyd"]

FROM debian:bookworm-slim AS csi
COPY --from=build /out/podkey-csi /usr/local/bin/
ENTRYPOINT ["/usr/local/bin/podkey-csi"]
