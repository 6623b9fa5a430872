package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
)

func (p *Postgres) CreateLease(ctx context.Context, l Lease) error {
	ctx, cancel := context.WithTimeout(ctx, CallTimeout)
	defer cancel()
	l.Version = 1
	doc, err := json.Marshal(l)
	if err != nil {
		return err
	}
	tag, err := p.pool.Exec(ctx, `INSERT INTO leases (key, pod_uid, doc, version) VALUES ($1, $2, $3, 1) ON CONFLICT (key) DO NOTHING`,
		l.Key, l.PodUID, doc)
	if err != nil {
		return pgErr(err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("lease %s: %w", l.Key, ErrExists)
	}
	return nil
}

func (p *Postgres) Lease(ctx context.Context, key string) (Lease, error) {
	ctx, cancel := context.WithTimeout(ctx, CallTimeout)
	defer cancel()
	var doc []byte
	var version int
	err := p.pool.QueryRow(ctx, `SELECT doc, version FROM leases WHERE key = $1`, key).Scan(&doc, &version)
	if errors.Is(err, pgx.ErrNoRows) {
		return Lease{}, fmt.Errorf("lease %s: %w", key, ErrNotFound)
	}
	if err != nil {
		return Lease{}, pgErr(err)
	}
	var l Lease
	if err := json.Unmarshal(doc, &l); err != nil {
		return Lease{}, fmt.Errorf("lease %s: %w", key, err)
	}
	l.Version = version
	return l, nil
}

func (p *Postgres) ListLeases(ctx context.Context, podUID string) ([]Lease, error) {
	ctx, cancel := context.WithTimeout(ctx, CallTimeout)
	defer cancel()
	rows, err := p.pool.Query(ctx, `SELECT doc, version FROM leases WHERE $1 = '' OR pod_uid = $1 ORDER BY key`, podUID)
	if err != nil {
		return nil, pgErr(err)
	}
	defer rows.Close()
	var out []Lease
	for rows.Next() {
		var doc []byte
		var l Lease
		if err := rows.Scan(&doc, &l.Version); err != nil {
			return nil, pgErr(err)
		}
		v := l.Version
		if err := json.Unmarshal(doc, &l); err != nil {
			return nil, err
		}
		l.Version, l.Wrapped = v, nil
		out = append(out, l)
	}
	return out, pgErr(rows.Err())
}

func (p *Postgres) UpdateLease(ctx context.Context, l Lease) (Lease, error) {
	ctx, cancel := context.WithTimeout(ctx, CallTimeout)
	defer cancel()
	read := l.Version
	l.Version++
	doc, err := json.Marshal(l)
	if err != nil {
		return Lease{}, err
	}
	tag, err := p.pool.Exec(ctx, `UPDATE leases SET doc = $3, version = version + 1 WHERE key = $1 AND version = $2`, l.Key, read, doc)
	if err != nil {
		return Lease{}, pgErr(err)
	}
	if tag.RowsAffected() == 1 {
		return l, nil
	}
	return Lease{}, p.leaseMiss(ctx, l.Key)
}

func (p *Postgres) DeleteLease(ctx context.Context, key string, version int) error {
	ctx, cancel := context.WithTimeout(ctx, CallTimeout)
	defer cancel()
	tag, err := p.pool.Exec(ctx, `DELETE FROM leases WHERE key = $1 AND version = $2`, key, version)
	if err != nil {
		return pgErr(err)
	}
	if tag.RowsAffected() == 1 {
		return nil
	}
	return p.leaseMiss(ctx, key)
}

// leaseMiss says why a compare-and-swap on a lease matched no row.
func (p *Postgres) leaseMiss(ctx context.Context, key string) error {
	var one int
	err := p.pool.QueryRow(ctx, `SELECT 1 FROM leases WHERE key = $1`, key).Scan(&one)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return fmt.Errorf("lease %s: %w", key, ErrNotFound)
	case err != nil:
		return pgErr(err)
	}
	return fmt.Errorf("lease %s: %w", key, ErrChanged)
}
