package service

import (
	"context"
	"encoding/pem"
	"fmt"
	"net/url"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/podkey/podkey/internal/keyd/audit"
	"github.com/podkey/podkey/internal/keyd/ca"
	"github.com/podkey/podkey/internal/keyd/keyring"
	keydv1 "github.com/podkey/podkey/pkg/api/keydv1"
	"github.com/podkey/podkey/pkg/suite"
)

// NodeCertificate issues a node agent its client certificate after
// reviewing its token: the token must belong to the configured node agent
// service account and be bound to a pod on a node, which the certificate
// then names.
func (k *keydService) NodeCertificate(ctx context.Context, req *keydv1.NodeCertificateRequest) (*keydv1.NodeCertificateResponse, error) {
	s := k.s
	if s.opts.Identity == nil {
		return nil, status.Error(codes.FailedPrecondition, "keyd has no Kubernetes API access for TokenReview; node identity is unavailable")
	}
	if len(req.NodeToken) > 16<<10 {
		return nil, status.Error(codes.InvalidArgument, "node token is larger than 16 KiB")
	}
	pub, err := ca.ParseCSR(suite.Intl, req.Csr)
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	node, err := s.opts.Identity.Node(ctx, req.NodeToken)
	if err != nil {
		st := identityStatus(err)
		s.auditDeny(ctx, audit.ActionNodeCertificate, nil, status.Convert(st).Message(), nil)
		return nil, st
	}
	authority, err := s.kr.CA(suite.Intl, s.kr.Current(keyring.CA, suite.Intl))
	if err != nil {
		return nil, toStatus(err)
	}
	der, tmpl, err := authority.Issue(pub, ca.Leaf{CommonName: "podkey-node:" + node, URIs: []*url.URL{s.nodeURI(node)}, TTL: s.opts.NodeCertTTL})
	if err != nil {
		return nil, toStatus(err)
	}
	if err := s.audit.Append(ctx, audit.Record{Action: audit.ActionNodeCertificate, Result: audit.ResultOK, Node: node,
		Reason: fmt.Sprintf("valid until %s", tmpl.NotAfter.UTC().Format("2006-01-02T15:04:05Z"))}); err != nil {
		return nil, auditUnavailable(err)
	}
	return &keydv1.NodeCertificateResponse{
		CertPem:     pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		CaBundlePem: s.kr.CABundle(suite.Intl),
		Expiry:      timestamppb.New(tmpl.NotAfter),
	}, nil
}
