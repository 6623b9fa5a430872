package service

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/podkey/podkey/internal/keyd/store"
	"github.com/podkey/podkey/pkg/apikey/accesskey"
	"github.com/podkey/podkey/pkg/apikey/reqsign"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/podkey/podkey/internal/keyd/audit"
	"github.com/podkey/podkey/internal/keyd/credential"
	keydv1 "github.com/podkey/podkey/pkg/api/keydv1"
	"github.com/podkey/podkey/pkg/object"
	"github.com/podkey/podkey/pkg/suite"
)

type keydService struct {
	keydv1.UnimplementedKeydServer
	s *Server
}

// objectLabel names an issued object in the audit; a TLCP pair also
// names its escrow (the encryption certificate's serial): the issuance
// record is the escrow's.
func objectLabel(c credential.Issued) string {
	l := fmt.Sprintf("%s/%s/%s/g%d", c.Name, c.Kind, c.Suite, c.Generation)
	if c.EscrowSerial != "" {
		l += "/escrow:" + c.EscrowSerial
	}
	if c.Login != nil {
		l += "/login:" + c.Login.User
	}
	return l
}

func (k *keydService) Issue(ctx context.Context, req *keydv1.IssueRequest) (*keydv1.IssueResponse, error) {
	s := k.s
	n := len(req.GetObjects())
	if n == 0 || n > object.MaxObjects {
		return nil, status.Errorf(codes.InvalidArgument, "request %d objects; between 1 and %d are allowed", n, object.MaxObjects)
	}
	specs := make([]object.Spec, n)
	seen := map[string]bool{}
	for i, o := range req.Objects {
		sp, err := o.Spec()
		if err != nil {
			return nil, status.Error(codes.InvalidArgument, err.Error())
		}
		if seen[sp.Name] {
			return nil, status.Errorf(codes.InvalidArgument, "object %q requested twice", sp.Name)
		}
		seen[sp.Name], specs[i] = true, sp
	}
	id, jti, err := s.authenticateToken(ctx, req.Pod, req.PodToken)
	if err != nil {
		s.auditDeny(ctx, audit.ActionIssue, req.Pod, status.Convert(err).Message(), nil)
		return nil, err
	}
	pol, err := s.currentPolicy()
	if err != nil {
		return nil, err
	}
	var denied []string
	missing := map[int]string{} // optional objects left out, and why
	for i, sp := range specs {
		if !pol.Allowed(id.Namespace, id.ServiceAccount, sp.Name, sp.Kind) {
			if sp.Optional {
				missing[i] = fmt.Sprintf("policy does not allow service account %s/%s to obtain %s (%s)", id.Namespace, id.ServiceAccount, sp.Name, sp.Kind)
				continue
			}
			denied = append(denied, fmt.Sprintf("%s (%s)", sp.Name, sp.Kind))
		}
	}
	if len(denied) > 0 {
		msg := fmt.Sprintf("policy does not allow service account %s/%s to obtain %s",
			id.Namespace, id.ServiceAccount, strings.Join(denied, ", "))
		s.auditDeny(ctx, audit.ActionIssue, req.Pod, msg, &id)
		return nil, status.Error(codes.PermissionDenied, msg)
	}
	issued := make([]credential.Issued, 0, n)
	zeroAll := func() {
		for i := range issued {
			issued[i].Zero()
		}
	}
	at := make([]int, 0, n) // the object each issued credential answers
	for i, sp := range specs {
		if _, left := missing[i]; left {
			continue
		}
		c, err := s.issuer.Issue(ctx, id, sp, req.Objects[i].Csr)
		if err != nil {
			// An optional database object whose database is down is left
			// out too: the pod starts, and gets it on a later renewal.
			if st := toStatus(err); sp.Optional && (refusal(st) || sp.Kind == object.Database && status.Code(st) == codes.Unavailable) {
				missing[i] = status.Convert(st).Message()
				continue
			}
			zeroAll()
			s.auditResult(ctx, audit.ActionIssue, audit.ResultError, err.Error(), id, nil)
			return nil, toStatus(err)
		}
		issued, at = append(issued, c), append(at, i)
	}
	labels := make([]string, len(issued))
	for i, c := range issued {
		labels[i] = objectLabel(c)
	}
	var note []string
	for i, sp := range specs {
		if why, left := missing[i]; left {
			note = append(note, fmt.Sprintf("optional %s not issued: %s", sp.Name, why))
		}
	}
	bind, err := s.podBinding(ctx, id)
	if err != nil {
		zeroAll()
		return nil, storeUnavailable(err)
	}
	// Nothing leaves keyd before its issuance, and the pod's node binding,
	// are durably recorded (one transaction).
	rec := audit.Record{Action: audit.ActionIssue, Result: audit.ResultOK, Reason: strings.Join(note, "; "), Objects: labels, TokenID: jti}
	if err := s.appendBound(ctx, rec, id, bind); err != nil {
		zeroAll()
		return nil, auditUnavailable(err)
	}
	resp := &keydv1.IssueResponse{Credentials: make([]*keydv1.Credential, n)}
	for i, why := range missing {
		resp.Credentials[i] = &keydv1.Credential{Name: specs[i].Name, Kind: string(specs[i].Kind), Missing: why}
	}
	for j, c := range issued {
		resp.Credentials[at[j]] = credentialProto(c)
	}
	return resp, nil
}

