package service

import (
	"context"
	"crypto/ecdsa"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/podkey/podkey/internal/host/atomicfile"
	"github.com/podkey/podkey/internal/keyd/approval"
	"github.com/podkey/podkey/internal/keyd/audit"
	"github.com/podkey/podkey/internal/keyd/credential"
	"github.com/podkey/podkey/internal/keyd/keyring"
	"github.com/podkey/podkey/pkg/suite"
)

// checkpointer appends signed checkpoints to the audit chain (see
// audit/checkpoint.go): at most every Options.CheckpointInterval, when
// records were added since the last one, and on demand (an evidence
// export). The content hash runs in memory from the newest checkpoint on
// the token.
type checkpointer struct {
	mu      sync.Mutex
	hash    *audit.ContentHash
	covered uint64 // Seq of the last checkpoint this replica wrote
}

// checkpointSuite is the suite checkpoints are signed in: gm when the
// token holds the gm token-signing key inside the module, intl (ECDSA
// inside every PKCS#11 module) otherwise, unless configured.
func (s *Server) checkpointSuite() suite.Name {
	if s.opts.CheckpointSuite != "" {
		return s.opts.CheckpointSuite
	}
	if native, _ := s.kr.Native(keyring.JWT, suite.GM, s.kr.Current(keyring.JWT, suite.GM)); native {
		return suite.GM
	}
	return suite.Intl
}

func checkpointAlg(st suite.Name) string {
	if st == suite.GM {
		return audit.CheckpointSM3
	}
	return audit.CheckpointSHA256
}

// Checkpoint appends a signed checkpoint of the chain as stored now, and
// keeps it on the token and in the checkpoint directory. It returns the
// checkpoint (Seq 0: nothing new to cover).
func (s *Server) Checkpoint(ctx context.Context) (audit.Checkpoint, error) {
	c := &s.checkpoints
	c.mu.Lock()
	defer c.mu.Unlock()
	st := s.checkpointSuite()
	alg := checkpointAlg(st)
	if c.hash == nil {
		last, err := s.st.LastAudit(ctx)
		if err != nil {
			return audit.Checkpoint{}, err
		}
		c.hash = audit.NewContentHash(alg)
		if cp, ok, err := s.kr.Checkpoints().Load(ctx); err != nil {
			return audit.Checkpoint{}, err
		} else if ok && cp.Alg == alg && cp.Seq <= last.Seq {
			if h, err := audit.ResumeContentHash(cp); err == nil {
				c.hash, c.covered = h, cp.Seq
			}
		}
	}
	if err := c.hash.CatchUp(ctx, s.st); err != nil {
		c.hash = nil // start again from the token next time
		return audit.Checkpoint{}, err
	}
	if c.hash.Seq <= c.covered+1 { // nothing, or only our own checkpoint record
		return audit.Checkpoint{}, nil
	}
	gen := s.kr.Current(keyring.JWT, st)
	signer, err := s.kr.TokenSigner(st, gen)
	if err != nil {
		return audit.Checkpoint{}, err
	}
	pub, err := approval.MarshalPublicKey(st, signer.Public())
	if err != nil {
		return audit.Checkpoint{}, err
	}
	cp := audit.Checkpoint{Seq: c.hash.Seq, Hash: c.hash.Hex(), Alg: alg, Time: s.opts.Now().UTC().Truncate(time.Millisecond),
		Keyd: s.opts.ReplicaName, KeyID: credential.KeyID(st, gen), PublicKey: pub}
	if err := cp.Sign(signer); err != nil {
		return audit.Checkpoint{}, fmt.Errorf("audit checkpoint: signing: %w", err)
	}
	if err := s.audit.Append(ctx, audit.Record{Action: audit.ActionCheckpoint, Result: audit.ResultOK, Checkpoint: &cp}); err != nil {
		return audit.Checkpoint{}, err
	}
	c.covered = cp.Seq
	if err := s.kr.Checkpoints().Save(ctx, cp); err != nil {
		return cp, fmt.Errorf("audit checkpoint: keeping it on the token: %w", err)
	}
	if s.opts.CheckpointDir != "" {
		if err := writeCheckpointFile(s.opts.CheckpointDir, cp); err != nil {
			return cp, err
		}
	}
	return cp, nil
}

// writeCheckpointFile writes cp as checkpoint-<seq>.json, for the
// operator to ship where keyd's store writer cannot reach.
func writeCheckpointFile(dir string, cp audit.Checkpoint) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	b, err := json.MarshalIndent(cp, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.Write(filepath.Join(dir, fmt.Sprintf("checkpoint-%020d.json", cp.Seq)), append(b, '\n'))
}

func (s *Server) checkpointLoop(ctx context.Context) {
	if s.opts.CheckpointInterval < 0 {
		return
	}
	t := time.NewTicker(s.opts.CheckpointInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		if _, err := s.Checkpoint(cctx); err != nil && ctx.Err() == nil {
			s.opts.Logger.Warn("audit checkpoint failed", "error", err)
		}
		cancel()
	}
}

// checkpointKeys is the key trust for verifying checkpoints: the token-
// signing keys keyd holds, by key id.
func (s *Server) checkpointKeys(kid string) (*ecdsa.PublicKey, bool) {
	for _, st := range suite.All {
		for _, gen := range s.kr.Generations(keyring.JWT, st) {
			if credential.KeyID(st, gen) != kid {
				continue
			}
			signer, err := s.kr.TokenSigner(st, gen)
			if err != nil {
				return nil, false
			}
			pub, ok := signer.Public().(*ecdsa.PublicKey)
			return pub, ok
		}
	}
	return nil, false
}
