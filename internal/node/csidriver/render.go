package csidriver

import (
	"bytes"
	"crypto"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"os"
	"time"

	"github.com/podkey/podkey/pkg/keydclient"
	"github.com/podkey/podkey/pkg/pod"
	"github.com/podkey/podkey/pkg/podfiles"

	"github.com/emmansun/gmsm/smx509"

	"github.com/podkey/podkey/internal/node/volume"
	keydv1 "github.com/podkey/podkey/pkg/api/keydv1"
	"github.com/podkey/podkey/pkg/object"
)

// APIKeyFile and Metadata are the formats of package podfiles.
type (
	APIKeyFile = podfiles.APIKeyFile
	Metadata   = podfiles.Metadata
)

// render turns keyd's credentials into the volume's files. keys holds the
// private keys generated here for certificate objects. Secret bytes are
// copied into the payload only; the caller zeroes the payload after writing.
func render(specs []object.Spec, creds []*keydv1.Credential, keys map[string]crypto.Signer) (map[string]volume.File, []podfiles.Object, error) {
	if len(creds) != len(specs) {
		return nil, nil, fmt.Errorf("keyd returned %d credentials for %d objects", len(creds), len(specs))
	}
	files := map[string]volume.File{}
	var owner *volume.Owner // the current object's
	add := func(name string, data []byte, mode os.FileMode) error {
		if _, dup := files[name]; dup || name == volume.MetadataFile {
			return invalid("file name %q is used twice in the SecretProviderClass (certificate objects also write %s%s and %s%s)",
				name, "<file>", podfiles.CertKeySuffix, "<file>", podfiles.CASuffix)
		}
		if err := volume.ValidateName(name); err != nil {
			return invalid("%v", err)
		}
		files[name] = volume.File{Data: data, Mode: mode, Owner: owner}
		return nil
	}
	issued := make([]podfiles.Object, len(specs))
	for i, sp := range specs {
		c := creds[i]
		if c.Name != sp.Name || c.Kind != string(sp.Kind) {
			return nil, nil, fmt.Errorf("keyd answered %s/%s for object %s/%s", c.Name, c.Kind, sp.Name, sp.Kind)
		}
		if c.Missing != "" {
			if !sp.Optional {
				volume.Zero(files)
				return nil, nil, fmt.Errorf("keyd left out object %s, which is not optional", sp.Name)
			}
			issued[i] = podfiles.Object{Name: sp.Name, Kind: string(sp.Kind), Missing: c.Missing}
			continue
		}
		mode := os.FileMode(sp.FileMode())
		owner = volumeOwner(sp.Owner)
		io := podfiles.Object{Name: sp.Name, Kind: string(sp.Kind), Suite: c.Suite, Generation: c.Generation,
			IssuedAt: c.IssuedAt.AsTime(), Expiry: c.Expiry.AsTime(), RenewAt: c.RenewAt.AsTime()}
		var err error
		switch p := c.Payload.(type) {
		case *keydv1.Credential_ApiKey:
			data, jerr := json.Marshal(APIKeyFile{Version: "v1", AccessKeyID: p.ApiKey.AccessKeyId,
				SecretKey: base64.RawURLEncoding.EncodeToString(p.ApiKey.SecretKey), Suite: c.Suite, Expiry: io.Expiry})
			if jerr != nil {
				return nil, nil, jerr
			}
			err = add(sp.File, data, mode)
			io.Files = sp.Files()
		case *keydv1.Credential_Certificate:
			key, ok := keys[sp.Name]
			if !ok {
				return nil, nil, fmt.Errorf("no private key for certificate %s", sp.Name)
			}
			if cerr := keydclient.CheckCertificate(p.Certificate.CertPem, p.Certificate.CaBundlePem, key); cerr != nil {
				volume.Zero(files)
				return nil, nil, fmt.Errorf("object %s: %w", sp.Name, cerr)
			}
			io.Files = sp.Files()
			err = addCertificate(sp, key, p.Certificate, mode, add)
		case *keydv1.Credential_Tlcp:
			key, ok := keys[sp.Name]
			if !ok {
				return nil, nil, fmt.Errorf("no signing key for tlcp %s", sp.Name)
			}
			pair, terr := keydclient.OpenTLCP(p.Tlcp.CsrResponse, p.Tlcp.CaBundlePem, key)
			if terr != nil {
				volume.Zero(files)
				return nil, nil, fmt.Errorf("object %s: %w", sp.Name, terr)
			}
			io.Files = sp.Files()
			err = addTLCP(sp, key, pair, p.Tlcp.CaBundlePem, mode, add)
			pair.Zero()
		case *keydv1.Credential_DerivedKey:
			err = add(sp.File, p.DerivedKey.Key, mode)
			io.Files = sp.Files()
		case *keydv1.Credential_Token:
			err = add(sp.File, []byte(p.Token.Jwt), mode)
			io.Files = sp.Files()
		case *keydv1.Credential_Secret:
			err = add(sp.File, p.Secret.Value, mode)
			io.Files = sp.Files()
		case *keydv1.Credential_Database:
			d := p.Database
			login := podfiles.DatabaseLogin{Engine: d.Engine, User: d.User, Password: d.Password, Host: d.Host,
				Port: int(d.Port), Database: d.Database, Params: d.Params}
			data, derr := login.Marshal()
			if derr != nil {
				volume.Zero(files)
				return nil, nil, fmt.Errorf("object %s: %w", sp.Name, derr)
			}
			err = add(sp.File, data, mode)
			io.Files = sp.Files()
		default:
			return nil, nil, fmt.Errorf("keyd returned no payload for %s", sp.Name)
		}
		if err != nil {
			volume.Zero(files)
			return nil, nil, err
		}
		issued[i] = io
	}
	return files, issued, nil
}