// refusal reports an issuer's answer that is a decision, not a failure:
// an optional object so refused is left out, where a failure (a module or
// store unavailable) fails the request, so a renewal keeps what the pod
// has rather than dropping a file.
func refusal(err error) bool {
	switch status.Code(err) {
	case codes.PermissionDenied, codes.NotFound, codes.FailedPrecondition:
		return true
	}
	return false
}

func (k *keydService) Verify(ctx context.Context, req *keydv1.VerifyRequest) (*keydv1.VerifyResponse, error) {
	s := k.s
	if req.AccessKeyId == "" || len(req.Signature) == 0 {
		return nil, status.Error(codes.InvalidArgument, "access key id and signature are required")
	}
	if len(req.Signature) > 128 {
		return nil, status.Error(codes.InvalidArgument, "signature is longer than 128 bytes")
	}
	if !fromUnixSocket(ctx) {
		if _, err := s.callerCert(ctx); err != nil {
			return nil, err
		}
	}
	id, err := s.issuer.VerifyAPIKey(ctx, req.AccessKeyId, req.StringToSign, req.Signature)
	var nonce *store.Nonce
	if err == nil {
		nonce, err = s.checkFresh(ctx, id, req.StringToSign)
	}
	rec := audit.Record{Action: audit.ActionVerify, Result: audit.ResultOK, Namespace: id.Namespace,
		ServiceAccount: id.ServiceAccount, PodUID: id.PodUID}
	if id.Object != "" {
		rec.Objects = []string{fmt.Sprintf("%s/apiKey/%s/g%d", id.Object, id.Suite, id.Generation)}
	}
	if err != nil {
		rec.Result, rec.Reason = audit.ResultDenied, status.Convert(toStatus(err)).Message()
		if errors.Is(err, credential.ErrInvalid) {
			rec.Result = audit.ResultError
		}
	}
	// An accepted request's nonce is durable with its audit record before
	// the answer: a replay is refused after a restart, too.
	if aerr := s.audit.AppendNonce(ctx, rec, nonce); aerr != nil {
		return nil, auditUnavailable(aerr)
	}
	if err != nil {
		return nil, toStatus(err)
	}
	return &keydv1.VerifyResponse{
		Namespace: id.Namespace, ServiceAccount: id.ServiceAccount, PodUid: id.PodUID, Object: id.Object,
		Suite: string(id.Suite), Generation: int64(id.Generation), Expiry: timestamppb.New(id.Expiry),
	}, nil
}

func (k *keydService) Revoke(ctx context.Context, req *keydv1.RevokeRequest) (*keydv1.RevokeResponse, error) {
	s := k.s
	id, err := s.authorizeRevoke(ctx, req.Pod, req.PodToken)
	if err != nil {
		s.auditDeny(ctx, audit.ActionRevoke, req.Pod, status.Convert(err).Message(), nil)
		return nil, err
	}
	var before time.Time
	if req.IssuedBefore != nil {
		before = req.IssuedBefore.AsTime()
	}
	until, err := s.revoke(ctx, id, before)
	if err != nil {
		return nil, toStatus(err)
	}
	return &keydv1.RevokeResponse{Until: timestamppb.New(until)}, nil
}

func (k *keydService) CABundle(_ context.Context, req *keydv1.CABundleRequest) (*keydv1.CABundleResponse, error) {
	st, err := suite.Parse(req.Suite)
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	return &keydv1.CABundleResponse{Pem: k.s.kr.CABundle(st)}, nil
}

// Freshness refusals of signed HTTP requests.
var (
	errStale  = errors.New("signed request is outside the freshness window (check the client's clock)")
	errReplay = errors.New("signed request was already accepted once (replay)")
)

// checkFresh applies replay protection to strings to sign of podkey's
// request signing scheme: their date must be within reqsign.Window of now
// and their nonce unclaimed for this key, by this replica or any other
// sharing the store. The nonce is keyed on what the signature
// authenticated (the key's payload), never on how the id was spelled. It
// returns the nonce to record with the verification (nil for other
// strings, which are the caller's own protocol and are verified as
// signatures only).
func (s *Server) checkFresh(ctx context.Context, id accesskey.ID, sts []byte) (*store.Nonce, error) {
	switch {
	case bytes.HasPrefix(sts, []byte(reqsign.RetiredVersion+"-")):
		return nil, fmt.Errorf("%w: %v", credential.ErrInvalid, reqsign.ErrRetired)
	case !bytes.HasPrefix(sts, []byte(reqsign.Version+"-")):
		return nil, nil
	}
	date, nonce, err := reqsign.DateAndNonce(sts)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", credential.ErrInvalid, err)
	}
	now := s.opts.Now()
	if date.Before(now.Add(-reqsign.Window)) || date.After(now.Add(reqsign.Window)) {
		return nil, errStale
	}
	payload, err := id.Payload()
	if err != nil {
		return nil, fmt.Errorf("%w: %v", credential.ErrInvalid, err)
	}
	n := &store.Nonce{Key: sha256.Sum256(append(append(payload, 0), nonce...)), Until: date.Add(reqsign.Window)}
	granted, err := s.st.ClaimNonce(ctx, *n, now)
	if err != nil {
		return nil, storeUnavailable(err)
	}
	if !granted {
		return nil, errReplay
	}
	return n, nil
}
