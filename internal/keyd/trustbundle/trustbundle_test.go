package trustbundle

import (
	"context"
	"errors"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

func TestPublishCreatesUpdatesAndLeavesEqualDataAlone(t *testing.T) {
	ctx := context.Background()
	client := fake.NewClientset()
	data := map[string]string{KeyIntl: "A", KeyGM: "B"}
	p := &Publisher{Client: client.CoreV1(), Namespace: "podkey", Name: "podkey-ca", Bundle: func() map[string]string { return data }}
	for i, want := range []bool{true, false} {
		changed, err := p.Publish(ctx)
		if err != nil || changed != want {
			t.Fatalf("publish %d: changed=%v err=%v", i, changed, err)
		}
	}
	data = map[string]string{KeyIntl: "A2", KeyGM: "B"} // a rotated CA
	if changed, err := p.Publish(ctx); err != nil || !changed {
		t.Fatalf("after rotation: changed=%v err=%v", changed, err)
	}
	cm, err := client.CoreV1().ConfigMaps("podkey").Get(ctx, "podkey-ca", metav1.GetOptions{})
	if err != nil || cm.Data[KeyIntl] != "A2" || cm.Labels["app.kubernetes.io/managed-by"] != "podkey-keyd" {
		t.Fatalf("%+v %v", cm, err)
	}
	writes := 0
	for _, a := range client.Actions() {
		if a.GetVerb() == "create" || a.GetVerb() == "update" {
			writes++
		}
	}
	if writes != 2 {
		t.Fatalf("%d writes, want 2 (create, update)", writes)
	}
}

func TestPublishReportsAPIErrors(t *testing.T) {
	client := fake.NewClientset()
	client.PrependReactor("get", "configmaps", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, errors.New("forbidden by test")
	})
	p := &Publisher{Client: client.CoreV1(), Namespace: "podkey", Name: "podkey-ca", Bundle: func() map[string]string { return nil }}
	if _, err := p.Publish(context.Background()); err == nil {
		t.Fatal("an API error was swallowed")
	}
}
