package service

import (
	"context"
	"crypto/ecdsa"
	"fmt"
	"net/http"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/podkey/podkey/internal/keyd/credential"
	"github.com/podkey/podkey/internal/keyd/keyring"
	keydv1 "github.com/podkey/podkey/pkg/api/keydv1"
	"github.com/podkey/podkey/pkg/suite"
	"github.com/podkey/podkey/pkg/token/jwks"
)

// tokenKeys is the JWK Set of every loaded generation of both suites'
// token-signing keys, newest first within a suite. Generations stay
// loaded while tokens they signed may live, so receivers keep verifying
// those through a rotation.
func (s *Server) tokenKeys() (jwks.Set, error) {
	set := jwks.Set{Keys: []jwks.Key{}}
	for _, st := range []suite.Name{suite.Intl, suite.GM} {
		gens := s.kr.Generations(keyring.JWT, st)
		for i := len(gens) - 1; i >= 0; i-- {
			signer, err := s.kr.TokenSigner(st, gens[i])
			if err != nil {
				return jwks.Set{}, err
			}
			pub, ok := signer.Public().(*ecdsa.PublicKey)
			if !ok {
				return jwks.Set{}, fmt.Errorf("keyd: %s token key g%d is not an EC key", st, gens[i])
			}
			k, err := jwks.NewKey(st, credential.KeyID(st, gens[i]), pub)
			if err != nil {
				return jwks.Set{}, err
			}
			set.Keys = append(set.Keys, k)
		}
	}
	return set, nil
}

func (k *keydService) TokenKeys(context.Context, *keydv1.TokenKeysRequest) (*keydv1.TokenKeysResponse, error) {
	set, err := k.s.tokenKeys()
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	b, err := set.Marshal()
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	return &keydv1.TokenKeysResponse{Jwks: b}, nil
}

// jwksHandler serves the JWK Set at jwks.WellKnownPath, read from the keyring on
// every request (a rotation shows at once), cacheable for a minute.
func (s *Server) jwksHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+jwks.WellKnownPath, func(w http.ResponseWriter, _ *http.Request) {
		set, err := s.tokenKeys()
		if err != nil {
			s.opts.Logger.Error("token keys", "error", err)
			http.Error(w, "token keys unavailable", http.StatusInternalServerError)
			return
		}
		b, err := set.Marshal()
		if err != nil {
			http.Error(w, "token keys unavailable", http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/jwk-set+json")
		w.Header().Set("Cache-Control", "public, max-age=60")
		_, _ = w.Write(b)
	})
	return mux
}

// serveJWKS serves the JWK Set over HTTPS with keyd's serving certificate
// (from the intl CA: receivers trust `podkey ca bundle`) until ctx ends.
func (s *Server) serveJWKS(ctx context.Context, errc chan<- error) error {
	tlsConf, err := s.servingTLS()
	if err != nil {
		return err
	}
	tlsConf = tlsConf.Clone()
	tlsConf.ClientAuth = 0 // anyone may read public keys
	lis, err := Listen(s.opts.JWKSListen, s.opts.SharedPorts)
	if err != nil {
		return fmt.Errorf("keyd: listen %s: %w", s.opts.JWKSListen, err)
	}
	srv := &http.Server{Handler: s.jwksHandler(), TLSConfig: tlsConf, ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout: 10 * time.Second, WriteTimeout: 10 * time.Second, MaxHeaderBytes: 16 << 10}
	s.opts.Logger.Info("serving token keys", "address", lis.Addr().String(), "path", jwks.WellKnownPath)
	s.wg.Add(2)
	go func() {
		defer s.wg.Done()
		if err := srv.ServeTLS(lis, "", ""); err != nil && err != http.ErrServerClosed {
			errc <- err
		}
	}()
	go func() {
		defer s.wg.Done()
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	return nil
}
