package spc

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	sscsi "sigs.k8s.io/secrets-store-csi-driver/apis/v1"
)

func class(provider, objects string) *sscsi.SecretProviderClass {
	c := &sscsi.SecretProviderClass{ObjectMeta: metav1.ObjectMeta{Namespace: "payments", Name: "payments"}}
	c.Spec.Provider = sscsi.Provider(provider)
	c.Spec.Parameters = map[string]string{"objects": objects}
	return c
}

func TestObjects(t *testing.T) {
	specs, err := Objects(class("podkey", "- {name: a, kind: apiKey}"))
	if err != nil || len(specs) != 1 {
		t.Fatal(specs, err)
	}
	for _, c := range []*sscsi.SecretProviderClass{
		class("vault", "- {name: a, kind: apiKey}"),
		class("podkey", "- {name: a, kind: nope}"),
		class("podkey", "- {name: a, kind: apiKey, file: ../../etc/shadow}"),
		{Spec: sscsi.SecretProviderClassSpec{Provider: "podkey"}},
	} {
		if _, err := Objects(c); !errors.Is(err, ErrInvalid) {
			t.Errorf("accepted %+v: %v", c.Spec, err)
		}
	}
}

func TestDir(t *testing.T) {
	root := t.TempDir()
	_ = os.MkdirAll(filepath.Join(root, "payments"), 0o755)
	_ = os.WriteFile(filepath.Join(root, "payments", "payments.yaml"), []byte(`
apiVersion: secrets-store.csi.x-k8s.io/v1
kind: SecretProviderClass
metadata: {name: payments, namespace: payments}
spec:
  provider: podkey
  parameters:
    objects: |
      - {name: a, kind: apiKey}
`), 0o644)
	_ = os.WriteFile(filepath.Join(root, "payments", "liar.yaml"), []byte("metadata: {name: other}\n"), 0o644)
	d := Dir{Root: root}
	c, err := d.Get(context.Background(), "payments", "payments")
	if err != nil || c.Spec.Provider != "podkey" {
		t.Fatal(c, err)
	}
	if _, err := d.Get(context.Background(), "payments", "absent"); !errors.Is(err, ErrNotFound) {
		t.Fatal(err)
	}
	if _, err := d.Get(context.Background(), "payments", "liar"); !errors.Is(err, ErrInvalid) {
		t.Fatal(err)
	}
	if _, err := d.Get(context.Background(), "..", "x"); !errors.Is(err, ErrNotFound) {
		t.Fatal(err)
	}
}
