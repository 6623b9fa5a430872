package cluster

import (
	"os"
	"strings"
	"testing"
)

// The images built without an engine and the Dockerfile's must agree on
// what a pod relies on: entrypoints, user, SoftHSM2's configuration.
func TestDockerfileMatchesEngineFreeImages(t *testing.T) {
	b, err := os.ReadFile("../../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	df := string(b)
	conf := strings.ReplaceAll(softhsmConf, "\n", `\n`)
	for _, want := range []string{
		"FROM debian:bookworm-slim AS keyd", "FROM debian:bookworm-slim AS csi",
		`ENTRYPOINT ["/usr/local/bin/podkey-keyd"]`, `ENTRYPOINT ["/usr/local/bin/podkey-csi"]`,
		"USER 65532:65532", "ENV SOFTHSM2_CONF=/etc/podkey/softhsm2.conf", "printf '" + conf + "' > /etc/podkey/softhsm2.conf",
		"CGO_ENABLED=1 go build", "./cmd/podkey-keyd ./cmd/podkey", "CGO_ENABLED=0 go build", "./cmd/podkey-csi",
	} {
		if !strings.Contains(df, want) {
			t.Errorf("the Dockerfile lacks %q", want)
		}
	}
}
