package audit_test

import (
	"encoding/binary"
	"testing"

	bolt "go.etcd.io/bbolt"

	"github.com/podkey/podkey/internal/keyd/store"
)

// rewriteAudit replaces the audit bucket's entries directly in the file.
func rewriteAudit(t *testing.T, path string, entries []store.AuditEntry) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	err = db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte("audit"))
		for _, e := range entries {
			k := make([]byte, 8)
			binary.BigEndian.PutUint64(k, e.Seq)
			if err := b.Put(k, e.Data); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
