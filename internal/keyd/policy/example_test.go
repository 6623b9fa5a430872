package policy_test

import (
	"os"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/podkey/podkey/internal/keyd/hsm"
	"github.com/podkey/podkey/internal/keyd/policy"
	"github.com/podkey/podkey/pkg/object"
)

// TestShippedExamplesParse keeps manifests/examples true to the code.
func TestShippedExamplesParse(t *testing.T) {
	dir := "../../../manifests/examples/"
	data, err := os.ReadFile(dir + "policy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := policy.Parse(data); err != nil {
		t.Fatalf("policy.yaml: %v", err)
	}
	if data, err = os.ReadFile(dir + "vendor-mechanisms.yaml"); err != nil {
		t.Fatal(err)
	}
	if _, err := hsm.ParseMechanisms(data); err != nil {
		t.Fatalf("vendor-mechanisms.yaml: %v", err)
	}
	if data, err = os.ReadFile(dir + "secretproviderclass.yaml"); err != nil {
		t.Fatal(err)
	}
	var spc struct {
		Spec struct {
			Provider   string
			Parameters map[string]string
		}
	}
	if err := yaml.Unmarshal(data, &spc); err != nil || spc.Spec.Provider != "podkey" {
		t.Fatalf("secretproviderclass.yaml: %v", err)
	}
	if _, err := object.ParseList([]byte(spc.Spec.Parameters["objects"])); err != nil {
		t.Fatalf("secretproviderclass.yaml objects: %v", err)
	}
}
