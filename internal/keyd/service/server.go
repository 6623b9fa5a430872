package service

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/podkey/podkey/internal/host/socket"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"

	"github.com/podkey/podkey/internal/keyd/audit"
	"github.com/podkey/podkey/internal/keyd/credential"
	"github.com/podkey/podkey/internal/keyd/dbcred"
	"github.com/podkey/podkey/internal/keyd/hsm"
	"github.com/podkey/podkey/internal/keyd/keyring"
	"github.com/podkey/podkey/internal/keyd/policy"
	"github.com/podkey/podkey/internal/keyd/store"
	keydv1 "github.com/podkey/podkey/pkg/api/keydv1"
	"github.com/podkey/podkey/pkg/suite"
)

// Server is a running key service.
type Server struct {
	opts   Options
	tok    *hsm.Token
	kr     *keyring.Keyring
	st     store.Store
	audit  *audit.Log
	issuer *credential.Issuer
	// dbs issues, renews and revokes pods' database logins.
	dbs    *dbcred.Manager
	policy atomic.Pointer[policy.Policy]
	// policySeen is when the policy in force was last confirmed to be
	// the store's; serving is the health status that gives.
	policySeen atomic.Pointer[time.Time]
	serving    atomic.Int32
	// admission bounds the heavy calls of authenticated callers held in
	// memory, bootstrap those of TLS callers without a certificate; see
	// caller.go.
	admission *admission
	bootstrap *admission
	verified  certCache
	denied    denials
	metrics   *metrics
	// clock is the shared store's, when keyd takes its time from it.
	clock    *storeClock
	policyMu sync.Mutex // serializes read-modify-write of the policy
	// checkpoints signs the audit chain's content hash (checkpoint.go).
	checkpoints checkpointer

	health    *health.Server
	servers   []*grpc.Server
	wg        sync.WaitGroup
	closeOnce sync.Once
}