// addCertificate adds a certificate's files in each of its formats.
func addCertificate(sp object.Spec, key crypto.Signer, c *keydv1.Certificate, mode os.FileMode, add func(string, []byte, os.FileMode) error) error {
	der, err := smx509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	defer clear(der)
	if len(sp.Format) == 0 || sp.Format.Has(object.FormatPEM) {
		if err := add(sp.File+podfiles.CertKeySuffix, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), mode); err != nil {
			return err
		}
		if err := add(sp.File+podfiles.CertSuffix, c.CertPem, mode); err != nil {
			return err
		}
		if err := add(sp.File+podfiles.CASuffix, c.CaBundlePem, mode); err != nil {
			return err
		}
	}
	stores, err := keystoreFiles(sp, key, der, c.CertPem, c.CaBundlePem, time.Now())
	if err != nil {
		return err
	}
	for name, data := range stores {
		if err := add(name, data, mode); err != nil {
			return err
		}
	}
	return nil
}

// addTLCP adds a TLCP pair's five files.
func addTLCP(sp object.Spec, signKey crypto.Signer, pair keydclient.TLCPPair, caBundle []byte, mode os.FileMode, add func(string, []byte, os.FileMode) error) error {
	der, err := smx509.MarshalPKCS8PrivateKey(signKey)
	if err != nil {
		return err
	}
	defer clear(der)
	for _, f := range []struct {
		suffix string
		data   []byte
	}{
		{podfiles.TLCPSignKeySuffix, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})},
		{podfiles.TLCPSignCertSuffix, pair.SignCertPEM},
		{podfiles.TLCPEncKeySuffix, bytes.Clone(pair.EncKeyPEM)}, // the writer zeroes what it is given
		{podfiles.TLCPEncCertSuffix, pair.EncCertPEM},
		{podfiles.CASuffix, caBundle},
	} {
		if err := add(sp.File+f.suffix, f.data, mode); err != nil {
			return err
		}
	}
	return nil
}

func metadataFile(p pod.Identity, issued []podfiles.Object, now time.Time) (volume.File, error) {
	m := Metadata{Version: "v1", Pod: p, Written: now.UTC(), Objects: issued}
	for _, o := range issued {
		if o.Missing != "" {
			continue
		}
		if m.RenewAt.IsZero() || o.RenewAt.Before(m.RenewAt) {
			m.RenewAt = o.RenewAt
		}
	}
	data, err := json.MarshalIndent(m, "", "  ")
	return volume.File{Data: data, Mode: 0o444}, err
}

// volumeOwner is an object's owner as the volume writer takes it.
func volumeOwner(o *object.Owner) *volume.Owner {
	if o == nil {
		return nil
	}
	v := &volume.Owner{UID: -1, GID: -1}
	if o.UID != nil {
		v.UID = int(*o.UID)
	}
	if o.GID != nil {
		v.GID = int(*o.GID)
	}
	return v
}
