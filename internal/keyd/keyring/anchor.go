package keyring

import (
	"context"
	"errors"

	"github.com/podkey/podkey/internal/keyd/audit"
	"github.com/podkey/podkey/internal/keyd/hsm"
)

// The audit chain's anchor lives on the token, outside the store: two
// data objects written in turn, so that a crash while one is replaced
// leaves the other. Their labels are outside the root keys' prefix, which
// the KEK rotation walks.
var anchorLabels = [2]string{"podkey-audit-anchor/a", "podkey-audit-anchor/b"}

type tokenAnchors struct{ tok *hsm.Token }

// AuditAnchors keeps the audit chain's newest anchor on this keyring's
// token.
func (kr *Keyring) AuditAnchors() audit.Anchors { return tokenAnchors{kr.tok} }

// TokenAuditAnchors is AuditAnchors for a token opened without a keyring
// (podkey audit verify, store restore).
func TokenAuditAnchors(tok *hsm.Token) audit.Anchors { return tokenAnchors{tok} }

// slots reads both objects: the newest anchor, and the label to write
// next (an empty or unreadable slot, else the older one).
func (t tokenAnchors) slots(ctx context.Context) (newest audit.Anchor, ok bool, next string, err error) {
	var got [2]audit.Anchor
	var have [2]bool
	for i, l := range anchorLabels {
		b, err := t.tok.GetData(ctx, l)
		switch {
		case errors.Is(err, hsm.ErrObjectNotFound):
			continue
		case err != nil:
			return audit.Anchor{}, false, "", err
		}
		if a, err := audit.UnmarshalAnchor(b); err == nil {
			got[i], have[i] = a, true
		}
	}
	switch {
	case !have[0] && !have[1]:
		return audit.Anchor{}, false, anchorLabels[0], nil
	case !have[1]:
		return got[0], true, anchorLabels[1], nil
	case !have[0]:
		return got[1], true, anchorLabels[0], nil
	case got[0].Seq >= got[1].Seq:
		return got[0], true, anchorLabels[1], nil
	default:
		return got[1], true, anchorLabels[0], nil
	}
}

func (t tokenAnchors) Load(ctx context.Context) (audit.Anchor, bool, error) {
	a, ok, _, err := t.slots(ctx)
	return a, ok, err
}

// Save keeps a only when it is newer than the newest stored (replicas
// sharing the token anchor concurrently: the longest chain wins).
func (t tokenAnchors) Save(ctx context.Context, a audit.Anchor) error {
	cur, ok, next, err := t.slots(ctx)
	if err != nil {
		return err
	}
	if ok && cur.Seq >= a.Seq {
		return nil
	}
	b, err := audit.MarshalAnchor(a)
	if err != nil {
		return err
	}
	if err := t.tok.Destroy(ctx, hsm.Data, next); err != nil && !errors.Is(err, hsm.ErrObjectNotFound) {
		return err
	}
	return t.tok.PutData(ctx, next, b, true)
}

// ResetAuditAnchor replaces the audit chain's anchor with a, older or
// not: what a restore of a backup does, the one legitimate shortening of
// the chain, which needs the HSM.
func ResetAuditAnchor(ctx context.Context, tok *hsm.Token, a audit.Anchor) error {
	for _, l := range anchorLabels {
		if err := tok.Destroy(ctx, hsm.Data, l); err != nil && !errors.Is(err, hsm.ErrObjectNotFound) {
			return err
		}
	}
	b, err := audit.MarshalAnchor(a)
	if err != nil {
		return err
	}
	return tok.PutData(ctx, anchorLabels[0], b, true)
}
