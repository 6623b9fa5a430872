package audit

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"hash"
	"time"

	"github.com/emmansun/gmsm/sm2"
	"github.com/emmansun/gmsm/sm3"

	"github.com/podkey/podkey/internal/keyd/store"
)

// Checkpoints make the chain verifiable by anyone, offline, without the
// HSM's audit MAC key: a content hash runs over every record as stored
// (h0 = H(domain), hN = H(hN-1 || len || record N)), and at intervals keyd
// appends a checkpoint record that signs (Seq, hSeq, time, its identity)
// with an HSM-held signing key. Editing, removing or reordering a record
// covered by a checkpoint changes every later hash, and with it the
// signed value; a truncation after the newest checkpoint is what the
// token's anchor and the exported checkpoint files show.
//
// The hash is SM3 and the signature SM2 (default user id) with AlgSM3;
// SHA-256 and ECDSA P-256 with AlgSHA256.
const (
	CheckpointSM3    = "SM3-SM2"
	CheckpointSHA256 = "SHA256-ECDSA"
)

// ActionCheckpoint is a checkpoint record's action.
const ActionCheckpoint = "audit.checkpoint"

// Checkpoint is what a checkpoint record signs: records 1..Seq hash to Hash.
type Checkpoint struct {
	Seq  uint64    `json:"seq"`
	Hash string    `json:"hash"` // hex
	Alg  string    `json:"alg"`  // CheckpointSM3 or CheckpointSHA256
	Time time.Time `json:"time"` // keyd's clock (the shared store's with PostgreSQL)
	Keyd string    `json:"keyd"` // the replica that wrote it
	// KeyID names the HSM signing key (the token-signing key of the
	// suite, under this separate domain); PublicKey is its PEM.
	KeyID     string `json:"kid"`
	PublicKey string `json:"publicKey"`
	Sig       []byte `json:"sig,omitempty"` // ASN.1 DER
}

const (
	checkpointDomain = "podkey-audit-checkpoint-v1\n"
	hashDomain       = "podkey-audit-hash-v1"
)

// SigningInput is the domain tag and the checkpoint's JSON without Sig.
func (c Checkpoint) SigningInput() []byte {
	c.Sig = nil
	b, _ := json.Marshal(c)
	return append([]byte(checkpointDomain), b...)
}

// Sign signs c with key (SM2 for CheckpointSM3, ECDSA P-256 otherwise).
func (c *Checkpoint) Sign(key crypto.Signer) error {
	in := c.SigningInput()
	var err error
	if c.Alg == CheckpointSM3 {
		c.Sig, err = key.Sign(rand.Reader, in, sm2.DefaultSM2SignerOpts)
	} else {
		d := sha256.Sum256(in)
		c.Sig, err = key.Sign(rand.Reader, d[:], crypto.SHA256)
	}
	return err
}

// VerifySig checks c's signature with pub.
func (c Checkpoint) VerifySig(pub *ecdsa.PublicKey) bool {
	in := c.SigningInput()
	if c.Alg == CheckpointSM3 {
		return sm2.VerifyASN1WithSM2(pub, nil, in, c.Sig)
	}
	d := sha256.Sum256(in)
	return ecdsa.VerifyASN1(pub, d[:], c.Sig)
}

// ContentHash is the running hash over records as stored.
type ContentHash struct {
	alg string
	Seq uint64
	Sum []byte
}

func newHash(alg string) hash.Hash {
	if alg == CheckpointSM3 {
		return sm3.New()
	}
	return sha256.New()
}

// NewContentHash starts the hash before record 1.
func NewContentHash(alg string) *ContentHash {
	h := newHash(alg)
	h.Write([]byte(hashDomain))
	return &ContentHash{alg: alg, Sum: h.Sum(nil)}
}

// ResumeContentHash continues from a checkpoint.
func ResumeContentHash(c Checkpoint) (*ContentHash, error) {
	sum, err := hex.DecodeString(c.Hash)
	if err != nil {
		return nil, err
	}
	return &ContentHash{alg: c.Alg, Seq: c.Seq, Sum: sum}, nil
}

