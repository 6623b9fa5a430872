package service

import (
	"context"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/podkey/podkey/internal/keyd/audit"
	"github.com/podkey/podkey/internal/keyd/dbcred"
	keydv1 "github.com/podkey/podkey/pkg/api/keydv1"
)

// Database connections and the pods' leases on the admin socket. The
// admin connection string goes in once, is checked against the database,
// kept wrapped, and never comes out: not in a listing, an error, the
// audit or an approval document (approval.Params drops it).

func seconds(n int64) time.Duration { return time.Duration(n) * time.Second }

func databaseInfo(c dbcred.Connection) *keydv1.DatabaseInfo {
	return &keydv1.DatabaseInfo{Name: c.Name, Engine: c.Engine, GroupRole: c.GroupRole,
		TtlSeconds: int64(c.TTL / time.Second), MaxTtlSeconds: int64(c.MaxTTL / time.Second),
		RevokeGraceSeconds: int64(c.RevokeGrace / time.Second), UserPrefix: c.UserPrefix,
		Host: c.Host, Port: int32(c.Port), Database: c.Database, Params: c.Params,
		Version: int32(c.Version), Created: timestamppb.New(c.Created)}
}

func (a *adminService) PutDatabase(ctx context.Context, req *keydv1.PutDatabaseRequest) (*keydv1.DatabaseInfo, error) {
	c, err := a.s.dbs.Put(ctx, dbcred.Connection{Name: req.Name, Engine: req.Engine, GroupRole: req.GroupRole,
		TTL: seconds(req.TtlSeconds), MaxTTL: seconds(req.MaxTtlSeconds), RevokeGrace: seconds(req.RevokeGraceSeconds),
		UserPrefix: req.UserPrefix, Host: req.Host, Port: int(req.Port), Database: req.Database, Params: req.Params,
		CAPEM: req.CaPem, Admin: req.AdminConnection})
	req.AdminConnection = ""
	result, reason := audit.ResultOK, ""
	if err != nil {
		result, reason = audit.ResultError, err.Error()
	}
	if aerr := a.s.audit.Append(ctx, audit.Record{Action: audit.ActionDatabasePut, Result: result, Reason: reason,
		Objects: []string{clip(req.Name)}}); aerr != nil && err == nil {
		return nil, auditUnavailable(aerr)
	}
	if err != nil {
		return nil, toStatus(err)
	}
	return databaseInfo(c), nil
}

func (a *adminService) ListDatabases(ctx context.Context, _ *keydv1.ListDatabasesRequest) (*keydv1.ListDatabasesResponse, error) {
	list, err := a.s.dbs.List(ctx)
	if err != nil {
		return nil, toStatus(err)
	}
	out := &keydv1.ListDatabasesResponse{}
	for _, c := range list {
		out.Databases = append(out.Databases, databaseInfo(c))
	}
	return out, nil
}

func (a *adminService) DeleteDatabase(ctx context.Context, req *keydv1.DeleteDatabaseRequest) (*keydv1.DeleteDatabaseResponse, error) {
	if err := a.s.dbs.Delete(ctx, req.Name); err != nil {
		return nil, toStatus(err)
	}
	if err := a.s.audit.Append(ctx, audit.Record{Action: audit.ActionDatabaseDelete, Result: audit.ResultOK,
		Objects: []string{clip(req.Name)}}); err != nil {
		return nil, auditUnavailable(err)
	}
	return &keydv1.DeleteDatabaseResponse{}, nil
}

func (a *adminService) ListLeases(ctx context.Context, req *keydv1.ListLeasesRequest) (*keydv1.ListLeasesResponse, error) {
	list, err := a.s.st.ListLeases(ctx, req.PodUid)
	if err != nil {
		return nil, toStatus(err)
	}
	out := &keydv1.ListLeasesResponse{}
	ts := func(t time.Time) *timestamppb.Timestamp {
		if t.IsZero() {
			return nil
		}
		return timestamppb.New(t)
	}
	for _, l := range list {
		out.Leases = append(out.Leases, &keydv1.Lease{Connection: l.Connection, Namespace: l.Namespace,
			ServiceAccount: l.ServiceAccount, Pod: l.Pod, PodUid: l.PodUID, User: l.Role, State: l.State,
			Created: ts(l.Created), PasswordAt: ts(l.PasswordAt), Expiry: ts(l.Expiry), RevokeAt: ts(l.RevokeAt),
			Attempts: int32(l.Attempts)})
	}
	return out, nil
}
