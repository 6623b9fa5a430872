package keyring

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/podkey/podkey/internal/keyd/hsm"
)

// Small documents kept on the token outside the store (the audit anchor,
// the approval roster) are data objects labelled <prefix><n>-<random>,
// n their version: a writer creates the new version under a label of its
// own, then destroys lower versions. Replicas sharing the token may write
// at once: no label is ever written twice, the highest version is never
// destroyed, and a crash between the two steps leaves it in place.
type versioned struct {
	label string
	n     uint64
}

// listVersioned lists prefix's objects, highest version first.
func listVersioned(ctx context.Context, tok *hsm.Token, prefix string) ([]versioned, error) {
	objs, err := tok.List(ctx, prefix)
	if err != nil {
		return nil, err
	}
	var out []versioned
	for _, o := range objs {
		if o.Class != hsm.Data {
			continue
		}
		nText, _, _ := strings.Cut(strings.TrimPrefix(o.Label, prefix), "-")
		if n, err := strconv.ParseUint(nText, 10, 64); err == nil {
			out = append(out, versioned{o.Label, n})
		}
	}
	slices.SortFunc(out, func(a, b versioned) int { return -cmpUint(a.n, b.n) })
	return out, nil
}

func cmpUint(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// loadVersioned returns the highest version's data (ok=false: none).
func loadVersioned(ctx context.Context, tok *hsm.Token, prefix string) (data []byte, n uint64, ok bool, err error) {
	objs, err := listVersioned(ctx, tok, prefix)
	if err != nil {
		return nil, 0, false, err
	}
	for _, o := range objs {
		b, err := tok.GetData(ctx, o.label)
		if errors.Is(err, hsm.ErrObjectNotFound) {
			continue // destroyed by another writer meanwhile
		}
		if err != nil {
			return nil, 0, false, err
		}
		return b, o.n, true, nil
	}
	return nil, 0, false, nil
}

// putVersioned writes data as version n under a label of its own, then
// destroys the objects in old of lower versions.
func putVersioned(ctx context.Context, tok *hsm.Token, prefix string, n uint64, data []byte, old []versioned) error {
	nonce := make([]byte, 6)
	_, _ = rand.Read(nonce)
	if err := tok.PutData(ctx, fmt.Sprintf("%s%d-%s", prefix, n, hex.EncodeToString(nonce)), data, true); err != nil {
		return err
	}
	for _, o := range old {
		if o.n < n {
			if err := tok.Destroy(ctx, hsm.Data, o.label); err != nil && !errors.Is(err, hsm.ErrObjectNotFound) {
				return err
			}
		}
	}
	return nil
}
