package audit

import (
	"bytes"
	"context"
	"crypto/hmac"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/podkey/podkey/internal/keyd/store"
)

// An Anchor pins the chain outside the store: the HSM's audit key
// authenticates that the chain had reached record Seq, whose MAC was
// Head, at Time. keyd keeps the newest on the HSM token (Anchors), where
// whoever can rewrite the store cannot: a store whose chain ends before
// the anchor, or differs from it at Seq, was truncated or rewritten, and
// the chain's own MACs cannot show that (the shorter chain still
// verifies). keyd refuses to continue a chain shorter than its anchor;
// Verify reports it.
type Anchor struct {
	Seq  uint64    `json:"seq"`
	Head []byte    `json:"head"`
	Time time.Time `json:"time"`
	Gen  int       `json:"gen"` // the audit key generation of MAC
	MAC  []byte    `json:"mac"`
}

// Anchors keeps the newest anchor. Load returns ok=false when there is
// none (a chain never anchored: the first start, or a log from before
// anchors).
type Anchors interface {
	Load(ctx context.Context) (a Anchor, ok bool, err error)
	Save(ctx context.Context, a Anchor) error
}

// AnchorEvery is how often the writer anchors the chain, at most: records
// appended after the newest anchor can be cut off undetected, those before
// it cannot.
const AnchorEvery = 5 * time.Second

const anchorDomain = "podkey-audit-anchor-v1\n"

func (a Anchor) authenticated() []byte {
	b := []byte(anchorDomain)
	b = binary.BigEndian.AppendUint64(b, a.Seq)
	b = binary.BigEndian.AppendUint64(b, uint64(a.Time.UnixNano()))
	return append(b, a.Head...)
}

// NewAnchor authenticates the chain's tail under the current audit key.
func NewAnchor(ctx context.Context, keys Keys, seq uint64, head []byte, now time.Time) (Anchor, error) {
	a := Anchor{Seq: seq, Head: bytes.Clone(head), Time: now.UTC().Round(0), Gen: max(keys.Current(), 1)}
	m, err := keys.MAC(ctx, a.Gen, a.authenticated())
	if err != nil {
		return Anchor{}, fmt.Errorf("audit: anchor: %w", err)
	}
	a.MAC = m
	return a, nil
}

// Check verifies an anchor's MAC.
func (a Anchor) Check(ctx context.Context, keys Keys) error {
	m, err := keys.MAC(ctx, max(a.Gen, 1), a.authenticated())
	if err != nil {
		return err
	}
	if !hmac.Equal(m, a.MAC) {
		return errors.New("audit: the anchor's MAC does not match")
	}
	return nil
}

// MarshalAnchor and UnmarshalAnchor are an anchor's stored form.
func MarshalAnchor(a Anchor) ([]byte, error) { return json.Marshal(a) }

func UnmarshalAnchor(b []byte) (Anchor, error) {
	var a Anchor
	err := json.Unmarshal(b, &a)
	return a, err
}

// ErrTruncated refuses to continue a chain that ends before its anchor.
var ErrTruncated = errors.New("audit: the stored chain ends before its newest anchor: records were removed from the store")

// checkAnchor compares a chain's tail (seq, and the MAC of record
// anchor.Seq when the chain reaches it) with an anchor.
func checkAnchor(a Anchor, last uint64, macAt func(seq uint64) ([]byte, error)) error {
	if last < a.Seq {
		return fmt.Errorf("%w (the anchor of %s names record %d; the store ends at %d)", ErrTruncated, a.Time.Format(time.RFC3339), a.Seq, last)
	}
	if a.Seq == 0 {
		return nil
	}
	m, err := macAt(a.Seq)
	if err != nil {
		return err
	}
	if !bytes.Equal(m, a.Head) {
		return &TamperError{Seq: a.Seq, Reason: fmt.Sprintf("record differs from the anchor of %s", a.Time.Format(time.RFC3339))}
	}
	return nil
}

// TailAnchor anchors the chain stored in st at its newest record.
func TailAnchor(ctx context.Context, st interface {
	LastAudit(ctx context.Context) (store.AuditEntry, error)
}, keys Keys, now time.Time) (Anchor, error) {
	last, err := st.LastAudit(ctx)
	if err != nil {
		return Anchor{}, err
	}
	var head []byte
	if last.Seq > 0 {
		var r Record
		if err := json.Unmarshal(last.Data, &r); err != nil {
			return Anchor{}, fmt.Errorf("audit: tail record %d unreadable: %w", last.Seq, err)
		}
		head = r.MAC
	}
	return NewAnchor(ctx, keys, last.Seq, head, now)
}
