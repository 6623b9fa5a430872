package service

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/podkey/podkey/internal/keyd/audit"
	"github.com/podkey/podkey/internal/keyd/credential"
	"github.com/podkey/podkey/internal/keyd/dbcred"
	"github.com/podkey/podkey/internal/keyd/keyring"
	"github.com/podkey/podkey/internal/keyd/policy"
	"github.com/podkey/podkey/internal/version"
	keydv1 "github.com/podkey/podkey/pkg/api/keydv1"
	"github.com/podkey/podkey/pkg/suite"
)

// adminService is served on the local unix socket only; the socket's file
// mode (0600) is its access control.
type adminService struct {
	keydv1.UnimplementedAdminServer
	s *Server
}

func (a *adminService) PutSecret(ctx context.Context, req *keydv1.PutSecretRequest) (*keydv1.SecretInfo, error) {
	defer clear(req.Value)
	rec, err := a.s.issuer.Enroll(ctx, req.Namespace, req.Name, req.Value)
	result, reason := audit.ResultOK, ""
	if err != nil {
		result, reason = audit.ResultError, err.Error()
	}
	if aerr := a.s.audit.Append(ctx, audit.Record{Action: audit.ActionSecretPut, Result: result, Reason: reason,
		Namespace: clip(req.Namespace), Objects: []string{clip(req.Name)}}); aerr != nil && err == nil {
		return nil, auditUnavailable(aerr)
	}
	if err != nil {
		return nil, toStatus(err)
	}
	return secretInfo(rec), nil
}

func (a *adminService) ListSecrets(ctx context.Context, req *keydv1.ListSecretsRequest) (*keydv1.ListSecretsResponse, error) {
	list, err := a.s.st.Secrets(ctx, req.Namespace)
	if err != nil {
		return nil, toStatus(err)
	}
	out := &keydv1.ListSecretsResponse{}
	for _, r := range list {
		// Escrows and database connections are kept as secrets of
		// reserved namespaces; they are not enrolled secrets.
		if r.Namespace != credential.EscrowNamespace && r.Namespace != dbcred.DatabaseNamespace {
			out.Secrets = append(out.Secrets, secretInfo(r))
		}
	}
	return out, nil
}

func (a *adminService) DeleteSecret(ctx context.Context, req *keydv1.DeleteSecretRequest) (*keydv1.DeleteSecretResponse, error) {
	if req.Namespace == credential.EscrowNamespace {
		return nil, status.Error(codes.InvalidArgument, "TLCP escrows are destroyed only when their retention ends")
	}
	if req.Namespace == dbcred.DatabaseNamespace {
		return nil, status.Error(codes.InvalidArgument, "database connections are deleted with 'podkey database delete', which refuses while pods hold logins")
	}
	err := a.s.st.DeleteSecret(ctx, req.Namespace, req.Name)
	if err != nil {
		return nil, toStatus(err)
	}
	if err := a.s.audit.Append(ctx, audit.Record{Action: audit.ActionSecretDelete, Result: audit.ResultOK,
		Namespace: req.Namespace, Objects: []string{req.Name}}); err != nil {
		return nil, auditUnavailable(err)
	}
	return &keydv1.DeleteSecretResponse{}, nil
}

func (a *adminService) GetPolicy(context.Context, *keydv1.GetPolicyRequest) (*keydv1.PolicyDocument, error) {
	doc, err := a.s.policy.Load().Marshal()
	if err != nil {
		return nil, toStatus(err)
	}
	return &keydv1.PolicyDocument{Yaml: doc}, nil
}

func (a *adminService) SetPolicy(ctx context.Context, req *keydv1.PolicyDocument) (*keydv1.PolicyDocument, error) {
	p, err := policy.Parse(req.Yaml)
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	a.s.policyMu.Lock()
	defer a.s.policyMu.Unlock()
	if err := a.s.setPolicy(ctx, p, "admin API"); err != nil {
		return nil, toStatus(err)
	}
	return a.GetPolicy(ctx, nil)
}

func (a *adminService) ExportAudit(_ *keydv1.ExportAuditRequest, stream grpc.ServerStreamingServer[keydv1.AuditRecord]) error {
	return toStatus(audit.Export(stream.Context(), a.s.st, func(line []byte) error {
		return stream.Send(&keydv1.AuditRecord{Json: line})
	}))
}

