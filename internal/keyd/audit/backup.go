package audit

import (
	"context"
	"crypto/hmac"
	"encoding/binary"
	"errors"
)

// A backup of keyd's store is authenticated as a whole by the HSM's audit
// key when keyd writes it: the tag covers the copy's SHA-256, its size and
// its last audit record, so a backup edited afterwards (a rule added, a
// revocation deleted) is refused before a restore replaces anything, even
// where its audit chain still verifies.

const backupDomain = "podkey-store-backup-v1\n"

func backupInput(sum [32]byte, size int64, lastSeq uint64) []byte {
	b := append([]byte(backupDomain), sum[:]...)
	b = binary.BigEndian.AppendUint64(b, uint64(size))
	return binary.BigEndian.AppendUint64(b, lastSeq)
}

// BackupTag authenticates a backup under the current audit key generation.
func BackupTag(ctx context.Context, keys Keys, sum [32]byte, size int64, lastSeq uint64) (tag []byte, gen int, err error) {
	gen = max(keys.Current(), 1)
	tag, err = keys.MAC(ctx, gen, backupInput(sum, size, lastSeq))
	return tag, gen, err
}

// ErrBackupTag refuses a backup whose tag does not authenticate it.
var ErrBackupTag = errors.New("the backup is not the copy keyd wrote: its HSM tag does not match (edited, truncated, or another keyd's)")

// CheckBackupTag verifies a backup's tag.
func CheckBackupTag(ctx context.Context, keys Keys, sum [32]byte, size int64, lastSeq uint64, gen int, tag []byte) error {
	m, err := keys.MAC(ctx, max(gen, 1), backupInput(sum, size, lastSeq))
	if err != nil {
		return err
	}
	if !hmac.Equal(m, tag) {
		return ErrBackupTag
	}
	return nil
}
