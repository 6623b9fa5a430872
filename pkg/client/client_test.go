package client

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"testing"

	"github.com/podkey/podkey/internal/node/volume"
	"github.com/podkey/podkey/pkg/podfiles"
)

// write publishes a generation the way the node plugin does.
func write(t *testing.T, dir string, gen int64, secret byte) {
	t.Helper()
	key := make([]byte, 32)
	for i := range key {
		key[i] = secret
	}
	ak, _ := json.Marshal(podfiles.APIKeyFile{Version: "v1", AccessKeyID: "PK1-test", SecretKey: base64.RawURLEncoding.EncodeToString(key), Suite: "intl"})
	meta, _ := json.Marshal(podfiles.Metadata{Version: "v1", Objects: []podfiles.Object{
		{Name: "api", Kind: "apiKey", Generation: gen, Files: []string{"api.json"}},
		{Name: "dk", Kind: "derivedKey", Generation: gen, Files: []string{"dk"}},
	}})
	if err := volume.Write(dir, map[string]volume.File{
		"api.json": {Data: ak, Mode: 0o440}, "dk": {Data: []byte{secret, secret}, Mode: 0o440},
		podfiles.MetadataFile: {Data: meta, Mode: 0o444},
	}, -1); err != nil {
		t.Fatal(err)
	}
}

func TestVolumeFollowsRotation(t *testing.T) {
	dir := t.TempDir()
	write(t, dir, 1, 0xaa)
	v, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	k, err := v.APIKey("api")
	if err != nil || k.Secret[0] != 0xaa || k.Suite != "intl" {
		t.Fatalf("%+v %v", k, err)
	}
	write(t, dir, 2, 0xbb)
	k, _ = v.APIKey("api")
	dk, _ := v.DerivedKey("dk")
	if k.Secret[0] != 0xbb || dk[0] != 0xbb {
		t.Fatal("rotation not followed")
	}
	if m, _ := v.Metadata(); m.Objects[0].Generation != 2 {
		t.Fatal("metadata not followed")
	}
	if _, err := v.APIKey("absent"); !errors.Is(err, ErrNoObject) {
		t.Fatal(err)
	}
	if _, err := v.Token("dk"); err == nil {
		t.Fatal("a derivedKey read as a token")
	}
	v.Close()
	if v.data != nil {
		t.Fatal("data kept after Close")
	}
	if _, err := Open(t.TempDir()); err == nil {
		t.Fatal("opened a directory that is not a podkey volume")
	}
}
