package service

import (
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/podkey/podkey/internal/keyd/credential"
	"github.com/podkey/podkey/internal/keyd/store"
	keydv1 "github.com/podkey/podkey/pkg/api/keydv1"
	"github.com/podkey/podkey/pkg/object"
)

// keyd's own types on the wire: the credentials it issued and the secrets
// it holds (their facts, never their values). The converters of the
// public domain types are keydv1's (pkg/api/keydv1/convert.go).

// credentialProto is an issued credential on the wire, secret included:
// only Issue returns it, to the node that asked for the pod.
func credentialProto(c credential.Issued) *keydv1.Credential {
	out := &keydv1.Credential{
		Name: c.Name, Kind: string(c.Kind), Suite: string(c.Suite), Generation: int64(c.Generation),
		IssuedAt: timestamppb.New(c.IssuedAt), Expiry: timestamppb.New(c.Expiry), RenewAt: timestamppb.New(c.RenewAt),
	}
	switch c.Kind {
	case object.APIKey:
		out.Payload = &keydv1.Credential_ApiKey{ApiKey: &keydv1.APIKey{AccessKeyId: c.AccessKeyID, SecretKey: c.SecretKey}}
	case object.Certificate:
		out.Payload = &keydv1.Credential_Certificate{Certificate: &keydv1.Certificate{CertPem: c.CertPEM, CaBundlePem: c.CABundlePEM}}
	case object.TLCP:
		out.Payload = &keydv1.Credential_Tlcp{Tlcp: &keydv1.TLCPPair{CsrResponse: c.CSRResponse, CaBundlePem: c.CABundlePEM}}
	case object.DerivedKey:
		out.Payload = &keydv1.Credential_DerivedKey{DerivedKey: &keydv1.DerivedKey{Key: c.Key}}
	case object.Token:
		out.Payload = &keydv1.Credential_Token{Token: &keydv1.Token{Jwt: c.Token}}
	case object.Secret:
		out.Payload = &keydv1.Credential_Secret{Secret: &keydv1.SecretValue{Value: c.Value}}
	case object.Database:
		l := c.Login
		out.Payload = &keydv1.Credential_Database{Database: &keydv1.DatabaseLogin{Engine: l.Engine, User: l.User,
			Password: l.Password, Host: l.Host, Port: int32(l.Port), Database: l.Database, Params: l.Params}}
	}
	return out
}

// secretInfo is what keyd tells of an enrolled secret: never its value.
func secretInfo(r store.Secret) *keydv1.SecretInfo {
	return &keydv1.SecretInfo{Namespace: r.Namespace, Name: r.Name, Size: int32(r.Size),
		Version: int32(r.Version), Created: timestamppb.New(r.Created)}
}