// New builds the key service on an open keyring and store, and loads the
// policy. Nothing listens until Serve.
func New(ctx context.Context, opts Options) (*Server, error) {
	clock, err := opts.useStoreClock(ctx)
	if err != nil {
		return nil, err
	}
	if err := opts.setDefaults(); err != nil {
		return nil, err
	}
	s := &Server{opts: opts, health: health.NewServer(), clock: clock,
		kr: opts.Keyring, tok: opts.Keyring.Token(), st: opts.Store}
	inflight, queued := admissionBounds(opts.MaxInflight, opts.MaxQueued)
	s.admission = newAdmission(inflight, queued)
	s.bootstrap = newAdmission(bootstrapInflight, bootstrapQueued)
	s.metrics = newMetrics(opts.Registerer, s.admission)
	if opts.Identity != nil {
		opts.Identity.SetObserver(func(method string) { s.metrics.tokenChecks.WithLabelValues(method).Inc() })
	}
	opts.Logger.Info("admission of Issue and Verify calls", "maxInflight", inflight, "maxQueued", queued, "memoryLimitBytes", memoryLimit())
	s.audit = audit.OpenAnchored(s.st, s.kr.AuditKeys(), s.kr.AuditAnchors())
	registerStateMetrics(opts.Registerer, s.tok, s.audit)
	registerClockMetrics(opts.Registerer, clock)
	s.dbs = dbcred.New(s.kr, s.st, dbcred.Options{Now: opts.Now, Audit: s.audit.Append, Logger: opts.Logger, PodGone: opts.PodGone})
	s.issuer = credential.NewIssuer(s.kr, s.st, credential.Options{TrustDomain: opts.TrustDomain, Now: opts.Now, Databases: s.dbs})
	if err := s.loadPolicy(ctx); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

func (s *Server) loadPolicy(ctx context.Context) error {
	if s.opts.PolicyFile != "" {
		data, err := os.ReadFile(s.opts.PolicyFile)
		if err != nil {
			return fmt.Errorf("keyd: policy file: %w", err)
		}
		p, err := policy.Parse(data)
		if err != nil {
			return fmt.Errorf("keyd: policy file %s: %w", s.opts.PolicyFile, err)
		}
		stored, err := s.st.Policy(ctx)
		switch {
		case errors.Is(err, store.ErrNotFound):
			return s.setPolicy(ctx, p, "file "+filepath.Base(s.opts.PolicyFile)+" (the store held none)")
		case err != nil:
			return err
		}
		if s.opts.PolicyFileSeeds {
			s.opts.Logger.Info("the store holds a policy: the policy file only seeds an empty store", "file", s.opts.PolicyFile)
		} else {
			return s.replacePolicy(ctx, p, stored)
		}
	}
	data, err := s.st.Policy(ctx)
	switch {
	case errors.Is(err, store.ErrNotFound):
		s.policy.Store(policy.Empty())
		s.confirmPolicy()
		return nil
	case err != nil:
		return err
	}
	p, err := policy.Parse(data)
	if err != nil {
		return fmt.Errorf("keyd: stored policy: %w", err)
	}
	s.policy.Store(p)
	s.confirmPolicy()
	return nil
}

// replacePolicy puts the policy file's p in place of the stored policy,
// saying (in the audit log, and loudly with a shared store) how many rules
// it drops that the file does not have: rules added at run time, through
// any replica.
func (s *Server) replacePolicy(ctx context.Context, p *policy.Policy, stored []byte) error {
	old, err := policy.Parse(stored)
	if err != nil {
		return fmt.Errorf("keyd: stored policy: %w", err)
	}
	doc, _ := p.Marshal()
	oldDoc, _ := old.Marshal()
	if bytes.Equal(doc, oldDoc) {
		s.policy.Store(p)
		s.confirmPolicy()
		return nil
	}
	dropped := old.RulesNotIn(p)
	if dropped > 0 && s.opts.SharedPorts {
		s.opts.Logger.Warn("the policy file replaces the policy of every replica sharing the store, dropping rules added at run time (--policy-file-mode=seed keeps them)",
			"file", s.opts.PolicyFile, "droppedRules", dropped)
	}
	return s.setPolicy(ctx, p, fmt.Sprintf("file %s, replacing the stored policy of %d rules (%d not in the file)",
		filepath.Base(s.opts.PolicyFile), len(old.Rules), dropped))
}

// setPolicy stores, audits and activates a policy.
func (s *Server) setPolicy(ctx context.Context, p *policy.Policy, source string) error {
	doc, err := p.Marshal()
	if err != nil {
		return err
	}
	if err := s.st.SetPolicy(ctx, doc); err != nil {
		return err
	}
	s.policy.Store(p)
	s.confirmPolicy()
	return s.audit.Append(ctx, audit.Record{Action: audit.ActionPolicySet, Result: audit.ResultOK,
		Reason: fmt.Sprintf("%d rules from %s", len(p.Rules), source)})
}

// Serve listens on the configured socket and TLS address and blocks until
// ctx ends or a listener fails; it then stops gracefully.
func (s *Server) Serve(ctx context.Context) error {
	errc := make(chan error, 3)
	if s.opts.Socket != "" {
		lis, err := socket.Listen(s.opts.Socket, 0o600)
		if err != nil {
			return err
		}
		g := s.newGRPC(grpc.ChainUnaryInterceptor(s.approveUnary), grpc.ChainStreamInterceptor(s.approveStream))
		keydv1.RegisterAdminServer(g, &adminService{s: s})
		s.start(g, lis, errc)
		s.opts.Logger.Info("serving", "socket", s.opts.Socket, "admin", true)
	}
	if s.opts.Listen != "" {
		tlsConf, err := s.servingTLS()
		if err != nil {
			return err
		}
		lis, err := Listen(s.opts.Listen, s.opts.SharedPorts)
		if err != nil {
			return fmt.Errorf("keyd: listen %s: %w", s.opts.Listen, err)
		}
		s.opts.Logger.Info("serving", "address", lis.Addr().String(), "tls", true)
		s.start(s.newGRPC(grpc.Creds(credentials.NewTLS(tlsConf)),
			// One connection cannot hold more streams than this, nor a
			// handshake or a dead peer a connection for long.
			grpc.MaxConcurrentStreams(maxStreamsPerConn), grpc.ConnectionTimeout(10*time.Second),
			// Every node holds a connection: at 10,000 nodes over three
			// replicas, each holds 3,300 mostly idle ones. A write buffer
			// is taken only while a connection writes, and the read buffer
			// fits keyd's small messages (BenchmarkTenThousandNodes).
			grpc.SharedWriteBuffer(true), grpc.ReadBufferSize(8<<10),
			grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 10 * time.Second})), lis, errc)
	}
	if len(s.servers) == 0 {
		return errors.New("keyd: neither a socket nor a listen address is configured")
	}
	// pctx ends when Serve returns, whatever the cause.
	pctx, stopPrune := context.WithCancel(ctx)
	defer stopPrune()
	if s.opts.JWKSListen != "" {
		if err := s.serveJWKS(pctx, errc); err != nil {
			stopPrune()
			for _, g := range s.servers {
				g.Stop()
			}
			s.wg.Wait()
			return err
		}
	}
	s.serving.Store(int32(healthpb.HealthCheckResponse_SERVING))
	s.health.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	s.wg.Add(1)
	go func() { defer s.wg.Done(); s.pruneLoop(pctx) }()
	s.wg.Add(1)
	go func() { defer s.wg.Done(); s.checkpointLoop(pctx) }()
	s.wg.Add(1)
	go func() { defer s.wg.Done(); s.followPolicy(pctx) }()
	s.wg.Add(1)
	go func() { defer s.wg.Done(); s.followKeyring(pctx) }()
	s.wg.Add(1)
	go func() { defer s.wg.Done(); s.dbs.Run(pctx) }() // revokes database logins whose pods went
	if s.clock != nil {
		s.wg.Add(1)
		go func() { defer s.wg.Done(); s.clock.follow(pctx, s.opts.Logger) }()
	}
	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	s.health.Shutdown()
	stopPrune()
	for _, g := range s.servers {
		g.GracefulStop()
	}
	s.wg.Wait()
	return err
}

