package keyring

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/podkey/podkey/internal/keyd/audit"
	"github.com/podkey/podkey/internal/keyd/hsm"
)

// The newest signed audit checkpoint is kept on the token as versioned
// data objects podkey-audit-checkpoint/<seq>-<random>: where keyd resumes
// the content hash after a restart, and a copy outside the store.
const checkpointPrefix = "podkey-audit-checkpoint/"

// Checkpoints keeps the newest audit checkpoint on a token.
type Checkpoints struct{ tok *hsm.Token }

// Checkpoints is this keyring's token's.
func (kr *Keyring) Checkpoints() Checkpoints { return Checkpoints{kr.tok} }

// TokenCheckpoints is Checkpoints for a token opened without a keyring.
func TokenCheckpoints(tok *hsm.Token) Checkpoints { return Checkpoints{tok} }

// Load returns the newest checkpoint (ok=false: none).
func (c Checkpoints) Load(ctx context.Context) (audit.Checkpoint, bool, error) {
	b, n, ok, err := loadVersioned(ctx, c.tok, checkpointPrefix)
	if err != nil || !ok {
		return audit.Checkpoint{}, false, err
	}
	var cp audit.Checkpoint
	if err := json.Unmarshal(b, &cp); err != nil || cp.Seq != n {
		return audit.Checkpoint{}, false, fmt.Errorf("keyring: audit checkpoint %d is unreadable", n)
	}
	return cp, true, nil
}

// Save keeps cp unless a newer one is stored.
func (c Checkpoints) Save(ctx context.Context, cp audit.Checkpoint) error {
	old, err := listVersioned(ctx, c.tok, checkpointPrefix)
	if err != nil {
		return err
	}
	if len(old) > 0 && old[0].n >= cp.Seq {
		return nil
	}
	b, err := json.Marshal(cp)
	if err != nil {
		return err
	}
	return putVersioned(ctx, c.tok, checkpointPrefix, cp.Seq, b, old)
}

// Reset destroys every checkpoint object: a restore shortens the chain,
// and keyd starts the content hash again from the restored store.
func (c Checkpoints) Reset(ctx context.Context) error {
	old, err := listVersioned(ctx, c.tok, checkpointPrefix)
	if err != nil {
		return err
	}
	for _, o := range old {
		if err := c.tok.Destroy(ctx, hsm.Data, o.label); err != nil && !errors.Is(err, hsm.ErrObjectNotFound) {
			return err
		}
	}
	return nil
}
