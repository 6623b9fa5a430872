package keydclient

import (
	"crypto/tls"
	"fmt"
	"net"
	"strings"
	"sync/atomic"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"
)

// serviceConfig spreads calls over every keyd replica the target resolves
// to and retries a call that failed Unavailable on another one, after a
// short backoff, so callers do not notice a replica dying. A retried call
// may have been applied by the replica that died before it answered, so
// only calls that are safe to apply again are retried (a gRPC transparent
// retry, for a call that never reached a server, applies to every method):
//   - Issue mints fresh credentials each time; what a dead replica may have
//     minted was never delivered, is audited, and falls with the pod's
//     revocation like the rest;
//   - Revoke, policy rules and the policy document set a state, whatever
//     it was before; the remaining Keyd and Admin methods only read.
//
// PutSecret (a new version each time), DeleteSecret, RotateKey and
// ForceRenewal are not retried: applying them twice is not the same as once.
const serviceConfig = `{
  "loadBalancingConfig": [{"round_robin": {}}],
  "methodConfig": [{
    "name": [
      {"service": "podkey.keyd.v1.Keyd"},
      {"service": "podkey.keyd.v1.Admin", "method": "ListSecrets"},
      {"service": "podkey.keyd.v1.Admin", "method": "GetPolicy"},
      {"service": "podkey.keyd.v1.Admin", "method": "SetPolicy"},
      {"service": "podkey.keyd.v1.Admin", "method": "AddPolicyRule"},
      {"service": "podkey.keyd.v1.Admin", "method": "RemovePolicyRule"},
      {"service": "podkey.keyd.v1.Admin", "method": "VerifyAudit"},
      {"service": "podkey.keyd.v1.Admin", "method": "Status"}
    ],
    "retryPolicy": {
      "maxAttempts": 5,
      "initialBackoff": "0.05s",
      "maxBackoff": "1s",
      "backoffMultiplier": 3,
      "retryableStatusCodes": ["UNAVAILABLE"]
    }
  }]
}`

// resolverSeq names each list resolver's scheme uniquely.
var resolverSeq atomic.Uint64

// NewClient connects lazily to keyd over TLS at address: one host:port,
// several separated by commas (replicas), or a gRPC target such as
// dns:///keyd.podkey.svc:9443 that resolves to several. Calls go round
// robin over the replicas that are up and are retried on another as the
// service config above says. tlsConf's ServerName, when empty, is the host
// of the first address.
func NewClient(address string, tlsConf *tls.Config) (*grpc.ClientConn, error) {
	addrs := splitAddresses(address)
	if len(addrs) == 0 {
		return nil, fmt.Errorf("keyd address %q names no host:port", address)
	}
	if tlsConf.ServerName == "" {
		tlsConf = tlsConf.Clone()
		tlsConf.ServerName = hostOf(addrs[0])
	}
	opts := []grpc.DialOption{
		grpc.WithTransportCredentials(credentials.NewTLS(tlsConf)),
		grpc.WithDefaultServiceConfig(serviceConfig),
	}
	if len(addrs) == 1 {
		return grpc.NewClient(addrs[0], opts...)
	}
	r := manual.NewBuilderWithScheme(fmt.Sprintf("podkey-keyd-%d", resolverSeq.Add(1)))
	var st resolver.State
	for _, a := range addrs {
		st.Endpoints = append(st.Endpoints, resolver.Endpoint{Addresses: []resolver.Address{{Addr: a}}})
	}
	r.InitialState(st)
	return grpc.NewClient(r.Scheme()+":///keyd", append(opts, grpc.WithResolvers(r))...)
}

// splitAddresses reads a comma-separated address list.
func splitAddresses(address string) []string {
	var out []string
	for _, a := range strings.Split(address, ",") {
		if a = strings.TrimSpace(a); a != "" {
			out = append(out, a)
		}
	}
	return out
}

// hostOf is the host of an address or target: dns:///name:port and
// name:port give name.
func hostOf(address string) string {
	if i := strings.LastIndex(address, "/"); i >= 0 {
		address = address[i+1:]
	}
	if host, _, err := net.SplitHostPort(address); err == nil {
		return host
	}
	return address
}

// firstAddress is the address whose host names keyd's certificate by
// default.
func firstAddress(address string) string {
	if a := splitAddresses(address); len(a) > 0 {
		return a[0]
	}
	return address
}
