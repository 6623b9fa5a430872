package service

import (
	"context"
	"log/slog"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/podkey/podkey/internal/keyd/dbcred"
	"github.com/podkey/podkey/internal/keyd/store"
)

// logUnary logs method, code and duration, and counts the call. Requests and responses are
// never logged: they carry tokens, secrets and signatures.
func (s *Server) logUnary(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	start := time.Now()
	resp, err := h(ctx, req)
	s.metrics.observe(info.FullMethod, status.Code(err), start)
	s.logCall(ctx, info.FullMethod, start, err)
	return resp, err
}

func (s *Server) logStream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
	start := time.Now()
	err := h(srv, ss)
	s.metrics.observe(info.FullMethod, status.Code(err), start)
	s.logCall(ss.Context(), info.FullMethod, start, err)
	return err
}

func (s *Server) logCall(ctx context.Context, method string, start time.Time, err error) {
	// Issue, Verify, Revoke and NodeCertificate calls are in the audit log
	// already; the process log keeps failures, and successes only at debug
	// level (thousands a second would drown it and cost CPU).
	level := slog.LevelDebug
	if err != nil {
		level = slog.LevelWarn
	}
	if !s.opts.Logger.Enabled(ctx, level) {
		return
	}
	st := status.Convert(err)
	attrs := []any{"method", method, "code", st.Code().String(), "duration", time.Since(start)}
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		attrs = append(attrs, "peer", p.Addr.Network())
	}
	if err != nil {
		// Status messages are written by keyd itself and name checks, never
		// values; see errors.go.
		attrs = append(attrs, "message", st.Message())
		if d := store.Detail(err); d != "" {
			attrs = append(attrs, "storeDetail", d)
		}
		if d := dbcred.Detail(err); d != "" {
			attrs = append(attrs, "databaseDetail", d)
		}
	}
	s.opts.Logger.Log(ctx, level, "rpc", attrs...)
}
