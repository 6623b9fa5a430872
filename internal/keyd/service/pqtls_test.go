package service_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"testing"

	"github.com/podkey/podkey/internal/keyd/keydtest"
	"github.com/podkey/podkey/internal/keyd/service"
	keydv1 "github.com/podkey/podkey/pkg/api/keydv1"
)

// keyd's TLS (the gRPC listener nodes and backends reach, and the JWK
// Set's HTTPS) negotiates a hybrid post-quantum key exchange with a
// client that offers one, as Go's TLS and podkey's clients do; a client
// without one is served classically, unless keyd requires post-quantum,
// when it is refused in the handshake.
func TestTLSKeyExchangeIsPostQuantum(t *testing.T) {
	for _, require := range []bool{false, true} {
		t.Run(fmt.Sprintf("require=%v", require), func(t *testing.T) {
			jwks := keydtest.FreeAddr(t)
			e := keydtest.Start(t, func(o *service.Options) { o.JWKSListen, o.TLSRequirePostQuantum = jwks, require })
			ca, err := e.Keyd.CABundle(context.Background(), &keydv1.CABundleRequest{Suite: "intl"})
			if err != nil {
				t.Fatal(err)
			}
			roots := x509.NewCertPool()
			roots.AppendCertsFromPEM(ca.Pem)
			for _, addr := range []string{e.Opts.Listen, jwks} {
				for _, tc := range []struct {
					offer []tls.CurveID // nil: Go's default, as podkey's clients
					want  tls.CurveID   // 0: refused
				}{
					{nil, tls.X25519MLKEM768},
					{[]tls.CurveID{tls.SecP256r1MLKEM768, tls.CurveP256}, tls.SecP256r1MLKEM768},
					{[]tls.CurveID{tls.X25519, tls.CurveP256}, map[bool]tls.CurveID{false: tls.X25519, true: 0}[require]},
				} {
					c, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: roots, ServerName: "localhost", CurvePreferences: tc.offer})
					if tc.want == 0 {
						if err == nil {
							c.Close()
							t.Fatalf("%s: a client offering only %v was served", addr, tc.offer)
						}
						continue
					}
					if err != nil {
						t.Fatalf("%s offering %v: %v", addr, tc.offer, err)
					}
					got := c.ConnectionState().CurveID
					c.Close()
					if got != tc.want {
						t.Fatalf("%s offering %v: negotiated %v, want %v", addr, tc.offer, got, tc.want)
					}
				}
			}
		})
	}
}