// VerifyAudit checks the MAC chain against the token's anchor, then the
// content hash against every signed checkpoint.
func (a *adminService) VerifyAudit(ctx context.Context, _ *keydv1.VerifyAuditRequest) (*keydv1.VerifyAuditResponse, error) {
	n, err := audit.VerifyAnchored(ctx, a.s.st, a.s.kr.AuditKeys(), a.s.kr.AuditAnchors())
	var te *audit.TamperError
	switch {
	case errors.As(err, &te):
		return &keydv1.VerifyAuditResponse{Records: n, Intact: false, BrokenAt: te.Seq, Reason: te.Reason}, nil
	case errors.Is(err, audit.ErrTruncated):
		return &keydv1.VerifyAuditResponse{Records: n, Intact: false, BrokenAt: n + 1, Reason: err.Error()}, nil
	case err != nil:
		return nil, toStatus(err)
	}
	cps, newest, err := audit.VerifyCheckpoints(ctx, a.s.st, a.s.checkpointKeys)
	resp := &keydv1.VerifyAuditResponse{Records: n, Intact: true, Checkpoints: uint64(cps), NewestCheckpoint: newest}
	switch {
	case errors.As(err, &te):
		resp.Intact, resp.BrokenAt, resp.Reason = false, te.Seq, te.Reason
	case err != nil:
		return nil, toStatus(err)
	}
	return resp, nil
}

func (a *adminService) CheckpointAudit(ctx context.Context, _ *keydv1.CheckpointAuditRequest) (*keydv1.CheckpointAuditResponse, error) {
	cp, err := a.s.Checkpoint(ctx)
	if err != nil {
		return nil, status.Errorf(codes.Unavailable, "audit checkpoint: %v", err)
	}
	if cp.Seq == 0 {
		return &keydv1.CheckpointAuditResponse{}, nil
	}
	b, err := json.Marshal(cp)
	if err != nil {
		return nil, toStatus(err)
	}
	return &keydv1.CheckpointAuditResponse{Json: b}, nil
}

func (a *adminService) RotateKey(ctx context.Context, req *keydv1.RotateKeyRequest) (*keydv1.RotateKeyResponse, error) {
	switch req.Purpose {
	case "kek":
		return a.rotateKEK(ctx)
	case "audit":
		return a.rotateAudit(ctx)
	}
	p := keyring.Purpose(req.Purpose)
	valid := false
	for _, q := range keyring.Purposes {
		valid = valid || p == q
	}
	if !valid {
		return nil, status.Errorf(codes.InvalidArgument, "unknown key purpose %q (want mac, derive, ca, jwt, kek or audit)", req.Purpose)
	}
	st, err := suite.Parse(req.Suite)
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	gen, err := a.s.kr.Rotate(ctx, p, st)
	if err != nil {
		return nil, toStatus(err)
	}
	if err := a.s.audit.Append(ctx, audit.Record{Action: audit.ActionKeyRotate, Result: audit.ResultOK,
		Objects: []string{keyring.Label(p, st, gen)}}); err != nil {
		return nil, auditUnavailable(err)
	}
	return &keydv1.RotateKeyResponse{Generation: int64(gen)}, nil
}

func (a *adminService) Status(ctx context.Context, _ *keydv1.StatusRequest) (*keydv1.StatusResponse, error) {
	info := a.s.tok.Info()
	last, err := a.s.st.LastAudit(ctx)
	if err != nil {
		return nil, toStatus(err)
	}
	out := &keydv1.StatusResponse{Version: version.Version, TokenLabel: info.Label, TokenModel: info.Model,
		AuditRecords: last.Seq, InsecureLocalIdentity: a.s.opts.InsecureLocalIdentity}
	for _, p := range keyring.Purposes {
		for _, st := range suite.All {
			kg := &keydv1.KeyGenerations{Purpose: string(p), Suite: string(st)}
			for _, g := range a.s.kr.Generations(p, st) {
				_, where := a.s.kr.Native(p, st, g)
				kg.Generations, kg.Where = append(kg.Generations, int64(g)), append(kg.Where, where)
			}
			out.Keys = append(out.Keys, kg)
		}
	}
	return out, nil
}

