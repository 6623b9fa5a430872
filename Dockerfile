# podkey images. keyd needs cgo (PKCS#11 modules are C libraries) and ships
# the SoftHSM2 module as its embedded default; point --hsm-module at a
# vendor module mounted into the container for a real HSM.
#
#   docker build --target keyd -t podkey-keyd .
#   docker build --target cli  -t podkey .

FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=1 go build -trimpath \
      -ldflags "-s -w -X github.com/podkey/podkey/pkg/version.Version=${VERSION}" \
      -o /out/ ./cmd/podkey-keyd ./cmd/podkey

FROM debian:bookworm-slim AS keyd
RUN apt-get update && apt-get install -y --no-install-recommends softhsm2 ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 65532 --home-dir /var/lib/podkey podkey \
    && mkdir -p /var/lib/podkey /run/podkey && chown podkey /var/lib/podkey /run/podkey
COPY --from=build /out/podkey-keyd /out/podkey /usr/local/bin/
USER 65532
ENTRYPOINT ["/usr/local/bin/podkey-keyd"]

FROM debian:bookworm-slim AS cli
RUN apt-get update && apt-get install -y --no-install-recommends softhsm2 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/podkey /usr/local/bin/
ENTRYPOINT ["/usr/local/bin/podkey"]
