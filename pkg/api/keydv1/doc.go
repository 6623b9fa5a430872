// Package keydv1 is keyd's gRPC API, version 1: the Keyd service (Issue,
// Verify, Revoke, node certificates, image keys, token keys) and the Admin
// service of the local socket, generated from keyd.proto, with the
// converters between its messages and pkg's domain types (convert.go).
package keydv1