// Add extends the hash with record seq, which must be the next.
func (c *ContentHash) Add(seq uint64, data []byte) error {
	if seq != c.Seq+1 {
		return fmt.Errorf("audit: content hash at %d, given record %d", c.Seq, seq)
	}
	h := newHash(c.alg)
	h.Write(c.Sum)
	h.Write(binary.BigEndian.AppendUint64(nil, uint64(len(data))))
	h.Write(data)
	c.Sum, c.Seq = h.Sum(nil), seq
	return nil
}

// Hex is the current hash in hex.
func (c *ContentHash) Hex() string { return hex.EncodeToString(c.Sum) }

// CatchUp extends c with the records the store holds after it.
func (c *ContentHash) CatchUp(ctx context.Context, st Scanner) error {
	return st.ScanAudit(ctx, c.Seq+1, func(e store.AuditEntry) error { return c.Add(e.Seq, e.Data) })
}

// Scanner reads a chain in order (a store.Store does).
type Scanner interface {
	ScanAudit(ctx context.Context, from uint64, fn func(store.AuditEntry) error) error
}

// CheckpointKey finds a checkpoint's signing key by id: the public key
// the verifier trusts for it (not the one the record carries).
type CheckpointKey func(kid string) (*ecdsa.PublicKey, bool)

// VerifyCheckpoints recomputes the content hash over the stored chain
// and checks every checkpoint record: its hash is the chain's at its Seq,
// its signature verifies with the key trust gives for its kid, and the
// key it names is that key. It returns the checkpoints checked, the
// newest checkpoint's Seq, and a *TamperError at the first record that
// fails.
func VerifyCheckpoints(ctx context.Context, st Scanner, trust CheckpointKey) (n int, newest uint64, err error) {
	hashes := map[string]*ContentHash{}
	recent := map[string]*window{}
	for _, alg := range []string{CheckpointSM3, CheckpointSHA256} {
		hashes[alg] = NewContentHash(alg)
		recent[alg] = &window{sums: [][]byte{hashes[alg].Sum}}
	}
	err = st.ScanAudit(ctx, 1, func(e store.AuditEntry) error {
		var r Record
		if json.Unmarshal(e.Data, &r) == nil && r.Action == ActionCheckpoint && r.Checkpoint != nil {
			c := *r.Checkpoint
			w := recent[c.Alg]
			if w == nil {
				return &TamperError{Seq: e.Seq, Reason: fmt.Sprintf("checkpoint of unknown algorithm %q", c.Alg)}
			}
			want, ok := w.at(c.Seq)
			switch {
			case !ok || c.Seq >= e.Seq:
				return &TamperError{Seq: e.Seq, Reason: fmt.Sprintf("checkpoint of record %d: not a position before it that this chain can check", c.Seq)}
			case hex.EncodeToString(want) != c.Hash:
				return &TamperError{Seq: c.Seq, Reason: fmt.Sprintf("records up to %d differ from what the checkpoint at record %d signed", c.Seq, e.Seq)}
			}
			pub, known := trust(c.KeyID)
			if !known {
				return &TamperError{Seq: e.Seq, Reason: fmt.Sprintf("checkpoint signed by an unknown key %s", c.KeyID)}
			}
			if !c.VerifySig(pub) {
				return &TamperError{Seq: e.Seq, Reason: "checkpoint signature does not verify"}
			}
			n++
			newest = max(newest, c.Seq)
		}
		for alg, h := range hashes {
			if err := h.Add(e.Seq, e.Data); err != nil {
				return err
			}
			recent[alg].push(h.Sum)
		}
		return nil
	})
	return n, newest, err
}

// window keeps the content hashes of the latest positions: a checkpoint
// names a position at most checkpointWindow records before its own.
type window struct {
	base uint64 // position of sums[0]
	sums [][]byte
}

const checkpointWindow = 1 << 16

func (w *window) push(sum []byte) {
	w.sums = append(w.sums, sum)
	if len(w.sums) > 2*checkpointWindow {
		w.sums = append([][]byte(nil), w.sums[checkpointWindow:]...)
		w.base += checkpointWindow
	}
}

func (w *window) at(seq uint64) ([]byte, bool) {
	if seq < w.base || seq-w.base >= uint64(len(w.sums)) {
		return nil, false
	}
	return w.sums[seq-w.base], true
}
