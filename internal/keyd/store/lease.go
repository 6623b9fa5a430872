package store

import (
	"context"
	"errors"
	"time"
)

// ErrExists refuses a create whose key is taken.
var ErrExists = errors.New("already exists")

// Lease states.
const (
	// LeasePending: recorded, the login may not exist in the database
	// yet; whoever sees it makes sure it does (idempotently) before
	// handing the credentials out.
	LeasePending = "pending"
	// LeaseActive: the login exists with the lease's password.
	LeaseActive = "active"
	// LeaseRevoking: the pod is gone; the login is dropped at RevokeAt
	// (and retried until the database has done it).
	LeaseRevoking = "revoking"
)

// Lease is a database login keyd created for one pod's database object:
// one per pod UID and object, so that every publish of the pod gets the
// same credentials. The password is kept wrapped under the HSM KEK; the
// login is dropped, and the lease deleted, when the pod goes or the
// login's validity passes without a renewal.
type Lease struct {
	Key            string    `json:"key"` // LeaseKey(PodUID, Object)
	Object         string    `json:"object"`
	Connection     string    `json:"connection"`
	Namespace      string    `json:"namespace"`
	ServiceAccount string    `json:"serviceAccount"`
	Pod            string    `json:"pod"`
	PodUID         string    `json:"podUID"`
	Role           string    `json:"role"`              // the login's name in the database
	Wrapped        []byte    `json:"wrapped,omitempty"` // the password; never in listings
	State          string    `json:"state"`
	Created        time.Time `json:"created"`
	PasswordAt     time.Time `json:"passwordAt"` // when the current password was set
	Expiry         time.Time `json:"expiry"`     // the login's validity, as renewed
	RevokeAt       time.Time `json:"revokeAt,omitzero"`
	Attempts       int       `json:"attempts,omitempty"` // failed revocations so far
	Version        int       `json:"version"`
}

// LeaseKey is the key of a pod's lease for one object.
func LeaseKey(podUID, object string) string { return podUID + "/" + object }

// Leases is the part of Store that keeps database leases.
type Leases interface {
	// CreateLease stores l (Version 1) unless a lease with its key
	// exists: ErrExists, of two creates exactly one wins, in one process
	// or across replicas.
	CreateLease(ctx context.Context, l Lease) error
	// Lease reads one lease, its wrapped password included; ErrNotFound.
	Lease(ctx context.Context, key string) (Lease, error)
	// ListLeases lists the leases of one pod ("" lists all), without
	// their wrapped passwords.
	ListLeases(ctx context.Context, podUID string) ([]Lease, error)
	// UpdateLease replaces the lease whose stored Version is l.Version by
	// l with Version+1, which it returns; ErrChanged when another update
	// came first, ErrNotFound when it was deleted.
	UpdateLease(ctx context.Context, l Lease) (Lease, error)
	// DeleteLease deletes the lease if its stored Version is version;
	// ErrChanged otherwise, ErrNotFound when it is gone.
	DeleteLease(ctx context.Context, key string, version int) error
}
