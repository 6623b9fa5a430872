package keyring

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"

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

type anchorObject struct {
	label string
	seq   uint64
}

// objects lists the anchor objects, newest (highest position) first.
func (t tokenAnchors) objects(ctx context.Context) ([]anchorObject, error) {
	objs, err := t.tok.List(ctx, anchorPrefix)
	if err != nil {
		return nil, err
	}
	var out []anchorObject
	for _, o := range objs {
		if o.Class != hsm.Data {
			continue
		}
		seqText, _, _ := strings.Cut(strings.TrimPrefix(o.Label, anchorPrefix), "-")
		if seq, err := strconv.ParseUint(seqText, 10, 64); err == nil {
			out = append(out, anchorObject{o.Label, seq})
		}
	}
	for i := range out { // few: a simple sort, highest first
		for j := i + 1; j < len(out); j++ {
			if out[j].seq > out[i].seq {
				out[i], out[j] = out[j], out[i]
			}
		}
	}
	return out, nil
}

func (t tokenAnchors) Load(ctx context.Context) (audit.Anchor, bool, error) {
	objs, err := t.objects(ctx)
	if err != nil {
		return audit.Anchor{}, false, err
	}
	for _, o := range objs {
		b, err := t.tok.GetData(ctx, o.label)
		if errors.Is(err, hsm.ErrObjectNotFound) {
			continue // destroyed by another writer meanwhile
		}
		if err != nil {
			return audit.Anchor{}, false, err
		}
		a, err := audit.UnmarshalAnchor(b)
		if err != nil || a.Seq != o.seq {
			return audit.Anchor{}, false, fmt.Errorf("keyring: audit anchor %s is unreadable", o.label)
		}
		return a, true, nil
	}
	return audit.Anchor{}, false, nil
}

// Save keeps a unless a newer anchor is stored.
func (t tokenAnchors) Save(ctx context.Context, a audit.Anchor) error {
	objs, err := t.objects(ctx)
	if err != nil {
		return err
	}
	if len(objs) > 0 && objs[0].seq >= a.Seq {
		return nil
	}
	return t.put(ctx, a, objs)
}

// put writes a under a label of its own, then destroys the anchors in old
// of lower positions.
func (t tokenAnchors) put(ctx context.Context, a audit.Anchor, old []anchorObject) error {
	b, err := audit.MarshalAnchor(a)
	if err != nil {
		return err
	}
	nonce := make([]byte, 6)
	_, _ = rand.Read(nonce)
	if err := t.tok.PutData(ctx, fmt.Sprintf("%s%d-%s", anchorPrefix, a.Seq, hex.EncodeToString(nonce)), b, true); err != nil {
		return err
	}
	for _, o := range old {
		if o.seq < a.Seq {
			if err := t.tok.Destroy(ctx, hsm.Data, o.label); err != nil && !errors.Is(err, hsm.ErrObjectNotFound) {
				return err
			}
		}
	}
	return nil
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
