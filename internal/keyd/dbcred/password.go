package dbcred

import (
	"context"
	"crypto/hmac"
	"crypto/pbkdf2"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"strings"
)

// Random is the source of passwords and salts: the HSM's generator.
type Random func(ctx context.Context, n int) ([]byte, error)

// passwordLength is a password's characters: 32 from 62 is 190 bits.
const passwordLength = 32

const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"

// newPassword draws a password of letters and digits (nothing a
// connection URL, a shell or SQL must escape) from rnd, by rejection so
// that every character is equally likely.
func newPassword(ctx context.Context, rnd Random) ([]byte, error) {
	out := make([]byte, 0, passwordLength)
	for len(out) < passwordLength {
		b, err := rnd(ctx, 2*passwordLength)
		if err != nil {
			return nil, err
		}
		for _, c := range b {
			if c < 248 && len(out) < passwordLength { // 248 = 4 * 62
				out = append(out, alphabet[c%62])
			}
		}
		clear(b)
	}
	return out, nil
}

// scramIterations is PostgreSQL's own default for SCRAM-SHA-256.
const scramIterations = 4096

// scramVerifier is the SCRAM-SHA-256 verifier of password (RFC 5802, in
// PostgreSQL's stored form), computed here so that the password itself
// never reaches the database server or its statement log: it is what
// psql's \password sends.
func scramVerifier(ctx context.Context, rnd Random, password []byte) (string, error) {
	salt, err := rnd(ctx, 16)
	if err != nil {
		return "", err
	}
	salted, err := pbkdf2.Key(sha256.New, string(password), salt, scramIterations, sha256.Size)
	if err != nil {
		return "", err
	}
	defer clear(salted)
	mac := func(msg string) []byte {
		h := hmac.New(sha256.New, salted)
		h.Write([]byte(msg))
		return h.Sum(nil)
	}
	client := mac("Client Key")
	stored := sha256.Sum256(client)
	clear(client)
	server := mac("Server Key")
	b64 := base64.StdEncoding.EncodeToString
	return fmt.Sprintf("SCRAM-SHA-256$%d:%s$%s:%s", scramIterations, b64(salt), b64(stored[:]), b64(server)), nil
}

// nativeHash is the mysql_native_password hash of password, as
// MariaDB's IDENTIFIED BY PASSWORD takes it: the password itself never
// reaches the server or its logs.
func nativeHash(password []byte) string {
	h1 := sha1.Sum(password)
	h2 := sha1.Sum(h1[:])
	clear(h1[:])
	return "*" + strings.ToUpper(hex.EncodeToString(h2[:]))
}
