package store

import (
	"context"
	"encoding/json"
	"fmt"

	bolt "go.etcd.io/bbolt"
)

var bucketLeases = []byte("leases")

func (b *Bolt) CreateLease(_ context.Context, l Lease) error {
	l.Version = 1
	v, err := json.Marshal(l)
	if err != nil {
		return err
	}
	return b.db.Update(func(tx *bolt.Tx) error {
		bk := tx.Bucket(bucketLeases)
		if bk.Get([]byte(l.Key)) != nil {
			return fmt.Errorf("lease %s: %w", l.Key, ErrExists)
		}
		return bk.Put([]byte(l.Key), v)
	})
}

func (b *Bolt) Lease(_ context.Context, key string) (Lease, error) {
	var l Lease
	err := b.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketLeases).Get([]byte(key))
		if v == nil {
			return fmt.Errorf("lease %s: %w", key, ErrNotFound)
		}
		return json.Unmarshal(v, &l)
	})
	return l, err
}

func (b *Bolt) ListLeases(_ context.Context, podUID string) ([]Lease, error) {
	var out []Lease
	err := b.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketLeases).Cursor()
		prefix := []byte{}
		if podUID != "" {
			prefix = []byte(podUID + "/")
		}
		for k, v := c.Seek(prefix); k != nil && hasPrefix(k, prefix); k, v = c.Next() {
			var l Lease
			if err := json.Unmarshal(v, &l); err != nil {
				return err
			}
			l.Wrapped = nil
			out = append(out, l)
		}
		return nil
	})
	return out, err
}

func (b *Bolt) UpdateLease(_ context.Context, l Lease) (Lease, error) {
	err := b.db.Update(func(tx *bolt.Tx) error {
		bk := tx.Bucket(bucketLeases)
		v := bk.Get([]byte(l.Key))
		if v == nil {
			return fmt.Errorf("lease %s: %w", l.Key, ErrNotFound)
		}
		var cur Lease
		if err := json.Unmarshal(v, &cur); err != nil {
			return err
		}
		if cur.Version != l.Version {
			return fmt.Errorf("lease %s: %w", l.Key, ErrChanged)
		}
		l.Version++
		nv, err := json.Marshal(l)
		if err != nil {
			return err
		}
		return bk.Put([]byte(l.Key), nv)
	})
	return l, err
}

func (b *Bolt) DeleteLease(_ context.Context, key string, version int) error {
	return b.db.Update(func(tx *bolt.Tx) error {
		bk := tx.Bucket(bucketLeases)
		v := bk.Get([]byte(key))
		if v == nil {
			return fmt.Errorf("lease %s: %w", key, ErrNotFound)
		}
		var cur Lease
		if err := json.Unmarshal(v, &cur); err != nil {
			return err
		}
		if cur.Version != version {
			return fmt.Errorf("lease %s: %w", key, ErrChanged)
		}
		return bk.Delete([]byte(key))
	})
}
