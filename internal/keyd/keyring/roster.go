package keyring

import (
	"context"
	"errors"
	"fmt"

	"github.com/podkey/podkey/internal/keyd/approval"
	"github.com/podkey/podkey/internal/keyd/hsm"
)

// The approval roster lives on the token, outside the store, as versioned
// data objects podkey-approval-roster/<version>-<random>: whoever can
// rewrite keyd's store cannot add themselves to it, nor remove it to
// switch dual control off.
const rosterPrefix = "podkey-approval-roster/"

// ErrRosterChanged: the roster's version is not the one a change was
// made against (another change came first).
var ErrRosterChanged = errors.New("keyring: the approval roster changed meanwhile")

// Rosters keeps the approval roster on a token.
type Rosters struct{ tok *hsm.Token }

// Rosters is the approval roster of this keyring's token.
func (kr *Keyring) Rosters() Rosters { return Rosters{kr.tok} }

// TokenRosters is Rosters for a token opened without a keyring.
func TokenRosters(tok *hsm.Token) Rosters { return Rosters{tok} }

// Load returns the current roster, or nil when none was set (dual
// control is off).
func (r Rosters) Load(ctx context.Context) (*approval.Roster, error) {
	b, n, ok, err := loadVersioned(ctx, r.tok, rosterPrefix)
	if err != nil || !ok {
		return nil, err
	}
	ro, err := approval.ParseRoster(b)
	if err != nil {
		return nil, fmt.Errorf("keyring: the approval roster on the token: %w", err)
	}
	if uint64(ro.Version) != n {
		return nil, fmt.Errorf("keyring: the approval roster on the token is unreadable (version %d under label %d)", ro.Version, n)
	}
	return ro, nil
}

// Save stores next, whose Version must be one more than the current
// roster's (1 for the first).
func (r Rosters) Save(ctx context.Context, next *approval.Roster) error {
	old, err := listVersioned(ctx, r.tok, rosterPrefix)
	if err != nil {
		return err
	}
	cur := uint64(0)
	if len(old) > 0 {
		cur = old[0].n
	}
	if uint64(next.Version) != cur+1 {
		return fmt.Errorf("%w (stored %d, this change makes %d)", ErrRosterChanged, cur, next.Version)
	}
	b, err := next.Marshal()
	if err != nil {
		return err
	}
	return putVersioned(ctx, r.tok, rosterPrefix, uint64(next.Version), b, old)
}
