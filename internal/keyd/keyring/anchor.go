package keyring

import (
	"context"
	"errors"
	"fmt"

	"github.com/podkey/podkey/internal/keyd/audit"
	"github.com/podkey/podkey/internal/keyd/hsm"
)

// The audit chain's anchor lives on the token, outside the store, as data
// objects labelled podkey-audit-anchor/<seq>-<random>: a writer creates
// its anchor under a label of its own, then destroys those of lower
// positions. Replicas sharing the token may write at once: no label is
// ever written twice, the longest chain's anchor is never destroyed, and
// a crash between the two steps leaves the newest anchor in place. The
// labels are outside the root keys' prefix, which the KEK rotation walks.
const anchorPrefix = "podkey-audit-anchor/"

type tokenAnchors struct{ tok *hsm.Token }

// AuditAnchors keeps the audit chain's newest anchor on this keyring's
// token.
func (kr *Keyring) AuditAnchors() audit.Anchors { return tokenAnchors{kr.tok} }

// TokenAuditAnchors is AuditAnchors for a token opened without a keyring
// (podkey audit verify, store restore).
func TokenAuditAnchors(tok *hsm.Token) audit.Anchors { return tokenAnchors{tok} }

// objects lists the anchor objects, newest (highest position) first.
func (t tokenAnchors) objects(ctx context.Context) ([]versioned, error) {
	return listVersioned(ctx, t.tok, anchorPrefix)
}

func (t tokenAnchors) Load(ctx context.Context) (audit.Anchor, bool, error) {
	b, n, ok, err := loadVersioned(ctx, t.tok, anchorPrefix)
	if err != nil || !ok {
		return audit.Anchor{}, false, err
	}
	a, err := audit.UnmarshalAnchor(b)
	if err != nil || a.Seq != n {
		return audit.Anchor{}, false, fmt.Errorf("keyring: audit anchor %d is unreadable", n)
	}
	return a, true, nil
}

// Save keeps a unless a newer anchor is stored.
func (t tokenAnchors) Save(ctx context.Context, a audit.Anchor) error {
	objs, err := t.objects(ctx)
	if err != nil {
		return err
	}
	if len(objs) > 0 && objs[0].n >= a.Seq {
		return nil
	}
	return t.put(ctx, a, objs)
}

// put writes a under a label of its own, then destroys the anchors in old
// of lower positions.
func (t tokenAnchors) put(ctx context.Context, a audit.Anchor, old []versioned) error {
	b, err := audit.MarshalAnchor(a)
	if err != nil {
		return err
	}
	return putVersioned(ctx, t.tok, anchorPrefix, a.Seq, b, old)
}

// ResetAuditAnchor replaces every anchor with a, older or not: what a
// restore of a backup does, the one legitimate shortening of the chain,
// which needs the HSM.
func ResetAuditAnchor(ctx context.Context, tok *hsm.Token, a audit.Anchor) error {
	t := tokenAnchors{tok}
	objs, err := t.objects(ctx)
	if err != nil {
		return err
	}
	if err := t.put(ctx, a, nil); err != nil {
		return err
	}
	for _, o := range objs {
		if err := tok.Destroy(ctx, hsm.Data, o.label); err != nil && !errors.Is(err, hsm.ErrObjectNotFound) {
			return err
		}
	}
	return nil
}