// policyEvery is how often keyd reads the stored policy, so a change made
// through another replica sharing the store is in force here within it.
const policyEvery = 500 * time.Millisecond

// followPolicy activates the stored policy whenever it differs from the
// one last seen. One small read per tick; with bbolt only this process
// writes, and the read finds nothing new.
func (s *Server) followPolicy(ctx context.Context) {
	t := time.NewTicker(policyEvery)
	defer t.Stop()
	var last []byte
	failing := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		// Held so a change made here is not overwritten by an older read.
		s.policyMu.Lock()
		doc, err := s.st.Policy(ctx)
		if err == nil && !bytes.Equal(doc, last) {
			var p *policy.Policy
			if p, err = policy.Parse(doc); err == nil {
				if last != nil {
					s.opts.Logger.Info("policy changed in the store", "rules", len(p.Rules))
				}
				s.policy.Store(p)
				last = doc
			}
		}
		if err == nil || errors.Is(err, store.ErrNotFound) && last == nil {
			s.confirmPolicy()
		}
		s.policyMu.Unlock()
		s.updateHealth()
		switch {
		case err == nil || errors.Is(err, store.ErrNotFound) || ctx.Err() != nil:
			failing = false
		case !failing: // once per outage, not twice a second
			failing = true
			s.opts.Logger.Warn("reading the stored policy failed; the last one stays in force for up to PolicyMaxAge", "error", err, "storeDetail", store.Detail(err))
		}
	}
}

// keyringEvery is how often keyd reads the token's root key generations,
// so a rotation made through another replica sharing the token (a new
// generation of any purpose, the KEK, the audit key) is used, verified
// and published here within it: its new API keys verify, its tokens'
// keys are in this replica's JWK Set, its CA in this replica's bundles
// and client CAs.
const keyringEvery = 500 * time.Millisecond

func (s *Server) followKeyring(ctx context.Context) {
	t := time.NewTicker(keyringEvery)
	defer t.Stop()
	failing := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		rctx, cancel := context.WithTimeout(ctx, keyringEvery*5)
		err := s.kr.Refresh(rctx)
		cancel()
		switch {
		case err == nil || ctx.Err() != nil:
			failing = false
		case !failing:
			failing = true
			s.opts.Logger.Warn("reading the token's key generations failed; those loaded stay in use", "error", err)
		}
	}
}

// pruneEvery is how often keyd forgets nonces and revocations past their
// time.
const pruneEvery = time.Minute

// pruneLoop keeps the store's nonces (five minutes' worth of accepted
// signed requests) and revocations from growing past their use.
func (s *Server) pruneLoop(ctx context.Context) {
	if err := s.pruneEscrows(ctx); err != nil && ctx.Err() == nil {
		s.opts.Logger.Warn("destroying expired TLCP escrows failed", "error", err)
	}
	t := time.NewTicker(pruneEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		now := s.opts.Now()
		if _, err := s.st.PruneNonces(ctx, now); err != nil && ctx.Err() == nil {
			s.opts.Logger.Warn("pruning signed-request nonces failed", "error", err)
		}
		if _, err := s.st.PruneRevocations(ctx, now); err != nil && ctx.Err() == nil {
			s.opts.Logger.Warn("pruning revocations failed", "error", err)
		}
		if err := s.pruneEscrows(ctx); err != nil && ctx.Err() == nil {
			s.opts.Logger.Warn("destroying expired TLCP escrows failed", "error", err)
		}
	}
}

func (s *Server) newGRPC(extra ...grpc.ServerOption) *grpc.Server {
	opts := append([]grpc.ServerOption{
		grpc.ChainUnaryInterceptor(s.logUnary, s.admitUnary),
		grpc.InTapHandle(s.tap),
		grpc.ChainStreamInterceptor(s.logStream),
		grpc.MaxRecvMsgSize(1 << 20),
		// Reuse a pool of goroutines for streams: a fresh goroutine per call
		// spent a tenth of issuance's CPU growing its stack.
		grpc.NumStreamWorkers(uint32(runtime.GOMAXPROCS(0))),
	}, extra...)
	g := grpc.NewServer(opts...)
	keydv1.RegisterKeydServer(g, &keydService{s: s})
	healthpb.RegisterHealthServer(g, s.health)
	s.servers = append(s.servers, g)
	return g
}

func (s *Server) start(g *grpc.Server, lis net.Listener, errc chan<- error) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		if err := g.Serve(lis); err != nil {
			errc <- err
		}
	}()
}

// Close stops the servers and flushes the audit log. The keyring and the
// store stay open: their opener closes them. Safe to call twice.
func (s *Server) Close() {
	s.closeOnce.Do(func() {
		for _, g := range s.servers {
			g.Stop()
		}
		if s.dbs != nil {
			s.dbs.Close()
		}
		if s.audit != nil {
			s.audit.Close()
		}
	})
}

// CABundle is the PEM bundle of the suite's CA certificates, every
// generation still trusted.
func (s *Server) CABundle(st suite.Name) []byte { return s.kr.CABundle(st) }
