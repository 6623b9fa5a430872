// Package store is keyd's durable state: the policy document, enrolled
// secrets (only ever HSM-wrapped), pod revocations and the audit log. The
// Store interface is what keyd needs; Bolt is the embedded implementation
// (a bbolt file and the journal beside it), and a shared database serves
// several keyd replicas through the same interface.
package store

import (
	"context"
	"errors"
	"time"

	"github.com/podkey/podkey/pkg/pod"
)

// Errors callers test for with errors.Is.
var (
	ErrNotFound = errors.New("not found")
	ErrAuditSeq = errors.New("audit sequence conflict")
	// ErrChanged: a compare-and-swap found another value.
	ErrChanged = errors.New("changed meanwhile")
	ErrClosed  = errors.New("store closed")
)

// Secret is an enrolled static value as stored: the value is wrapped under
// the HSM key-encryption key with its namespace and name as associated data,
// so a blob moved to another name does not unwrap.
type Secret struct {
	Namespace string    `json:"namespace"`
	Name      string    `json:"name"`
	Wrapped   []byte    `json:"wrapped"`
	Size      int       `json:"size"`
	Created   time.Time `json:"created"`
	Version   int       `json:"version"`
}

// Revocation records that a pod's credentials issued before Revoked are
// refused, until Until (the latest expiry any of them could have).
// Credentials issued after it are not affected.
type Revocation struct {
	PodUID  string    `json:"podUID"`
	Until   time.Time `json:"until"`
	Revoked time.Time `json:"revoked"`
}

// Renewal is an operator's order of fresh credentials for a scope: one
// pod, a service account or a namespace. Credentials its pods obtained
// until At are refused from then on, as if revoked; nodes renew the pods'
// volumes. Seq orders renewals (1, 2, ...) for nodes that follow them;
// the record is kept until Until, when nothing issued before At can still
// be valid.
type Renewal struct {
	Seq uint64 `json:"seq"`
	pod.Scope
	At    time.Time `json:"at"`
	Until time.Time `json:"until"`
}

// AuditEntry is one opaque, already-chained audit record at position Seq
// (1-based, gapless).
type AuditEntry struct {
	Seq  uint64
	Data []byte
	// Bind, when set, is a pod binding written in the same transaction,
	// by BindPod's rule: the record and the binding are durable together.
	Bind *PodBinding
	// Nonce, when set, is a signed request's nonce written in the same
	// transaction: an accepted request is refused again, also after a
	// restart or by another replica, once its record is durable.
	Nonce *Nonce
}

// Nonce is an accepted signed request's nonce, keyed by the SHA-256 of
// what the request authenticated (the access key's payload) and the
// nonce, remembered until its date leaves the freshness window.
type Nonce struct {
	Key   [32]byte
	Until time.Time
}

// PodBinding is the node a pod obtained credentials through, until when.
type PodBinding struct {
	PodUID, Node string
	Until        time.Time
}

// Clock is implemented by a store shared by several replicas: its time
// is the one clock they all take cutoffs and issue times from.
type Clock interface {
	Clock(ctx context.Context) (time.Time, error)
}

// Store is keyd's state. Every write is durable when the call returns.
type Store interface {
	Policy(ctx context.Context) ([]byte, error) // ErrNotFound when none was set
	SetPolicy(ctx context.Context, doc []byte) error
	// UpdatePolicy replaces the policy with fn's answer to the current one
	// (nil when none was set) in one transaction: concurrent updates, from
	// this process or another, never lose one another's change. fn may run
	// more than once; an error from it leaves the policy as it was.
	UpdatePolicy(ctx context.Context, fn func(current []byte) ([]byte, error)) error

	PutSecret(ctx context.Context, s Secret) error
	Secret(ctx context.Context, namespace, name string) (Secret, error)
	Secrets(ctx context.Context, namespace string) ([]Secret, error) // "" lists all
	DeleteSecret(ctx context.Context, namespace, name string) error
	// RewrapSecret replaces a secret's wrapped value by newWrapped only
	// while it is still oldWrapped (the key-encryption key's rotation),
	// keeping its version and dates; ErrChanged when it was changed or
	// deleted meanwhile.
	RewrapSecret(ctx context.Context, namespace, name string, oldWrapped, newWrapped []byte) error

	Revoke(ctx context.Context, r Revocation) error
	// RevokedAt is the latest time up to which the pod's credentials are
	// refused (its own revocation, or a renewal of its pod, service
	// account or namespace), or zero when none is in force at now.
	RevokedAt(ctx context.Context, namespace, serviceAccount, podUID string, now time.Time) (time.Time, error)
	PruneRevocations(ctx context.Context, now time.Time) (int, error)

	// AddRenewal records a renewal with the next Seq, which it returns.
	AddRenewal(ctx context.Context, r Renewal) (Renewal, error)
	// Renewals lists the renewals in force at now whose Seq follows after.
	Renewals(ctx context.Context, after uint64, now time.Time) ([]Renewal, error)

	// PodNode reads which node obtained credentials for a pod, as an
	// AuditEntry's Bind recorded it ("" when unknown or past).
	PodNode(ctx context.Context, podUID string, now time.Time) (node string, until time.Time, err error)

	// ClaimNonce records a signed request's nonce unless one with its key
	// is remembered at now, in one atomic step: of two claims of one
	// nonce, in one process or in replicas sharing the store, exactly one
	// is granted. A granted claim is durable at once (PostgreSQL) or with
	// the audit record that carries it in AuditEntry.Nonce (bbolt, one
	// process), before the request is answered either way.
	ClaimNonce(ctx context.Context, n Nonce, now time.Time) (granted bool, err error)
	// NonceSeen reports whether a nonce was recorded and is still
	// remembered at now.
	NonceSeen(ctx context.Context, key [32]byte, now time.Time) (bool, error)
	// PruneNonces forgets nonces remembered until before now.
	PruneNonces(ctx context.Context, now time.Time) (int, error)

	// AppendAudit writes entries whose first Seq must follow the last stored
	// one; otherwise nothing is written and ErrAuditSeq is returned.
	AppendAudit(ctx context.Context, entries []AuditEntry) error
	// AppendAuditAfter calls seal with the newest entry (Seq 0 when the log
	// is empty) and stores the entries it returns, which must follow it,
	// in one transaction that no other writer's append interleaves with:
	// writers sharing the store (keyd replicas) chain onto the true tail.
	// An error from seal writes nothing and is returned.
	AppendAuditAfter(ctx context.Context, seal func(last AuditEntry) ([]AuditEntry, error)) error
	// LastAudit is the newest entry; Seq 0 when the log is empty.
	LastAudit(ctx context.Context) (AuditEntry, error)
	ScanAudit(ctx context.Context, from uint64, fn func(AuditEntry) error) error

	Leases

	Close() error
}
