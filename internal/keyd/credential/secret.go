package credential

import (
	"context"
	"fmt"

	"github.com/podkey/podkey/internal/keyd/keyring"
	"github.com/podkey/podkey/internal/keyd/store"
	"github.com/podkey/podkey/pkg/object"
)

// MaxSecretSize bounds an enrolled value.
const MaxSecretSize = object.MaxSecretSize

// Enroll wraps a static value under the HSM key-encryption key and stores
// it; only the wrapped form is ever written. Re-enrolling bumps the version.
func (is *Issuer) Enroll(ctx context.Context, namespace, name string, value []byte) (store.Secret, error) {
	if !object.ValidName(namespace) {
		return store.Secret{}, fmt.Errorf("%w: namespace %q is invalid", ErrInvalid, namespace)
	}
	if !object.ValidName(name) {
		return store.Secret{}, fmt.Errorf("%w: secret name %q is invalid", ErrInvalid, name)
	}
	if len(value) == 0 {
		return store.Secret{}, fmt.Errorf("%w: the value is empty", ErrInvalid)
	}
	if len(value) > MaxSecretSize {
		return store.Secret{}, fmt.Errorf("%w: the value is %d bytes, at most %d", ErrInvalid, len(value), MaxSecretSize)
	}
	version := 1
	if old, err := is.st.Secret(ctx, namespace, name); err == nil {
		version = old.Version + 1
	}
	wrapped, err := is.kr.Wrap(ctx, value, keyring.SecretAAD(namespace, name))
	if err != nil {
		return store.Secret{}, err
	}
	rec := store.Secret{Namespace: namespace, Name: name, Wrapped: wrapped, Size: len(value),
		Created: is.opts.Now().UTC(), Version: version}
	if err := is.st.PutSecret(ctx, rec); err != nil {
		return store.Secret{}, err
	}
	rec.Wrapped = nil
	return rec, nil
}