// backuper is a store that can copy itself while keyd serves (bbolt).
type backuper interface {
	Backup(w io.Writer) (size int64, lastAudit uint64, err error)
}

func (a *adminService) BackupStore(_ *keydv1.BackupStoreRequest, stream grpc.ServerStreamingServer[keydv1.BackupChunk]) error {
	b, ok := a.s.st.(backuper)
	if !ok {
		return status.Error(codes.FailedPrecondition, "this keyd's store is PostgreSQL: back it up with the database's own tools (pg_dump, base backups), together with the HSM's keys")
	}
	ctx := stream.Context()
	pr, pw := io.Pipe()
	type result struct {
		size, last uint64
		err        error
	}
	done := make(chan result, 1)
	go func() {
		size, last, err := b.Backup(pw)
		pw.CloseWithError(err)
		done <- result{uint64(size), last, err}
	}()
	// The last audit record's number is known only once the copy's
	// transaction is open; it travels in the final, empty chunk.
	buf := make([]byte, 1<<20)
	sum := sha256.New()
	for {
		n, err := io.ReadFull(pr, buf)
		if n > 0 {
			sum.Write(buf[:n])
			if serr := stream.Send(&keydv1.BackupChunk{Data: buf[:n]}); serr != nil {
				pr.CloseWithError(serr)
				<-done
				return serr
			}
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			break
		}
		if err != nil {
			<-done
			return toStatus(err)
		}
	}
	r := <-done
	if r.err != nil {
		return toStatus(r.err)
	}
	var digest [32]byte
	copy(digest[:], sum.Sum(nil))
	tag, gen, err := audit.BackupTag(ctx, a.s.kr.AuditKeys(), digest, int64(r.size), r.last)
	if err != nil {
		return toStatus(err)
	}
	if err := a.s.audit.Append(ctx, audit.Record{Action: audit.ActionStoreBackup, Result: audit.ResultOK,
		Reason: fmt.Sprintf("%d bytes, SHA-256 %x, audit records up to %d", r.size, digest, r.last)}); err != nil {
		return auditUnavailable(err)
	}
	return stream.Send(&keydv1.BackupChunk{LastAuditSeq: r.last, Tag: tag, TagKeyGen: int32(gen)})
}

// rotateKEK moves every wrapped value to a new key-encryption key
// generation (keyring.RotateKEK); an interrupted rotation is finished by
// asking again. Audited either way.
func (a *adminService) rotateKEK(ctx context.Context) (*keydv1.RotateKeyResponse, error) {
	r, err := a.s.kr.RotateKEK(ctx, a.s.st)
	result, reason := audit.ResultOK, fmt.Sprintf("re-wrapped %d token values and %d secrets; destroyed KEK generations %v", r.TokenObjects, r.Secrets, r.DestroyedKEKs)
	if err != nil {
		result, reason = audit.ResultError, err.Error()
	}
	if aerr := a.s.audit.Append(ctx, audit.Record{Action: audit.ActionKeyRotate, Result: result, Reason: reason,
		Objects: []string{fmt.Sprintf("kek/g%d", r.Generation)}}); aerr != nil && err == nil {
		return nil, auditUnavailable(aerr)
	}
	if err != nil {
		return nil, toStatus(err)
	}
	return &keydv1.RotateKeyResponse{Generation: int64(r.Generation)}, nil
}

// rotateAudit creates the audit key's next generation; the record of the
// rotation is the first the new generation authenticates.
func (a *adminService) rotateAudit(ctx context.Context) (*keydv1.RotateKeyResponse, error) {
	gen, err := a.s.kr.RotateAudit(ctx)
	if err != nil {
		return nil, toStatus(err)
	}
	if err := a.s.audit.Append(ctx, audit.Record{Action: audit.ActionKeyRotate, Result: audit.ResultOK,
		Objects: []string{fmt.Sprintf("audit/g%d", gen)}}); err != nil {
		return nil, auditUnavailable(err)
	}
	return &keydv1.RotateKeyResponse{Generation: int64(gen)}, nil
}
